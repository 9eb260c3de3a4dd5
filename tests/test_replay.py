"""`rolloutd replay` and `rolloutd demo` end to end, through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from rolloutd.config import load_config
from rolloutd.core.engine import Engine
from rolloutd.core.events import Rejection, decode_one
from rolloutd.core.spec import EngineSpec
from rolloutd.tools.simulate import INCIDENT_START, incident_events, judge_events

ROOT = Path(__file__).parent.parent
SCENARIOS = ROOT / "daemon" / "rolloutd" / "tools" / "scenarios"
DEMO_CONFIG = SCENARIOS / "checkout-incident.yaml"
DEMO_EVENTS = SCENARIOS / "checkout-incident.jsonl"
JUDGE_CONFIG = SCENARIOS / "checkout-judge.yaml"
JUDGE_EVENTS = SCENARIOS / "checkout-judge.jsonl"


def rolloutd(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "rolloutd", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=60,
    )


def test_demo_walks_the_canary_then_rolls_it_back() -> None:
    result = rolloutd("demo", "--replay")
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    percents = [d["percent"] for d in decisions if d["kind"] == "percent"]
    assert percents == [5, 25, 50, 0]
    assert decisions[-1] == {
        **decisions[-1],
        "kind": "alert",
        "status": "firing",
        "trigger": "error-spike",
    }
    assert [d["phase"] for d in decisions if d["kind"] == "phase"] == ["progressing", "rolled_back"]
    assert b"779 events, 0 invalid" in result.stderr


def test_bundled_scenario_is_what_the_simulator_generates() -> None:
    spec = load_config(DEMO_CONFIG).to_spec()
    generated = [json.dumps(f, separators=(",", ":")) for f in incident_events(spec)]
    assert DEMO_EVENTS.read_text().splitlines() == generated


def test_replay_is_byte_for_byte_deterministic(tmp_path: Path) -> None:
    first = rolloutd("replay", "--config", str(DEMO_CONFIG), str(DEMO_EVENTS))
    out = tmp_path / "decisions.jsonl"
    second = rolloutd("replay", "--config", str(DEMO_CONFIG), str(DEMO_EVENTS), "--out", str(out))
    assert first.returncode == second.returncode == 0
    assert first.stdout == out.read_bytes()
    assert second.stdout == b""
    assert len(first.stdout.splitlines()) == 9


def test_invalid_lines_are_reported_with_line_numbers_and_skipped() -> None:
    good = DEMO_EVENTS.read_bytes().splitlines()[:4]
    lines = [
        good[0],
        b"{not json",
        good[1],
        b'{"ts": 1763719201, "type": "requests", "rollout": "checkout-v2",'
        b' "count": 5, "errors": 9}',
        b"",
        b'{"ts": "yesterday", "type": "request", "ok": true}',
        good[2],
        b'{"ts": 1763719201, "type": "teleport"}',
        good[3],
    ]
    result = rolloutd("replay", "--config", str(DEMO_CONFIG), "-", stdin=b"\n".join(lines) + b"\n")
    assert result.returncode == 0
    err = result.stderr.decode()
    assert "line 2: bad_json" in err
    assert "line 4: errors_exceed_count" in err
    assert "line 6: bad_timestamp" in err
    assert "line 8: unknown_type" in err
    assert "9 lines, 4 events, 4 invalid" in err
    # The good events still drive the engine: the rollout starts.
    assert json.loads(result.stdout.splitlines()[0])["reason"] == "start"


def test_refused_commands_are_decisions_and_noted_on_stderr() -> None:
    lines = [
        b'{"ts": 1763719200, "type": "command", "rollout": "checkout-v2", "command": "resume"}',
        b'{"ts": 1763719201, "type": "command", "rollout": "checkout-v2", "command": "pause",'
        b' "actor": "alice"}',
    ]
    result = rolloutd("replay", "--config", str(DEMO_CONFIG), "-", stdin=b"\n".join(lines))
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["kind"] for d in decisions] == ["percent", "phase", "refused", "phase"]
    assert decisions[2]["command"] == "resume"
    assert decisions[3] == {
        "ts": 1763719201,
        "kind": "phase",
        "rollout": "checkout-v2",
        "phase": "paused",
        "reason": "command: pause",
        "actor": "alice",
    }
    assert b"refused at 1763719200" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--config", "missing.yaml", "x.jsonl"], b"missing.yaml"),
        (["replay", "--config", str(DEMO_CONFIG), "missing.jsonl"], b"missing.jsonl"),
    ],
)
def test_missing_files_are_clear_errors(args: list[str], message: bytes) -> None:
    result = rolloutd(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert b"Traceback" not in result.stderr


def test_the_judge_rolls_back_a_2x_regression_while_the_thresholds_are_silent() -> None:
    result = rolloutd("demo", "--replay", "--scenario", "checkout-judge")
    assert result.returncode == 0, result.stderr
    decisions = [json.loads(line) for line in result.stdout.splitlines()]
    triggers = [d for d in decisions if d["kind"] == "trigger"]
    # Neither threshold trigger (tuned to the same false-positive rate) moved at all.
    assert [(d["trigger"], d["state"]) for d in triggers] == [("worse-than-control", "firing")]
    fired = triggers[0]
    assert fired["evidence"]["e_value"] >= 20.0
    assert fired["evidence"]["lower"] > 1.0  # the canary's error rate is above control's
    rollback = [d for d in decisions if d["kind"] == "percent" and d["percent"] == 0]
    assert [d["reason"] for d in rollback] == ["rollback: worse-than-control"]
    assert rollback[0]["ts"] == fired["ts"]
    # The same traffic without the judge: the thresholds roll back, but later.
    spec = load_config(JUDGE_CONFIG).to_spec()
    thresholds = spec.rollouts[0].triggers[2:]
    assert [t.name for t in thresholds] == ["errors-1m", "errors-5m"]
    later = _first_rollback(
        replace(spec, rollouts=(replace(spec.rollouts[0], triggers=thresholds),))
    )
    assert later is not None
    assert later > fired["ts"] - INCIDENT_START


def _first_rollback(spec: EngineSpec) -> float | None:
    """Seconds from the start to the first rollback of the judge scenario's traffic."""
    engine = Engine(spec)
    for fields in judge_events(spec):
        event = decode_one(json.dumps(fields))
        assert not isinstance(event, Rejection)
        for decision in engine.handle(event):
            if decision.kind == "phase" and getattr(decision, "phase", "") == "rolled_back":
                return decision.ts - INCIDENT_START
    return None


def test_bundled_judge_scenario_is_what_the_simulator_generates() -> None:
    spec = load_config(JUDGE_CONFIG).to_spec()
    generated = [json.dumps(f, separators=(",", ":")) for f in judge_events(spec)]
    assert JUDGE_EVENTS.read_text().splitlines() == generated
