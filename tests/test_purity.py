"""The core is pure: importing it pulls in no asyncio, network or I/O library."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

CORE = Path(__file__).parent.parent / "daemon" / "rolloutd" / "core"
FORBIDDEN = ("asyncio", "aiokafka", "aiomqtt", "aiohttp", "socket", "sqlite3", "ssl", "selectors")


def test_importing_the_core_loads_no_io_module() -> None:
    code = (
        "import sys\n"
        "import rolloutd.core.engine, rolloutd.core.events, rolloutd.core.rollout\n"
        "import rolloutd.core.triggers, rolloutd.core.windows, rolloutd.core.decisions\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_core_source_reads_no_clock_and_imports_no_edge() -> None:
    pattern = re.compile(
        r"^\s*(import|from)\s+(asyncio|aiokafka|aiomqtt|aiohttp|sqlite3|socket|rolloutd\.adapters"
        r"|rolloutd\.service|rolloutd\.config)\b|time\.time\(|datetime\.now\(|time\.monotonic\(",
        re.MULTILINE,
    )
    offenders = [p.name for p in CORE.glob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
