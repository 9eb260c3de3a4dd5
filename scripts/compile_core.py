"""Compile the engine's hot modules with mypyc, in place, or remove the compiled copies.

The compiled modules are the same source, type-checked by mypy --strict, built into
extension modules next to it (Python imports an extension before the .py of the same
name). The engine then runs about 1.5-2x faster and decides exactly the same; without a
C compiler, or with ROLLOUTD_PURE=1, everything runs interpreted.

A fingerprint of the sources is written beside the extensions, so a stale build (sources
edited since) is noticed: `setup.sh` rebuilds it, and the tests refuse to run against it.

Run: .venv/bin/python scripts/compile_core.py [--clean | --check]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "daemon"
CORE = SRC / "rolloutd" / "core"
# The per-event path; modules with msgspec Structs stay interpreted (their fields are read
# from annotations, which compiled classes do not keep).
MODULES = (
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
STAMP = CORE / ".compiled"
SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def fingerprint() -> str:
    digest = hashlib.sha256(sys.version.encode())
    for name in MODULES:
        digest.update((CORE / f"{name}.py").read_bytes())
    return digest.hexdigest()


def built() -> list[Path]:
    """Every extension a build leaves: one per module, and mypyc's shared library."""
    return [*CORE.glob(f"*{SUFFIX}"), *SRC.glob(f"*__mypyc{SUFFIX}")]


def clean() -> None:
    for path in built():
        path.unlink()
    STAMP.unlink(missing_ok=True)


def state() -> str:
    """'pure', 'current' or 'stale'."""
    if not built():
        return "pure"
    if STAMP.exists() and STAMP.read_text().strip() == fingerprint():
        return "current"
    return "stale"


def build() -> bool:
    if state() == "current":
        return True
    clean()
    mypyc = Path(sys.executable).with_name("mypyc")
    if not mypyc.exists() or shutil.which(os.environ.get("CC", "cc")) is None:
        print("compile_core: no mypyc or C compiler: the engine runs interpreted", file=sys.stderr)
        return False
    sources = [f"rolloutd/core/{name}.py" for name in MODULES]
    result = subprocess.run(
        [str(mypyc), *sources], cwd=SRC, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        clean()
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        print("compile_core: mypyc failed: the engine runs interpreted", file=sys.stderr)
        return False
    STAMP.write_text(fingerprint() + "\n")
    return True


def main(argv: list[str]) -> int:
    if "--check" in argv:
        print(state())
        return 0 if state() != "stale" else 1
    if "--clean" in argv or os.environ.get("ROLLOUTD_PURE") == "1":
        clean()
        return 0
    build()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
