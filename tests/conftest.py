"""Broker fixtures: real Tansu (Kafka protocol) and mosquitto on free loopback ports."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings

from brokers import Mosquitto, Tansu

# Deadlines measure the machine, not the code: on a loaded 2-core box they only add flakes.
settings.register_profile("rolloutd", deadline=None)
settings.load_profile("rolloutd")


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
