"""Breakers inside the engine and the pipeline: fed by events, watched by rollouts, published."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import T0, event, kinds, rollout
from rolloutd.adapters.store import Store
from rolloutd.app.messages import Sinks
from rolloutd.app.pipeline import Pipeline
from rolloutd.core.breaker import BreakerSpec
from rolloutd.core.decisions import to_dict
from rolloutd.core.engine import Engine
from rolloutd.core.events import Event
from rolloutd.core.spec import EngineSpec, StepSpec, TriggerSpec

USERS = BreakerSpec(
    name="users", service="user-service", minimum_calls=10, window_size=20, wait_in_open=30.0
)
WATCH = TriggerSpec(
    name="users-open",
    metric="breaker:users",
    op=">=",
    threshold=1.0,
    window=1.0,
    action="pause",
    severity="warning",
)


def calls(ts: float, count: int, errors: int) -> Event:
    return event(
        ts=ts, type="requests", service="user-service", count=count, errors=errors, rollout=None
    )


def spec() -> EngineSpec:
    return EngineSpec(
        rollouts=(rollout(WATCH, steps=(StepSpec(10, 3600), StepSpec(100))),),
        breakers=(USERS,),
    )


def test_a_breaker_opens_on_failures_and_the_watching_rollout_pauses() -> None:
    eng = Engine(spec())
    out = [to_dict(d) for d in eng.handle(calls(T0, 10, 1))]
    assert [d["kind"] for d in out] == ["percent", "phase"]  # start; 10% failures: closed
    out = [to_dict(d) for d in eng.handle(calls(T0 + 1, 10, 10))]
    assert [d["kind"] for d in out] == ["breaker", "trigger", "phase", "alert"]
    assert out[0]["state"] == "open"
    assert "rollout" not in out[0]
    assert (out[1]["state"], out[1]["value"]) == ("firing", 1.0)
    assert out[2]["phase"] == "paused"
    assert eng.rollout("co").phase == "paused"
    # Time alone moves an open breaker to half-open after its wait, at a bucket boundary.
    later = [to_dict(d) for d in eng.advance(T0 + 40)]
    moves = [d for d in later if d["kind"] == "breaker"]
    assert [(d["state"], d["ts"]) for d in moves] == [("half_open", T0 + 31)]
    assert [d["state"] for d in kinds(later, "trigger")] == ["inactive"]


def test_breaker_state_survives_a_snapshot() -> None:
    eng = Engine(spec())
    eng.handle(calls(T0, 10, 10))
    restored = Engine.restore(spec(), eng.snapshot())
    assert restored.breakers["users"].state == "open"
    assert [d.kind for d in restored.advance(T0 + 40)] == [d.kind for d in eng.advance(T0 + 40)]


def test_breaker_commands() -> None:
    eng = Engine(spec())
    eng.begin(T0)
    out = [to_dict(d) for d in eng.breaker_command("users", "force_open", T0 + 1)]
    assert [(d["kind"], d.get("state")) for d in out][:2] == [
        ("breaker", "forced_open"),
        ("trigger", "firing"),
    ]


def test_pipeline_publishes_breaker_state_for_services(tmp_path: Path) -> None:
    sinks = Sinks(
        flags_topic="rollout.flags",
        decisions_topic="rollout.decisions",
        mqtt_flags_prefix="rollouts/flags",
        mqtt_breakers_prefix="rollouts/breakers",
    )
    with Store.open(tmp_path / "s.db") as store:
        pipeline = Pipeline(spec(), store, sinks)
        pipeline.start(T0)
        payload = json.dumps(
            {"ts": T0 + 1, "type": "requests", "service": "user-service", "count": 10, "errors": 10}
        ).encode()
        items = pipeline.ingest("kafka", [payload], T0 + 1)
    retained = [i for i in items if str(i.sink) == "mqtt:rollouts/breakers/users"]
    assert len(retained) == 1
    assert retained[0].retain
    assert json.loads(retained[0].payload) == {
        "breaker": "users",
        "state": "open",
        "revision": store.revision_floor + 1,
        "ts": T0 + 1,
    }
    keyed = [i for i in items if str(i.sink) == "kafka:rollout.flags" and i.key == b"breaker:users"]
    assert len(keyed) == 1
