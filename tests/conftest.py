"""Broker fixtures: real Tansu (Kafka protocol) and mosquitto on free loopback ports."""

from __future__ import annotations

import ast
import os
import runpy
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from brokers import Mosquitto, Tansu
from integration import is_integration
from postgres import Postgres

# Deadlines measure the machine, not the code: on a loaded 2-core box they only add flakes.
settings.register_profile("rolloutd", deadline=None)
settings.load_profile("rolloutd")

_COMPILE = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "compile_core.py"))


# A test module "drives the engine" when it imports a compiled module, or one of these,
# which run the engine: `--engine-only` keeps just those (the interpreted run in test.sh).
ENGINE_DRIVERS = {"helpers", "rolloutd.engine_build", "rolloutd.app.pipeline",
                  "rolloutd.tools.replay", "rolloutd.tools.simulate"}  # fmt: skip


# Test files that drive the engine only through the `rolloutd` command (no import shows it).
ENGINE_COMMAND_TESTS = {"test_contract.py"}


def drives_engine(path: Path) -> bool:
    if path.name in ENGINE_COMMAND_TESTS:
        return True
    wanted = ENGINE_DRIVERS | {f"rolloutd.core.{name}" for name in _COMPILE["MODULES"]}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        else:
            continue
        if names & wanted:
            return True
    return False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine-only",
        action="store_true",
        help="run only the test modules that import the compiled engine (or drive it)",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    name = collection_path.name
    if config.getoption("--engine-only") and name.startswith("test_") and name.endswith(".py"):
        return not drives_engine(collection_path)
    return None


def pytest_configure(config: pytest.Config) -> None:
    # A compiled module older than its source would shadow the code under test.
    if _COMPILE["state"]() == "stale":
        pytest.exit("the compiled engine is stale: run scripts/setup.sh (or compile_core.py)", 2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Brokers, system tools and child processes make a test `integration`; the rest is the
    # unit run (`make test-unit`: seconds, no root, no network).
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("integration"):
            continue
        test = item.cls.__name__ if item.cls is not None else item.originalname
        if is_integration(item.path, test, item.fixturenames):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test classified as a unit test that starts a process fails, naming the fix."""
    if request.node.get_closest_marker("integration"):
        return

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "this test starts a process but is not marked integration: add "
            "@pytest.mark.integration (or a name tests/integration.py can follow)"
        )

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)
    monkeypatch.setattr(os, "fork", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)


def pytest_report_header() -> str:
    from rolloutd.engine_build import engine_kind

    return f"rolloutd engine: {engine_kind()}"


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


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One PostgreSQL cluster shared by the session; each test takes its own database."""
    with Postgres() as server:
        yield server


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    """The URL of a new, empty database of the session's PostgreSQL."""
    return postgres.database()


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A mosquitto broker of the test's own, stopped after it."""
    with Mosquitto() as broker:
        yield broker
