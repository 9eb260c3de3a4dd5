"""Which build of the engine runs: the mypyc-compiled extensions or the Python source.

`scripts/compile_core.py` compiles COMPILED_MODULES into extensions beside their source,
and Python imports an extension before the .py of the same name. ROLLOUTD_PURE=1 turns
that round at import time (`prefer_source`, called by the package's __init__): the source
is loaded even where a build sits beside it, so one checkout runs and tests both engines
without rebuilding. The daemon logs `engine_kind()` on its startup line.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from importlib.util import spec_from_file_location
from pathlib import Path
from types import ModuleType

# The same list as scripts/compile_core.py's MODULES (a test holds them equal).
COMPILED_MODULES = (
    "machines",
    "histogram",
    "windows",
    "judge",
    "judging",
    "triggers",
    "rollout",
    "routes",
    "skips",
    "engine",
    "spec",
    "intake",
)
_PACKAGE = "rolloutd.core"


class _SourceFirst:
    """A meta path finder that answers the compiled modules' names with their .py file."""

    @staticmethod
    def find_spec(
        name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        package, _, leaf = name.rpartition(".")
        if package != _PACKAGE or leaf not in COMPILED_MODULES or not path:
            return None
        for folder in path:
            source = Path(folder) / f"{leaf}.py"
            if source.is_file():
                return spec_from_file_location(name, source)
        return None


def prefer_source() -> None:
    """From now on the engine's modules load from source (before any of them is imported)."""
    if not any(finder is _SourceFirst for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst)


def engine_kind() -> str:
    """'compiled' (every hot module is an extension), 'interpreted' (none is), or 'mixed'."""
    modules = [importlib.import_module(f"{_PACKAGE}.{name}") for name in COMPILED_MODULES]
    compiled = [not (module.__file__ or "").endswith(".py") for module in modules]
    if all(compiled):
        return "compiled"
    return "interpreted" if not any(compiled) else "mixed"
