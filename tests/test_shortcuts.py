"""The engine's shortcuts (skipped reads and evaluations) change no decision.

An engine with shortcuts and one without take the same generated traffic; every trigger
kind whose reads can be skipped is covered: rates, availability, request rate and
quantiles, upper and lower bounds, fixed thresholds, baselines and both together. The
latencies and error counts hover around the bounds so the triggers do move.
"""

from __future__ import annotations

from typing import Any

from hypothesis import event as note
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, batch, event
from rolloutd.core.decisions import TriggerDecision, encode
from rolloutd.core.engine import Engine
from rolloutd.core.spec import Baseline, EngineSpec, RolloutSpec, StepSpec, TriggerSpec
from rolloutd.core.triggers import INACTIVE, OK


def _trigger(
    metric: str, op: str, threshold: float | None, factor: float | None, **kw: Any
) -> TriggerSpec:
    fields: dict[str, Any] = {
        "name": f"{metric}{op}",
        "metric": metric,
        "op": op,
        "window": 5.0,
        "threshold": threshold,
        "baseline": Baseline("control", factor) if factor is not None else None,
        "for_": 0.0,
        "min_samples": 3,
        "action": "alert",
    }
    fields.update(kw)
    return TriggerSpec(**fields)


TRIGGERS = (
    _trigger("error_rate", ">", 0.05, 2.0),
    _trigger("error_rate", ">", None, 1.5, for_=2.0),
    _trigger("availability", "<", 0.9, 0.95),
    _trigger("request_rate", "<", 3.0, None, window=3.0),
    _trigger("request_rate", ">", 20.0, 2.0),
    _trigger("latency_p99", ">", 250.0, 1.5),
    _trigger("latency_p50", "<", 60.0, 0.5),
    _trigger("latency_p90", ">=", None, 1.2, for_=1.5),
    _trigger("latency_p95", ">", 300.0, None, min_samples=0),
)
SPEC = EngineSpec(
    rollouts=tuple(
        RolloutSpec(
            name=f"r{i}",
            flag=f"f{i}",
            steps=(StepSpec(10, 3.0), StepSpec(50, 4.0), StepSpec(100)),
            bake=3.0,
            triggers=(trig,),
        )
        for i, trig in enumerate(TRIGGERS)
    )
)
LATENCIES = st.sampled_from([0.0, 20.0, 55.0, 60.0, 61.0, 120.0, 249.0, 250.0, 260.0, 310.0, 400.0])
STEP = st.tuples(
    st.one_of(st.floats(0.0, 0.2), st.floats(0.0, 2.0)),  # time passing
    st.integers(0, len(TRIGGERS) - 1),  # which rollout
    st.sampled_from(["canary", "control"]),
    st.one_of(st.integers(0, 8), st.integers(20, 60)),  # count (1 = a single request)
    st.floats(0.0, 1.0),  # share of errors
    st.lists(LATENCIES, max_size=6),
    st.sampled_from([0.0, 0.0, 0.0, 2.5]),  # lateness
)


def _request(ts: float, which: int, cohort: str, count: int, bad: float, lats: list[float]) -> Any:
    if cohort == "control":  # a faster control, so baseline bounds bite too
        lats = [x / 1.6 for x in lats]
    if count == 1:
        extra = {"latency_ms": lats[0]} if lats else {}
        return event(
            ts=ts, type="request", cohort=cohort, ok=bad < 0.5, rollout=f"r{which}", **extra
        )
    return batch(ts, cohort, count, int(count * bad), latency_ms=lats, rollout=f"r{which}")


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, min_size=10, max_size=400))
def test_shortcuts_change_no_decision(steps: list[tuple[Any, ...]]) -> None:
    fast, exact = Engine(SPEC), Engine(SPEC, shortcuts=False)
    ts = T0
    for dt, which, cohort, count, bad, lats, late in steps:
        ts += dt
        ev = _request(ts - late, which, cohort, count, bad, lats)
        mine, theirs = fast.handle(ev, ts), exact.handle(ev, ts)
        assert [encode(d) for d in mine] == [encode(d) for d in theirs]
        for d in mine:
            if isinstance(d, TriggerDecision):
                note(f"{d.trigger} {d.state}")
    # A shown value may lag while reads are skipped; refreshed, it is the exact reading.
    for a, b in zip(fast.rollouts, exact.rollouts, strict=True):
        for ta, tb in zip(a.triggers, b.triggers, strict=True):
            if not ta.stale:
                continue
            ta.refresh()
            tb.dirty = True
            tb.read(ts, b.started_at)
            assert (ta.value, ta.bound, ta.samples, ta.outcome) == (
                tb.value,
                tb.bound,
                tb.samples,
                tb.outcome,
            )


def test_reads_are_skipped_for_requests_that_cannot_breach() -> None:
    """Healthy traffic after the first reading: the error-rate trigger is not read again
    until the next bucket, however many OK requests arrive."""
    spec = EngineSpec(rollouts=(SPEC.rollouts[0],))
    eng = Engine(spec)
    trig = eng.rollouts[0].triggers[0]
    ts = T0 + 0.1
    for cohort in ("canary", "control"):
        eng.handle(batch(ts, cohort, 10, 0, rollout="r0"))
    assert (trig.outcome, trig.state, trig.dirty) == (OK, INACTIVE, False)
    reads = trig.samples
    for i in range(50):
        cohort = "canary" if i % 2 else "control"
        eng.handle(event(ts=ts, type="request", cohort=cohort, ok=True, rollout="r0"))
    assert trig.samples == reads
    assert trig.stale
    eng.handle(event(ts=ts, type="request", cohort="canary", ok=False, rollout="r0"))
    assert trig.samples == reads + 26
    assert not trig.stale


def test_falling_baseline_quantile_fires_on_the_same_request() -> None:
    """A fast control whose p99 sinks under a steady canary: the skipped reads (a budget
    of baseline samples) end in time for the breach to fire on the exact request."""
    trig = _trigger("latency_p99", ">", 250.0, 1.5, window=60.0, min_samples=0)
    spec = EngineSpec(
        rollouts=(
            RolloutSpec(name="r", flag="f", steps=(StepSpec(100),), bake=600.0, triggers=(trig,)),
        )
    )
    fast, exact = Engine(spec), Engine(spec, shortcuts=False)
    ts = T0 + 0.5
    setup = [
        batch(ts, "control", 985, latency_ms=[100.0] * 985, rollout="r"),
        batch(ts, "control", 15, latency_ms=[400.0] * 15, rollout="r"),
        batch(ts, "canary", 100, latency_ms=[500.0] * 100, rollout="r"),
    ]
    fired_at = []
    for i, ev in enumerate([*setup, *[_request(ts, 0, "control", 1, 0.0, [16.0])] * 600]):
        ev = (
            ev
            if i < len(setup)
            else event(
                ts=ts, type="request", cohort="control", ok=True, latency_ms=10.0, rollout="r"
            )
        )
        mine, theirs = fast.handle(ev), exact.handle(ev)
        assert [encode(d) for d in mine] == [encode(d) for d in theirs]
        if any(d.kind == "trigger" for d in mine):
            fired_at.append(i)
    assert fired_at == [len(setup) + 401]  # 1.5 x the control p99 fell under 500 ms
    assert fast.rollouts[0].triggers[0].state == "firing"
