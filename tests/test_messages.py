"""The messages built from decisions alone: flag state per move, breaker state, the audit,
alerts, and the flag table's drift actions."""

from __future__ import annotations

import json

import msgspec
import pytest

from helpers import T0, engine, error_trigger, rollout
from rolloutd.app.messages import Messages, Positions, Revisions, Sinks
from rolloutd.config import SlackAlert
from rolloutd.core import flagwatch
from rolloutd.core.decisions import (
    AlertDecision,
    BreakerDecision,
    ConfigDecision,
    Decision,
    FlagDecision,
    PercentDecision,
    PhaseDecision,
    RefusedDecision,
    TriggerDecision,
    encode,
    rollback_reason,
    rolled_back_by,
    to_dict,
)
from rolloutd.core.flagwatch import CONFIRMED, DRIFT, NOT_APPLIED, Observation
from rolloutd.core.outbound import Sink
from rolloutd.core.spec import EngineSpec

SINKS = Sinks(
    flags_topic="rollout.flags",
    decisions_topic="rollout.decisions",
    mqtt_flags_prefix="rollouts/flags",
    mqtt_breakers_prefix="rollouts/breakers",
)
SLACK = SlackAlert.model_validate(
    {"name": "team", "type": "slack", "webhook_url": "https://hooks.example.invalid/x"}
)


BREAKER_OPEN = BreakerDecision(
    ts=T0,
    kind="breaker",
    breaker="users",
    state="open",
    failure_rate=0.6,
    slow_call_rate=None,
    calls=20,
    reason="failure rate 60% >= 50%",
)


def _messages(floor: int = 0, alerts: tuple[SlackAlert, ...] = ()) -> Messages:
    spec = EngineSpec(rollouts=(rollout(error_trigger()),))
    eng = engine(*spec.rollouts)
    return Messages(SINKS, alerts, spec, Positions(eng.rollouts), Revisions({}, floor))


def _percent(ts: float, percent: int, step: int, reason: str) -> PercentDecision:
    return PercentDecision(
        ts=ts,
        kind="percent",
        rollout="co",
        flag="new_co",
        percent=percent,
        step=step,
        reason=reason,
    )


def _phase(ts: float, phase: str, reason: str) -> PhaseDecision:
    return PhaseDecision(ts=ts, kind="phase", rollout="co", phase=phase, reason=reason)


def _flag_states(messages: Messages) -> list[dict[str, object]]:
    rows = messages.take().rows
    return [json.loads(p) for s, _, p, _ in rows if s == Sink.kafka("rollout.flags")]


def test_each_call_publishes_its_own_state_however_late_it_is_handed_over() -> None:
    messages = _messages()
    # Three events' decisions, built one after the other before anything is committed.
    messages.decided([_percent(T0, 5, 1, "start"), _phase(T0, "progressing", "start")])
    messages.decided([_percent(T0 + 60, 25, 2, "hold elapsed")])
    messages.decided(
        [
            _percent(T0 + 61, 0, 2, rollback_reason("error-spike")),
            _phase(T0 + 61, "rolled_back", "error-spike"),
        ]
    )
    states = _flag_states(messages)
    assert [(s["percent"], s["phase"], s["revision"]) for s in states] == [
        (5, "progressing", 1),
        (25, "progressing", 2),
        (0, "rolled_back", 3),
    ]
    assert states[0] == {
        "flag": "new_co",
        "percent": 5,
        "rollout": "co",
        "phase": "progressing",
        "revision": 1,
        "ts": T0,
    }


def test_every_flag_message_goes_to_kafka_keyed_and_to_mqtt_retained() -> None:
    messages = _messages(floor=40)
    messages.decided([_percent(T0, 5, 1, "start"), _phase(T0, "progressing", "start")])
    out = messages.take()
    flags = [(s, k, r) for s, k, _, r in out.rows if s != Sink.kafka("rollout.decisions")]
    assert flags == [
        (Sink.kafka("rollout.flags"), b"new_co", False),
        (Sink.mqtt("rollouts/flags/new_co"), None, True),
    ]
    assert [s.revision for s in out.flag_states] == [41]  # above the store's floor
    assert out.expected == [("new_co", 5, T0)]
    audit = [p for s, _, p, _ in out.rows if s == Sink.kafka("rollout.decisions")]
    assert audit == [
        encode(_percent(T0, 5, 1, "start")),
        encode(_phase(T0, "progressing", "start")),
    ]
    assert messages.take().rows == []  # taken: the next commit starts empty


def test_a_trigger_alert_carries_its_measurement_and_the_position_after_it() -> None:
    messages = _messages(alerts=(SLACK,))
    messages.decided([_percent(T0, 5, 1, "start"), _phase(T0, "progressing", "start")])
    messages.take()
    ts = T0 + 30
    messages.decided(
        [
            TriggerDecision(
                ts=ts,
                kind="trigger",
                rollout="co",
                trigger="error-spike",
                state="firing",
                value=0.12,
                threshold=0.05,
                samples=4123,
            ),
            _percent(ts, 0, 1, rollback_reason("error-spike")),
            _phase(ts, "rolled_back", "error-spike"),
            AlertDecision(
                ts=ts,
                kind="alert",
                rollout="co",
                trigger="error-spike",
                severity="critical",
                status="firing",
                action="rollback",
            ),
        ]
    )
    (alert,) = [msgspec.json.decode(p) for s, _, p, _ in messages.take().rows if s.kind == "alert"]
    assert alert["key"] == "co/error-spike"
    assert (alert["value"], alert["threshold"]) == (0.12, 0.05)
    assert (alert["percent"], alert["phase"]) == (0, "rolled_back")
    assert alert["details"] == {
        "samples": "4123",
        "metric": "error_rate",
        "cohort": "canary",
        "window": "1m",
    }


def test_a_breaker_change_is_audited_keyed_and_its_state_published() -> None:
    messages = _messages()
    decision = BREAKER_OPEN
    messages.decided([decision])
    rows = messages.take().rows
    assert [(s, k) for s, k, _, _ in rows] == [
        (Sink.kafka("rollout.decisions"), b"breaker:users"),
        (Sink.kafka("rollout.flags"), b"breaker:users"),
        (Sink.mqtt("rollouts/breakers/users"), None),
    ]
    assert json.loads(rows[1][2]) == {"breaker": "users", "state": "open", "revision": 1, "ts": T0}


# -- the flag table's drift policy ------------------------------------------------------


def _seen(status: str, observed: float | None = 40.0) -> Observation:
    return Observation("new_co", status, 25.0, observed, 1.5 if status == CONFIRMED else None)


@pytest.mark.parametrize("policy", ["alert", "revert", "adopt"])
def test_a_confirmed_flag_is_a_decision_without_an_action(policy: str) -> None:
    decision, command = flagwatch.decide(_seen(CONFIRMED, 25.0), "co", policy, T0)
    assert (decision.status, decision.action, decision.delay, command) == (
        CONFIRMED,
        None,
        1.5,
        None,
    )
    assert (decision.percent, decision.observed) == (25, 25)


def test_drift_takes_the_rollouts_policy_and_adopt_commands_the_engine() -> None:
    decision, command = flagwatch.decide(_seen(DRIFT), "co", "adopt", T0)
    assert decision.action == "adopt"
    assert command is not None
    assert (command.command, command.percent, command.actor) == ("set_percent", 40.0, "flag-table")
    decision, command = flagwatch.decide(_seen(DRIFT), "co", "revert", T0)
    assert (decision.action, command) == ("revert", None)


def test_adopt_with_nothing_observed_falls_back_to_alert() -> None:
    decision, command = flagwatch.decide(_seen(NOT_APPLIED, None), "co", "adopt", T0)
    assert (decision.action, command) == ("alert", None)


def test_revert_publishes_the_decided_state_again_and_alert_alerts() -> None:
    messages = _messages(alerts=(SLACK,))
    messages.decided([_percent(T0, 5, 1, "start"), _phase(T0, "progressing", "start")])
    messages.take()
    revert, _ = flagwatch.decide(_seen(DRIFT), "co", "revert", T0 + 5)
    messages.decided([revert])
    out = messages.take()
    assert [(s.percent, s.revision) for s in out.flag_states] == [(5, 2)]
    assert not [s for s, _, _, _ in out.rows if s.kind == "alert"]
    alert, _ = flagwatch.decide(_seen(DRIFT), "co", "alert", T0 + 6)
    messages.decided([alert])
    out = messages.take()
    assert out.flag_states == []
    (record,) = [msgspec.json.decode(p) for s, _, p, _ in out.rows if s.kind == "alert"]
    assert record["key"] == "rolloutd/drift/new_co"
    assert "table holds 40, decided 25 (drift)" in record["summary"]


# -- decisions as fields ----------------------------------------------------------------

EVERY_KIND: list[Decision] = [
    _percent(T0, 25, 2, "hold elapsed"),
    PercentDecision(
        ts=T0, kind="percent", rollout="co", flag="f", percent=2.5, step=1, reason="r", actor="me"
    ),
    _phase(T0, "paused", "command: pause"),
    TriggerDecision(
        ts=T0,
        kind="trigger",
        rollout="co",
        trigger="t",
        state="insufficient_data",
        value=None,
        threshold=0.1,
        samples=0,
    ),
    AlertDecision(
        ts=T0, kind="alert", rollout="co", trigger="t", severity="warning", status="resolved"
    ),
    RefusedDecision(ts=T0, kind="refused", rollout="co", command="resume", reason="not paused"),
    ConfigDecision(ts=T0, kind="config", rollout="co", change="added", reason="new"),
    FlagDecision(
        ts=T0, kind="flag", rollout="co", flag="f", status="drift", percent=25, observed=None
    ),
    BreakerDecision(
        ts=0.1,
        kind="breaker",
        breaker="b",
        state="closed",
        failure_rate=None,
        slow_call_rate=0.25,
        calls=3,
        reason="r",
    ),
]


@pytest.mark.parametrize("decision", EVERY_KIND, ids=lambda d: d.kind)
def test_a_decisions_fields_are_what_its_json_shows(decision: Decision) -> None:
    fields = to_dict(decision)
    assert fields == msgspec.json.decode(encode(decision))
    assert list(fields) == list(msgspec.json.decode(encode(decision)))  # the wire order


def test_the_trigger_of_a_rollback_is_read_where_its_reason_is_written() -> None:
    assert rolled_back_by(_percent(T0, 0, 2, rollback_reason("error-spike"))) == "error-spike"
    assert rolled_back_by(_percent(T0, 0, 2, "command: rollback")) is None
    assert rolled_back_by(_phase(T0, "rolled_back", "error-spike")) is None


def test_a_leaders_generation_is_stamped_on_every_flag_breaker_and_audit_message() -> None:
    plain, leading = _messages(), _messages()
    leading.generation = 7
    for messages in (plain, leading):
        messages.decided([_percent(T0, 25, 2, "advance"), BREAKER_OPEN])
    stamped = leading.take().rows
    rows = plain.take().rows
    assert len(stamped) == len(rows) == 6  # audit + flag (kafka, mqtt); audit + breaker (both)
    for (sink, key, payload, retain), (sink2, key2, bare, retain2) in zip(
        stamped, rows, strict=True
    ):
        assert (sink, key, retain) == (sink2, key2, retain2)
        assert b"generation" not in bare  # without a lease: the bytes as they always were
        assert json.loads(payload) == {**json.loads(bare), "generation": 7}
