"""The "Precisely" paragraph of the design, pinned through `rolloutd replay`: a small config,
a few events, and every decision line expected.

Each case is one rule a reader could guess two ways:
* every evaluation point evaluates every armed rollout, in config order (a deadline of one
  rollout is met by the next event of any rollout);
* a pending trigger goes inactive at its first false reading, and `for` starts again;
* insufficient data neither breaks nor completes a streak (`for` and resolve clocks run on);
* `start`/`retry` reset pending and firing triggers with decisions of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

T0 = 1_763_719_200.0  # 2025-11-21T10:00:00Z


def replay(tmp_path: Path, config: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    config_path = tmp_path / "rolloutd.yaml"
    config_path.write_text(config)
    events_path = tmp_path / "events.jsonl"
    events_path.write_text("".join(json.dumps({**e, "ts": T0 + e["ts"]}) + "\n" for e in events))
    result = subprocess.run(
        [sys.executable, "-m", "rolloutd", "replay", "--config", str(config_path), events_path],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    for d in decisions:
        d["ts"] = round(d["ts"] - T0, 3)
    return decisions


def requests(ts: float, count: int, errors: int = 0, rollout: str = "co") -> dict[str, Any]:
    return {"ts": ts, "type": "requests", "rollout": rollout, "count": count, "errors": errors}


def percent(ts: float, pct: int, step: int, reason: str, rollout: str = "co") -> dict[str, Any]:
    flag = {"co": "new_co", "side": "side_flag"}[rollout]
    return {
        "ts": ts,
        "kind": "percent",
        "rollout": rollout,
        "flag": flag,
        "percent": pct,
        "step": step,
        "reason": reason,
    }


def phase(ts: float, name: str, reason: str, rollout: str = "co") -> dict[str, Any]:
    return {"ts": ts, "kind": "phase", "rollout": rollout, "phase": name, "reason": reason}


def trigger(
    ts: float, name: str, state: str, value: float | None, bound: float | None, samples: int
) -> dict[str, Any]:
    return {
        "ts": ts,
        "kind": "trigger",
        "rollout": "co",
        "trigger": name,
        "state": state,
        "value": value,
        "threshold": bound,
        "samples": samples,
    }


def alert(ts: float, name: str, status: str, action: str, severity: str) -> dict[str, Any]:
    return {
        "ts": ts,
        "kind": "alert",
        "rollout": "co",
        "trigger": name,
        "severity": severity,
        "status": status,
        "action": action,
    }


def started(ts: float, rollout: str = "co") -> list[dict[str, Any]]:
    return [
        percent(ts, 5, 1, "start", rollout),
        phase(ts, "progressing", "start", rollout),
    ]


TWO_ROLLOUTS = """
triggers:
  errors: {metric: error_rate, op: ">", threshold: 0.5, window: 10s, for: 2s, min_samples: 1}
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 5, hold: 10s}, {percent: 100}]
    bake: 1h
    triggers: [errors]
  - name: side
    flag: side_flag
    steps: [{percent: 5, hold: 10s}, {percent: 100}]
    bake: 1h
"""


def test_a_hold_ends_at_the_next_event_of_any_rollout(tmp_path: Path) -> None:
    # Both start at 0.5: their holds end at 10.5, between two boundaries. The only event
    # after it is side's, at 10.7: that evaluation point advances both, co first.
    config = TWO_ROLLOUTS.replace("    triggers: [errors]\n", "")
    events = [requests(0.5, 10, rollout="side"), requests(10.7, 10, rollout="side")]
    out = replay(tmp_path, config, events)
    assert out == [
        *started(0.5),
        *started(0.5, "side"),
        percent(10.7, 100, 2, "hold elapsed"),
        phase(10.7, "promoted", "hold elapsed"),
        percent(10.7, 100, 2, "hold elapsed", "side"),
        phase(10.7, "promoted", "hold elapsed", "side"),
    ]


def test_a_for_clock_ends_at_the_next_event_of_any_rollout(tmp_path: Path) -> None:
    # co's errors are pending from 0.5; `for: 2s` ends at 2.5. side's event at 2.7 is the
    # first evaluation point after it: co fires and rolls back there, not at boundary 3.
    out = replay(
        tmp_path,
        TWO_ROLLOUTS,
        [requests(0.5, 10, 9), requests(2.7, 10, rollout="side")],
    )
    assert out == [
        *started(0.5),
        trigger(0.5, "errors", "pending", 0.9, 0.5, 10),
        *started(0.5, "side"),  # rollout by rollout, in config order
        trigger(2.7, "errors", "firing", 0.9, 0.5, 10),
        percent(2.7, 0, 1, "rollback: errors"),
        phase(2.7, "rolled_back", "errors"),
        alert(2.7, "errors", "firing", "rollback", "critical"),
    ]


FLAPPING = """
triggers:
  traffic-drop: {metric: request_rate, op: "<", threshold: 20, window: 1s, for: 20s}
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 5, hold: 1h}, {percent: 100}]
    triggers: [traffic-drop]
"""


def test_a_pending_trigger_goes_inactive_at_its_first_false_reading(tmp_path: Path) -> None:
    # The rate flaps: below 20 from every boundary, above it after each burst. It never stays
    # below for 20 s, so nothing fires; each breach starts `for` again.
    bursts = [requests(ts, 40) for ts in (1.4, 2.1, 3.9)]
    out = replay(
        tmp_path, FLAPPING, [requests(0.5, 5), requests(0.6, 30), *bursts, requests(21.2, 1)]
    )

    def flap(
        pending_at: float, value: float, samples: int, false_at: float, false_value: float
    ) -> list[dict[str, Any]]:
        return [
            trigger(pending_at, "traffic-drop", "pending", value, 20.0, samples),
            trigger(false_at, "traffic-drop", "inactive", false_value, 20.0, int(false_value)),
        ]

    assert out == [
        *started(0.5),
        *flap(0.5, 5.0, 5, 0.6, 35.0),
        *flap(1.0, 0.0, 0, 1.4, 40.0),
        *flap(2.0, 0.0, 0, 2.1, 40.0),
        *flap(3.0, 0.0, 0, 3.9, 40.0),
        trigger(4.0, "traffic-drop", "pending", 0.0, 20.0, 0),
    ]


SHORT_WINDOW = """
triggers:
  errors:
    {metric: error_rate, op: ">", threshold: 0.1, window: 1s, for: FOR, min_samples: 10,
     action: alert, severity: warning}
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 5, hold: 1h}, {percent: 100}]
    triggers: [errors]
"""


def test_insufficient_data_does_not_break_the_resolve_streak(tmp_path: Path) -> None:
    # A 1 s window is short of data at every boundary; the OK readings at 1.2 and 2.5 are
    # one streak, so the firing trigger resolves at 2.5.
    out = replay(
        tmp_path,
        SHORT_WINDOW.replace("FOR", "0s"),
        [requests(0.5, 20, 10), requests(1.2, 20), requests(2.5, 20)],
    )
    assert out == [
        *started(0.5),
        trigger(0.5, "errors", "firing", 0.5, 0.1, 20),
        alert(0.5, "errors", "firing", "alert", "warning"),
        trigger(2.5, "errors", "inactive", 0.0, 0.1, 20),
        alert(2.5, "errors", "resolved", "alert", "warning"),
    ]


def test_insufficient_data_does_not_break_the_for_streak(tmp_path: Path) -> None:
    # Pending at 0.5 with `for: 2s`; short of data from boundary 1 on; the breach read at
    # 3.3 is the same streak, so it fires there.
    out = replay(
        tmp_path,
        SHORT_WINDOW.replace("FOR", "2s"),
        [requests(0.5, 20, 10), requests(3.3, 20, 5)],
    )
    assert out == [
        *started(0.5),
        trigger(0.5, "errors", "pending", 0.5, 0.1, 20),
        trigger(3.3, "errors", "firing", 0.25, 0.1, 20),
        alert(3.3, "errors", "firing", "alert", "warning"),
    ]


def test_insufficient_data_does_not_complete_a_streak(tmp_path: Path) -> None:
    # Pending at 0.5; `for` ends at 2.5 while the window is short of data; the next reading
    # (at 3.3) is OK: the trigger goes inactive and never fires.
    out = replay(
        tmp_path,
        SHORT_WINDOW.replace("FOR", "2s"),
        [requests(0.5, 20, 10), requests(3.3, 20, 1)],
    )
    assert out == [
        *started(0.5),
        trigger(0.5, "errors", "pending", 0.5, 0.1, 20),
        trigger(3.3, "errors", "inactive", 0.05, 0.1, 20),
    ]


def test_retry_resets_firing_and_pending_triggers_with_decisions(tmp_path: Path) -> None:
    config = """
triggers:
  errors: {metric: error_rate, op: ">", threshold: 0.5, window: 10s, min_samples: 1}
  slow-errors:
    {metric: error_rate, op: ">", threshold: 0.2, window: 10s, for: 1h, min_samples: 1,
     action: alert}
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 5, hold: 1h}, {percent: 100}]
    triggers: [slow-errors, errors]
"""
    retry = {"ts": 0.8, "type": "command", "rollout": "co", "command": "retry", "actor": "al"}
    out = replay(tmp_path, config, [requests(0.5, 10, 9), retry])
    by_al: dict[str, Any] = {"actor": "al"}
    assert out == [
        *started(0.5),
        trigger(0.5, "slow-errors", "pending", 0.9, 0.2, 10),
        trigger(0.5, "errors", "firing", 0.9, 0.5, 10),
        percent(0.5, 0, 1, "rollback: errors"),
        phase(0.5, "rolled_back", "errors"),
        alert(0.5, "errors", "firing", "rollback", "critical"),
        # The reset decides inactive for both, resolves the firing one, then starts again;
        # the breach still in the window rolls back again at once.
        trigger(0.8, "slow-errors", "inactive", 0.9, 0.2, 10),
        trigger(0.8, "errors", "inactive", 0.9, 0.5, 10),
        alert(0.8, "errors", "resolved", "rollback", "critical"),
        {**percent(0.8, 5, 1, "command: retry"), **by_al},
        {**phase(0.8, "progressing", "command: retry"), **by_al},
        trigger(0.8, "slow-errors", "pending", 0.9, 0.2, 10),
        trigger(0.8, "errors", "firing", 0.9, 0.5, 10),
        percent(0.8, 0, 1, "rollback: errors"),
        phase(0.8, "rolled_back", "errors"),
        alert(0.8, "errors", "firing", "rollback", "critical"),
    ]
