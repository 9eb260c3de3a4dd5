"""Generated incidents replayed through the engine in virtual time."""

from __future__ import annotations

from helpers import (
    T0,
    batch,
    drive,
    engine,
    error_trigger,
    event,
    kinds,
    rollout,
    steady,
)
from rolloutd.core.decisions import Decision, TriggerDecision
from rolloutd.core.events import Event
from rolloutd.core.spec import Baseline, StepSpec, TriggerSpec


def test_healthy_canary_walks_every_step_on_schedule() -> None:
    eng = engine(rollout(error_trigger()))
    decisions = drive(eng, steady(0.001, 0.001, count=200), 400)
    percents = [
        (d["ts"] - T0, d["percent"], d["step"], d["reason"]) for d in kinds(decisions, "percent")
    ]
    # Starts at the first event (T0 + 0.25); each hold of 60 s elapses at the first
    # evaluation point at or after its deadline: the canary event of that second.
    assert percents == [
        (0.25, 5, 1, "start"),
        (60.25, 25, 2, "hold elapsed"),
        (120.25, 100, 3, "hold elapsed"),
    ]
    phases = [(d["ts"] - T0, d["phase"], d["reason"]) for d in kinds(decisions, "phase")]
    assert phases == [
        (0.25, "progressing", "start"),
        (120.25, "promoted", "hold elapsed"),
        (180.25, "completed", "bake elapsed"),
    ]
    assert kinds(decisions, "trigger") == []
    assert eng.rollout("co").phase == "completed"


def test_canary_error_spike_rolls_back_within_for_plus_one_bucket() -> None:
    trig = error_trigger(for_=10.0)
    eng = engine(rollout(trig))
    spike_at = 30

    def traffic(ts: float) -> list[Event]:
        bad = ts - T0 >= spike_at
        return [
            batch(ts + 0.25, "canary", 200, 200 if bad else 0),  # the canary fails outright
            batch(ts + 0.5, "control", 200, 0),
        ]

    decisions = drive(eng, traffic, 120)
    rollback = [d for d in kinds(decisions, "percent") if d["percent"] == 0]
    assert len(rollback) == 1
    assert rollback[0]["reason"] == "rollback: error-spike"
    delay = rollback[0]["ts"] - (T0 + spike_at)
    assert 0 < delay <= trig.for_ + 1.0
    states = [d["state"] for d in kinds(decisions, "trigger")]
    assert states == ["pending", "firing"]
    firing = kinds(decisions, "trigger")[1]
    assert firing["value"] > firing["threshold"] == 0.02
    assert firing["samples"] >= 100
    # The contract's order: trigger, percent, phase, alert, all at one instant.
    tail = [d["kind"] for d in decisions if d["ts"] == rollback[0]["ts"]]
    assert tail == ["trigger", "percent", "phase", "alert"]
    assert kinds(decisions, "phase")[-1]["phase"] == "rolled_back"
    assert kinds(decisions, "alert")[0]["status"] == "firing"
    assert eng.rollout("co").percent == 0


def test_global_incident_does_not_roll_back_a_baseline_trigger() -> None:
    # 10% errors on both sides: over the 2% floor, but not over 3x control.
    eng = engine(rollout(error_trigger(for_=0.0)))
    decisions = drive(eng, steady(0.1, 0.1, count=200), 200)
    assert kinds(decisions, "trigger") == []
    assert eng.rollout("co").phase == "completed"


def test_absolute_only_trigger_does_roll_back_a_global_incident() -> None:
    eng = engine(rollout(error_trigger(for_=0.0, baseline=None)))
    decisions = drive(eng, steady(0.1, 0.1, count=200), 60)
    assert eng.rollout("co").phase == "rolled_back"
    assert kinds(decisions, "trigger")[0]["state"] == "firing"


def test_low_traffic_canary_neither_advances_nor_rolls_back() -> None:
    # 1 request/s: 60 in the window, below min_samples 100; even at 100% errors.
    eng = engine(rollout(error_trigger(for_=0.0)))

    def traffic(ts: float) -> list[Event]:
        return [batch(ts + 0.25, "canary", 1, 1), batch(ts + 0.5, "control", 500, 0)]

    decisions = drive(eng, traffic, 600)
    assert [d["reason"] for d in kinds(decisions, "percent")] == ["start"]
    assert kinds(decisions, "trigger") == []
    assert eng.rollout("co").phase == "progressing"


def test_flapping_metric_does_not_flap_the_trigger() -> None:
    # The canary alternates between 5 s above and 5 s below the bound; `for` is 30 s, so the
    # trigger goes pending and back, but never fires and never blocks for good.
    trig = error_trigger(window=2.0, for_=30.0, min_samples=10, baseline=None)
    eng = engine(rollout(trig, steps=(StepSpec(5, 3600), StepSpec(100))))

    def traffic(ts: float) -> list[Event]:
        bad = int(ts - T0) // 5 % 2 == 1
        return [batch(ts + 0.25, "canary", 20, 1 if bad else 0)]

    decisions = drive(eng, traffic, 600)
    states = [d["state"] for d in kinds(decisions, "trigger")]
    assert "firing" not in states
    assert states[:4] == ["pending", "inactive", "pending", "inactive"]
    # One pending/inactive pair per 10 s cycle: no churn within a cycle.
    assert len(states) <= 2 * 600 // 10
    assert eng.rollout("co").phase == "progressing"


def test_flapping_within_a_bucket_is_absorbed_by_the_resolve_delay() -> None:
    trig = error_trigger(window=2.0, for_=0.0, min_samples=1, baseline=None, action="alert")
    eng = engine(rollout(trig, steps=(StepSpec(5, 3600), StepSpec(100))))
    decisions: list[Decision] = []
    # Breach, then a good batch 0.5 s later (condition false), then bad again 0.3 s later.
    decisions += eng.handle(batch(T0 + 0.1, "canary", 10, 10))
    decisions += eng.handle(batch(T0 + 0.6, "canary", 1000, 0))
    decisions += eng.handle(batch(T0 + 0.9, "canary", 5000, 5000))
    states = [d.state for d in decisions if isinstance(d, TriggerDecision)]
    assert states == ["firing"]


def test_gauge_baseline_reads_the_other_cohorts_gauge() -> None:
    # The canary's queue grows to 3x control's: a bound of 2x control must fire, and a
    # bound of 4x must not (both compare against control's last value, not the canary's).
    def queue(factor: float) -> TriggerSpec:
        return TriggerSpec(
            name=f"queue-{factor:g}x",
            metric="gauge:queue_depth",
            op=">",
            window=30.0,
            baseline=Baseline("control", factor),
            action="alert",
        )

    eng = engine(rollout(queue(2.0), queue(4.0), steps=(StepSpec(5, 3600), StepSpec(100))))

    def traffic(ts: float) -> list[Event]:
        canary = 100.0 if ts - T0 < 20 else 300.0
        return [
            event(ts=ts + 0.25, type="gauge", cohort="control", name="queue_depth", value=100.0),
            event(ts=ts + 0.5, type="gauge", name="queue_depth", value=canary),
        ]

    decisions = drive(eng, traffic, 40)
    fired = [(d["trigger"], d["value"], d["threshold"]) for d in kinds(decisions, "trigger")]
    assert fired == [("queue-2x", 300.0, 200.0)]
    assert kinds(decisions, "trigger")[0]["ts"] == T0 + 20.5


def test_stalled_gauge_fires_unchanged() -> None:
    stall = TriggerSpec(
        name="backfill-stalled",
        metric="gauge:migration_progress",
        op="unchanged",
        window=120.0,
        action="alert",
        severity="warning",
    )
    eng = engine(rollout(stall, steps=(StepSpec(5, 3600), StepSpec(100))))

    def traffic(ts: float) -> list[Event]:
        t = ts - T0
        progress = min(t, 300) / 1000  # grows for 5 minutes, then stalls at 0.3
        return [event(ts=ts + 0.5, type="gauge", name="migration_progress", value=progress)]

    decisions = drive(eng, traffic, 600)
    trig = kinds(decisions, "trigger")
    assert [d["state"] for d in trig] == ["firing"]
    # Last change at t=300.5; the window of 120 s no longer holds it from t=421.
    assert 420 <= trig[0]["ts"] - T0 <= 422
    assert trig[0]["value"] == 0.3
    alert = kinds(decisions, "alert")
    assert alert[0]["severity"] == "warning"
    assert eng.rollout("co").phase == "progressing"  # an alert only acts as an alert


def test_absent_gauge_fires_only_after_a_whole_window() -> None:
    gone = TriggerSpec(
        name="heartbeat-gone",
        metric="gauge:heartbeat",
        op="absent",
        window=30.0,
        action="pause",
    )
    eng = engine(rollout(gone, steps=(StepSpec(5, 3600), StepSpec(100))))
    decisions = [d for d in eng.handle(batch(T0, "canary", 1))]
    decisions += eng.advance(T0 + 29.0)
    assert [d.kind for d in decisions] == ["percent", "phase"]
    decisions += eng.advance(T0 + 31.0)
    assert [d.state for d in decisions if isinstance(d, TriggerDecision)] == ["firing"]
    assert eng.rollout("co").phase == "paused"
