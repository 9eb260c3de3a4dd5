"""Which tests are `integration`: those that start a broker, a system tool or any process.

The rest run in seconds with no root, no network and nothing installed beyond .venv
(`make test-unit`). A test is integration when it uses a broker fixture, or when its code
reaches, through the functions, classes and fixtures of the test modules it names, one of
the names in `STARTS_PROCESSES`. The search reads the source (no import runs); a name it
cannot follow counts as harmless, so the guard in conftest.py refuses a process started
by a test classified as a unit test: such a test fails, naming the marker to add by hand.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

TESTS = Path(__file__).parent

BROKER_FIXTURES = frozenset({"tansu", "tansu_session", "mosquitto", "postgres", "pg_url"})

# Referring to any of these (a module, a class, a function or an attribute) starts, or may
# start, a process: brokers, promtool, systemd-analyze, amtool, the daemon, pip.
STARTS_PROCESSES = frozenset(
    {
        "subprocess",
        "Popen",
        "create_subprocess_exec",
        "create_subprocess_shell",
        "multiprocessing",
        "fork",
        "posix_spawn",
        "Tansu",
        "Mosquitto",
    }
)


class _Module:
    """One test module's top-level names: what each refers to, and what it imported."""

    def __init__(self, path: Path) -> None:
        self.refers: dict[str, frozenset[str]] = {}
        self.imported: dict[str, tuple[str, str]] = {}  # local name -> (module, name)
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.refers[node.name] = _names(node)
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for name in _names(target):
                        self.refers[name] = self.refers.get(name, frozenset()) | _names(node.value)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (node.module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = (alias.name, "")


def _names(node: ast.AST) -> frozenset[str]:
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            found.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            found.add(sub.attr)
    return frozenset(found)


@cache
def _module(name: str) -> _Module | None:
    path = TESTS / f"{name}.py"
    return _Module(path) if path.is_file() else None


def _reaches(module: str, name: str, seen: set[tuple[str, str]]) -> bool:
    """Whether `name`, as seen from test module `module`, leads to a process start."""
    if name in STARTS_PROCESSES:
        return True
    mod = _module(module)
    if mod is None or (module, name) in seen:
        return False
    seen.add((module, name))
    if name in mod.imported:
        source, what = mod.imported[name]
        if source in STARTS_PROCESSES or what in STARTS_PROCESSES:
            return True
        return bool(what) and _reaches(source, what, seen)
    return any(_reaches(module, ref, seen) for ref in mod.refers.get(name, ()))


def is_integration(module_path: Path, test: str, fixtures: list[str]) -> bool:
    """Whether the test `test` (a function or class name) of a test module is integration."""
    if BROKER_FIXTURES.intersection(fixtures):
        return True
    if module_path.parent != TESTS:
        return False
    seen: set[tuple[str, str]] = set()
    return any(_reaches(module_path.stem, name, seen) for name in (test, *fixtures))
