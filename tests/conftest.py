"""Broker fixtures: real Tansu (Kafka protocol) and mosquitto on free loopback ports."""

from __future__ import annotations

import runpy
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from brokers import Mosquitto, Tansu

# Deadlines measure the machine, not the code: on a loaded 2-core box they only add flakes.
settings.register_profile("rolloutd", deadline=None)
settings.load_profile("rolloutd")

_COMPILE = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "compile_core.py"))


def pytest_configure(config: pytest.Config) -> None:
    # A compiled module older than its source would shadow the code under test.
    if _COMPILE["state"]() == "stale":
        pytest.exit("the compiled engine is stale: run scripts/setup.sh (or compile_core.py)", 2)


def pytest_report_header() -> str:
    import rolloutd.core.engine

    compiled = not rolloutd.core.engine.__file__.endswith(".py")
    return f"rolloutd engine: {'compiled (mypyc)' if compiled else 'interpreted'}"


@pytest.fixture
def tansu() -> Iterator[Tansu]:
    """A Tansu broker of the test's own, stopped (and emptied) after it."""
    with Tansu() as broker:
        yield broker


@pytest.fixture(scope="session")
def tansu_session() -> Iterator[Tansu]:
    """One Tansu broker shared by the session: use unique topic names, do not restart it."""
    with Tansu() as broker:
        yield broker


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A mosquitto broker of the test's own, stopped after it."""
    with Mosquitto() as broker:
        yield broker
