"""The README's first command: the live demo runs the whole story and stops what it started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sdk", ["in_rollout", "unleash"])
def test_live_demo_walks_the_canary_and_rolls_it_back(sdk: str) -> None:
    """With `--sdk unleash` the users are split by the Unleash SDK reading the daemon."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rolloutd",
            "demo",
            "--config",
            str(ROOT / "config" / "demo.yaml"),
            "--sdk",
            sdk,
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    percents = [line for line in lines if " percent " in line]
    assert [p.split('"percent": ')[1].split(",")[0] for p in percents] == ["5", "25", "50", "0"]
    assert any('"reason": "rollback: error-spike"' in line for line in lines)
    assert any('"state": "firing"' in line for line in lines)
    # Every process it started is gone: the broker's and the daemon's logs say they stopped.
    logs = Path(result.stderr.strip().rsplit(" ", 1)[-1])
    assert "stopping" in (logs / "rolloutd.log").read_text()
    assert (
        subprocess.run(["pgrep", "-f", str(logs)], capture_output=True, check=False).stdout == b""
    )
