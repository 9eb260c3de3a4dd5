"""Circuit breakers (`rolloutd.core.breaker`): resilience4j's documented behaviour, on a fake
clock (every call takes `now`; nothing sleeps).

The property tests hold the runtime to a brute-force reference that keeps the window as a
plain list of call outcomes (a batch of n calls with e failures expanded into n calls of
e/n failure each) and judges after every single call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, event
from rolloutd.core.breaker import (
    CLOSED,
    COMMANDS,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    METRICS_ONLY,
    OPEN,
    BreakerRuntime,
    BreakerSpec,
    calls_of,
)
from rolloutd.core.decisions import BreakerDecision, encode, to_dict

PROPERTY_RUNS = settings(max_examples=300, deadline=None)


def spec(**overrides: Any) -> BreakerSpec:
    fields: dict[str, Any] = {
        "name": "users",
        "service": "user-service",
        "window_size": 10,
        "minimum_calls": 10,
        "slow_call_duration": 1.0,
        "wait_in_open": 30.0,
        "permitted_in_half_open": 4,
    }
    fields.update(overrides)
    return BreakerSpec(**fields)


def calls(runtime: BreakerRuntime, now: float, outcomes: str) -> list[BreakerDecision]:
    """One call per letter: `.` ok, `F` failed, `S` slow, `X` failed and slow."""
    out: list[BreakerDecision] = []
    for c in outcomes:
        out += runtime.record(now, 1, int(c in "FX"), int(c in "SX"))
    return out


def states(decisions: list[BreakerDecision]) -> list[str]:
    return [d.state for d in decisions]


def opened(**overrides: Any) -> BreakerRuntime:
    """A breaker that opened at T0 on a window of failures."""
    runtime = BreakerRuntime(spec(**overrides))
    assert states(runtime.record(T0, runtime.spec.window_size, runtime.spec.window_size, 0)) == [
        OPEN
    ]
    return runtime


# -- closed: minimum calls, thresholds ---------------------------------------------------


@pytest.mark.parametrize("window", ["count", "time"])
def test_stays_closed_below_minimum_calls(window: str) -> None:
    runtime = BreakerRuntime(spec(window=window, minimum_calls=5))
    assert calls(runtime, T0, "FFFF") == []
    assert (runtime.state, runtime.calls(), runtime.failure_rate()) == (CLOSED, 4, None)
    [decision] = calls(runtime, T0, "F")
    assert (decision.state, decision.calls, decision.failure_rate) == (OPEN, 5, 1.0)


def test_a_count_window_caps_minimum_calls_at_its_size() -> None:
    runtime = BreakerRuntime(spec(window_size=5, minimum_calls=100))
    assert states(calls(runtime, T0, "FFFFF")) == [OPEN]
    timed = BreakerRuntime(spec(window="time", window_size=5, minimum_calls=100))
    assert calls(timed, T0, "F" * 99) == []
    assert states(calls(timed, T0, "F")) == [OPEN]


@pytest.mark.parametrize(
    ("threshold", "failures", "total", "opens"),
    [
        (0.5, 5, 10, True),
        (0.5, 4, 10, False),
        (0.1, 1, 10, True),  # 0.1 is not exact in binary: the float rate still reaches it
        (0.3, 3, 10, True),
        (0.7, 7, 10, True),
        (0.7, 6, 10, False),
        (0.62, 31, 50, True),
        (0.62, 30, 50, False),
        (1 / 3, 1, 3, True),
        (1.0, 10, 10, True),
        (1.0, 9, 10, False),
    ],
)
def test_opens_exactly_at_the_failure_rate_threshold(
    threshold: float, failures: int, total: int, opens: bool
) -> None:
    runtime = BreakerRuntime(spec(window_size=total, minimum_calls=total, failure_rate=threshold))
    decisions = runtime.record(T0, total, failures, 0)
    assert states(decisions) == ([OPEN] if opens else [])
    if opens:
        assert to_dict(decisions[0]) == {
            "ts": T0,
            "kind": "breaker",
            "breaker": "users",
            "state": "open",
            "failure_rate": failures / total,
            "slow_call_rate": 0.0,
            "calls": total,
            "reason": f"failure rate {failures / total:.6g} >= {threshold:.6g}",
        }
    else:
        assert runtime.failure_rate() == failures / total


@pytest.mark.parametrize(
    ("latencies_ms", "opens"),
    [
        ([1000.0] * 10, False),  # exactly the duration is not slow
        ([1000.001] * 5 + [1.0] * 5, True),
        ([1000.001] * 4 + [1.0] * 6, False),
        ([5000.0] * 5 + [None] * 5, True),  # calls without a latency are not slow
    ],
)
def test_slow_call_rate_opens(latencies_ms: list[float | None], opens: bool) -> None:
    runtime = BreakerRuntime(spec(slow_call_rate=0.5))
    out: list[BreakerDecision] = []
    for latency in latencies_ms:
        extra = {} if latency is None else {"latency_ms": latency}
        ev = event(ts=T0, type="request", service="user-service", ok=True, **extra)
        counts = runtime.calls_of(ev)
        assert counts is not None
        out += runtime.record(T0, *counts)
    assert states(out) == ([OPEN] if opens else [])
    if opens:
        assert (out[0].slow_call_rate, out[0].failure_rate) == (0.5, 0.0)
        assert out[0].reason == "slow call rate 0.5 >= 0.5"


def test_both_rates_are_named_when_both_breach() -> None:
    runtime = BreakerRuntime(spec(slow_call_rate=0.5))
    [decision] = runtime.record(T0, 10, 6, 7)
    assert decision.reason == "failure rate 0.6 >= 0.5; slow call rate 0.7 >= 0.5"


@pytest.mark.parametrize("window", ["count", "time"])
@pytest.mark.parametrize(
    ("history", "last", "opens"),
    [
        (".", "F", True),
        ("..", "F", False),
        ("..F", "F", True),
        ("..S", "X", True),
        ("...S", "X", False),
    ],
)
def test_one_call_tips_the_window_at_the_threshold(
    window: str, history: str, last: str, opens: bool
) -> None:
    runtime = BreakerRuntime(spec(window=window, minimum_calls=2, slow_call_rate=0.5))
    assert calls(runtime, T0, history) == []
    assert states(calls(runtime, T0, last)) == ([OPEN] if opens else [])


# -- calls_of ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "request", "ok": True}, (1, 0, 0)),
        ({"type": "request", "ok": False, "latency_ms": 250.0}, (1, 1, 1)),
        ({"type": "request", "status": 503, "latency_ms": 200.0}, (1, 1, 0)),
        ({"type": "request", "status": 404}, (1, 0, 0)),
        ({"type": "requests", "count": 50, "errors": 3, "slow": 4}, (50, 3, 4)),
        ({"type": "requests", "count": 5, "errors": 0, "latency_ms": [300, 201, 200]}, (5, 0, 2)),
        ({"type": "requests", "count": 5, "errors": 0, "slow": 3, "latency_ms": [900]}, (5, 0, 3)),
        ({"type": "gauge", "name": "x", "value": 1.0}, None),
    ],
)
def test_calls_of_events(fields: dict[str, Any], expected: tuple[int, int, int] | None) -> None:
    ev = event(ts=T0, service="user-service", **fields)
    assert calls_of(ev, 0.2) == expected  # 0.2 s is exactly 200 ms: 200 is not slow
    assert BreakerRuntime(spec(slow_call_duration=0.2)).calls_of(ev) == expected


def test_calls_of_needs_the_service() -> None:
    assert calls_of(event(ts=T0, type="request", ok=False), 1.0) is None
    other = event(ts=T0, type="request", ok=False, service="billing")
    assert calls_of(other, 1.0) == (1, 1, 0)
    assert BreakerRuntime(spec()).calls_of(other) is None


# -- time window ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("later", "kept"),
    [(0.0, 3), (9.4, 3), (9.5, 0), (12.0, 0)],  # calls at T0 + 0.5 sit in second T0
)
def test_time_window_forgets_old_calls_as_time_passes(later: float, kept: int) -> None:
    runtime = BreakerRuntime(spec(window="time", minimum_calls=4))
    calls(runtime, T0 + 0.5, "FFF")
    assert runtime.advance(T0 + 0.5 + later) == []
    assert runtime.calls() == kept
    # Three more failures open the breaker only while the first three are still counted.
    assert states(calls(runtime, T0 + 0.5 + later, "FFF")) == ([OPEN] if kept else [])


def test_time_passing_alone_never_opens() -> None:
    runtime = BreakerRuntime(spec(window="time", minimum_calls=4))
    calls(runtime, T0, "......")
    calls(runtime, T0 + 5, "FFFF")  # 4 of 10 failed: below 0.5
    assert runtime.advance(T0 + 11) == []  # the good calls left: 4 of 4, yet not judged
    assert (runtime.state, runtime.failure_rate()) == (CLOSED, 1.0)
    assert states(calls(runtime, T0 + 11, ".")) == [OPEN]  # judged on the next call


def test_a_late_call_counts_at_the_latest_time_seen() -> None:
    runtime = BreakerRuntime(spec(window="time", minimum_calls=1, failure_rate=1.0))
    calls(runtime, T0 + 20, ".")
    calls(runtime, T0, "F")  # not in second T0, which has long left the window
    assert runtime.calls() == 2


# -- open, half-open, growing waits ----------------------------------------------------------


@pytest.mark.parametrize(
    ("opens", "wait"),
    [(1, 10.0), (2, 20.0), (3, 35.0), (4, 35.0), (5000, 35.0)],
)
def test_wait_grows_exponentially_to_its_cap(opens: int, wait: float) -> None:
    growing = spec(wait_in_open=10.0, wait_multiplier=2.0, max_wait_in_open=35.0)
    assert growing.wait(opens) == wait


def _reopen_after(runtime: BreakerRuntime, opened_at: float, wait: float) -> float:
    """Check the breaker stays open until `wait` has passed; fail its trial; when it reopened."""
    assert runtime.advance(opened_at + wait - 0.001) == []
    [half_open] = runtime.advance(opened_at + wait)
    assert (half_open.state, half_open.reason, half_open.calls) == (
        HALF_OPEN,
        "wait in open elapsed",
        0,
    )
    assert states(calls(runtime, opened_at + wait, "FFFF")) == [OPEN]
    return opened_at + wait


def test_open_to_half_open_after_growing_waits_then_reset_by_a_close() -> None:
    runtime = opened(wait_in_open=10.0, wait_multiplier=2.0, max_wait_in_open=35.0)
    at = T0
    for wait in (10.0, 20.0, 35.0, 35.0):
        at = _reopen_after(runtime, at, wait)
    runtime.advance(at + 35.0)
    [closed] = calls(runtime, at + 35.0, "....")
    assert (closed.state, closed.reason, closed.failure_rate) == (
        CLOSED,
        "half-open trial passed",
        0.0,
    )
    assert states(runtime.record(at + 40.0, 10, 10, 0)) == [OPEN]
    _reopen_after(runtime, at + 40.0, 10.0)  # the growth started over


def test_open_ignores_calls_and_a_call_after_the_wait_is_a_trial_call() -> None:
    runtime = opened()
    assert calls(runtime, T0 + 29, "FFFFFFFFFF") == []
    assert (runtime.calls(), runtime.failure_rate()) == (0, None)
    assert states(calls(runtime, T0 + 30, "F...")) == [HALF_OPEN, CLOSED]


@pytest.mark.parametrize(
    ("trial", "after"),
    [
        ("....", CLOSED),
        ("F...", CLOSED),
        ("FF..", OPEN),  # 0.5 >= 0.5
        ("..SS", CLOSED),  # slow-call threshold 1.0
        ("SSSS", OPEN),
        ("X...", CLOSED),
    ],
)
def test_half_open_judges_its_permitted_calls(trial: str, after: str) -> None:
    runtime = opened()
    runtime.advance(T0 + 30)
    assert calls(runtime, T0 + 31, trial[:-1]) == []
    assert (runtime.calls(), runtime.failure_rate()) == (3, None)
    [decision] = calls(runtime, T0 + 31, trial[-1])
    assert (decision.state, decision.calls) == (after, 4)


@pytest.mark.parametrize(
    ("batch", "after", "failure_rate", "closed_window"),
    [
        ((4, 4, 0), OPEN, 0.5, 0),  # the first 2 of 4 take 2 failures: 2 of 4
        ((4, 2, 0), CLOSED, 0.25, 2),  # 1 of 4; the other 2 calls go to the closed window
        ((6, 3, 0), CLOSED, 0.25, 4),
        ((1, 1, 0), None, None, 0),  # not enough calls yet
    ],
)
def test_a_batch_straddling_the_trial_counts_proportionally(
    batch: tuple[int, int, int], after: str | None, failure_rate: float | None, closed_window: int
) -> None:
    runtime = opened()
    runtime.advance(T0 + 30)
    calls(runtime, T0 + 30, "..")
    decisions = runtime.record(T0 + 30, *batch)
    assert states(decisions) == ([after] if after else [])
    if after:
        assert decisions[0].failure_rate == failure_rate
    if after == CLOSED:
        assert runtime.calls() == closed_window


# -- manual states -------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "state"), [("force_open", FORCED_OPEN), ("disable", DISABLED)])
def test_forced_open_and_disabled_ignore_calls_and_time(command: str, state: str) -> None:
    runtime = BreakerRuntime(spec())
    calls(runtime, T0, "FFFF")
    [decision] = runtime.command(T0 + 1, command)
    assert to_dict(decision) == {
        "ts": T0 + 1,
        "kind": "breaker",
        "breaker": "users",
        "state": state,
        "failure_rate": None,
        "slow_call_rate": None,
        "calls": 4,
        "reason": f"command: {command}",
    }
    assert runtime.record(T0 + 2, 100, 100, 100) == []
    assert runtime.advance(T0 + 10_000) == []
    assert (runtime.state, runtime.calls(), runtime.failure_rate()) == (state, 0, None)
    assert runtime.command(T0 + 10_001, command) == []  # already there: nothing changes
    assert states(runtime.command(T0 + 10_002, "reset")) == [CLOSED]


def test_metrics_only_computes_rates_but_never_transitions() -> None:
    runtime = BreakerRuntime(spec())
    assert states(runtime.command(T0, "metrics_only")) == [METRICS_ONLY]
    assert runtime.record(T0, 10, 10, 10) == []
    assert (runtime.calls(), runtime.failure_rate(), runtime.slow_call_rate()) == (10, 1.0, 1.0)
    assert runtime.record(T0, 5, 0, 0) == []
    assert (runtime.calls(), runtime.failure_rate()) == (10, 0.5)
    assert runtime.advance(T0 + 10_000) == []
    assert runtime.state == METRICS_ONLY


def test_reset_closes_with_an_empty_window_and_forgets_the_growth() -> None:
    runtime = opened(wait_in_open=10.0, wait_multiplier=3.0, max_wait_in_open=100.0)
    at = _reopen_after(runtime, T0, 10.0)  # next wait would be 30
    [decision] = runtime.command(at + 1, "reset")
    assert (decision.state, decision.reason) == (CLOSED, "command: reset")
    calls(runtime, at + 1, "FFFFF")
    assert runtime.command(at + 2, "reset") == []  # already closed: no decision...
    assert runtime.calls() == 0  # ...but the window is emptied
    runtime.record(at + 2, 10, 10, 0)
    _reopen_after(runtime, at + 2, 10.0)


def test_a_command_first_lets_time_pass() -> None:
    runtime = opened()
    assert states(runtime.command(T0 + 30, "force_open")) == [HALF_OPEN, FORCED_OPEN]


def test_unknown_command_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown breaker command 'open'"):
        BreakerRuntime(spec()).command(T0, "open")


@pytest.mark.parametrize(
    "overrides",
    [
        {"window": "sliding"},
        {"window_size": 0},
        {"failure_rate": 0.0},
        {"slow_call_rate": 1.5},
        {"minimum_calls": 0},
        {"wait_in_open": 0.0},
        {"wait_multiplier": 0.5},
        {"max_wait_in_open": 1.0},
        {"permitted_in_half_open": 0},
    ],
)
def test_spec_rejects_bad_settings(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="breaker 'users' needs"):
        spec(**overrides)


def test_record_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="bad call counts"):
        BreakerRuntime(spec()).record(T0, 3, 4, 0)


def test_decision_encodes_without_a_rollout() -> None:
    [decision] = BreakerRuntime(spec(window_size=50, minimum_calls=50)).record(T0, 50, 31, 0)
    assert encode(decision) == (
        b'{"ts":1763719200.0,"kind":"breaker","breaker":"users","state":"open",'
        b'"failure_rate":0.62,"slow_call_rate":0.0,"calls":50,'
        b'"reason":"failure rate 0.62 >= 0.5"}'
    )


def test_a_batch_opens_where_its_calls_one_by_one_would() -> None:
    runtime = BreakerRuntime(spec())
    calls(runtime, T0, "......FFFF")  # 0.4
    # 10 calls with 3 failures, 0.3 each: after 4 of them the window holds 4 + 1.2 failures.
    [decision] = runtime.record(T0, 10, 3, 0)
    assert (decision.calls, decision.failure_rate) == (10, 0.52)


# -- brute-force reference -----------------------------------------------------------------


@dataclass
class Reference:
    """Every call kept in a list, judged one by one; no running sums, no batches."""

    spec: BreakerSpec
    state: str = CLOSED
    clock: float = float("-inf")
    opens: int = 0
    until: float = 0.0
    window: list[tuple[int, Fraction, Fraction]] = field(default_factory=list)  # second, f, s
    trial: list[tuple[Fraction, Fraction]] = field(default_factory=list)
    out: list[dict[str, Any]] = field(default_factory=list)

    def _outcomes(self) -> list[tuple[Fraction, Fraction]]:
        if self.state == HALF_OPEN:
            return self.trial
        size = self.spec.window_size
        if self.spec.window == "count":
            return [(f, s) for _, f, s in self.window[-size:]]
        return [(f, s) for second, f, s in self.window if second > int(self.clock // 1) - size]

    def _minimum(self) -> int:
        if self.state == HALF_OPEN:
            return self.spec.permitted_in_half_open
        if self.spec.window == "count":
            return min(self.spec.minimum_calls, self.spec.window_size)
        return self.spec.minimum_calls

    def rates(self) -> tuple[int, float | None, float | None]:
        outcomes = self._outcomes()
        n = len(outcomes)
        if not n or n < self._minimum():
            return n, None, None
        return n, float(sum(f for f, _ in outcomes) / n), float(sum(s for _, s in outcomes) / n)

    def _breached(self) -> bool:
        _, failure_rate, slow_call_rate = self.rates()
        if failure_rate is None or slow_call_rate is None:
            return False
        return failure_rate >= self.spec.failure_rate or slow_call_rate >= self.spec.slow_call_rate

    def _enter(self, now: float, state: str, why: str) -> None:
        calls, failure_rate, slow_call_rate = self.rates()
        self.out.append(
            {"ts": now, "state": state, "calls": calls, "failure_rate": failure_rate}
            | {"slow_call_rate": slow_call_rate, "why": why}
        )
        self.state, self.window, self.trial = state, [], []
        if state == OPEN:
            growth = self.spec.wait_multiplier ** (self.opens - 1)
            self.until = self.clock + min(
                self.spec.wait_in_open * growth, self.spec.max_wait_in_open
            )

    def advance(self, now: float) -> None:
        self.clock = max(self.clock, now)
        if self.state == OPEN and self.clock >= self.until:
            self._enter(now, HALF_OPEN, "wait")

    def record(self, now: float, n: int, e: int, s: int) -> None:
        self.advance(now)
        for _ in range(n):
            self._call(now, Fraction(e, n), Fraction(s, n))

    def _call(self, now: float, f: Fraction, s: Fraction) -> None:
        if self.state in (CLOSED, METRICS_ONLY):
            self.window.append((int(self.clock // 1), f, s))
            if self.state == CLOSED and self._breached():
                self.opens = 1
                self._enter(now, OPEN, "breach")
        elif self.state == HALF_OPEN:
            self.trial.append((f, s))
            if len(self.trial) == self.spec.permitted_in_half_open:
                failed = self._breached()
                self.opens = self.opens + 1 if failed else 0
                self._enter(now, OPEN if failed else CLOSED, "trial")

    def command(self, now: float, name: str) -> None:
        self.advance(now)
        if COMMANDS[name] != self.state:
            self.opens = 0
            self._enter(now, COMMANDS[name], "command")
        elif name == "reset":
            self.window = []


def _seen(decisions: list[BreakerDecision]) -> list[dict[str, Any]]:
    kinds = {"wait": "wait in open", "trial": "half-open trial", "command": "command:"}
    return [
        {"ts": d.ts, "state": d.state, "calls": d.calls, "failure_rate": d.failure_rate}
        | {"slow_call_rate": d.slow_call_rate, "why": _why(d.reason, kinds)}
        for d in decisions
    ]


def _why(reason: str, kinds: dict[str, str]) -> str:
    return next((k for k, prefix in kinds.items() if reason.startswith(prefix)), "breach")


specs = st.builds(
    spec,
    window=st.sampled_from(["count", "time"]),
    window_size=st.integers(1, 8),
    minimum_calls=st.integers(1, 10),
    failure_rate=st.sampled_from([0.1, 0.3, 0.5, 2 / 3, 1.0]),
    slow_call_rate=st.sampled_from([0.25, 0.5, 1.0]),
    wait_in_open=st.sampled_from([0.5, 2.0, 5.0]),
    wait_multiplier=st.sampled_from([1.0, 1.5, 3.0]),
    max_wait_in_open=st.just(12.0),
    permitted_in_half_open=st.integers(1, 5),
)


@st.composite
def batches(draw: st.DrawFn, most: int = 12) -> tuple[int, int, int]:
    n = draw(st.integers(0, 2) | st.integers(0, most))  # single calls tip windows exactly
    some = st.integers(0, n) | st.just(0)  # healthy often enough to pass half-open trials
    return n, draw(some), draw(some)


Op = tuple[Any, ...]
# Mostly calls, so that breakers get to open, wait, try and close between commands.
_KINDS = ["record"] * 6 + ["advance"] * 3 + ["command"]


@st.composite
def _op(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from(_KINDS))
    if kind == "record":
        return kind, draw(st.sampled_from([0.0, 0.0, 0.3, 1.0])), draw(batches())
    if kind == "advance":
        return kind, draw(st.sampled_from([0.5, 1.0, 3.0, 7.5])), None
    return kind, 0.0, draw(st.sampled_from(sorted(COMMANDS)))


ops = st.lists(_op(), max_size=40)


def _apply(runtime: BreakerRuntime | Reference, now: float, op: Op) -> Any:
    kind, _, arg = op
    if kind == "record":
        return runtime.record(now, *arg)
    if kind == "advance":
        return runtime.advance(now)
    return runtime.command(now, arg)


@PROPERTY_RUNS
@given(spec_=specs, script=ops, late=st.booleans())
def test_runtime_matches_the_call_by_call_reference(
    spec_: BreakerSpec, script: list[Op], late: bool
) -> None:
    runtime, reference = BreakerRuntime(spec_), Reference(spec_)
    now = T0
    for op in script:
        now += op[1]
        at = now - 2.0 if late and op[0] == "record" else now  # late calls count at `now`
        decisions = _apply(runtime, at, op)
        before = len(reference.out)
        _apply(reference, at, op)
        assert _seen(decisions) == reference.out[before:]
        assert (runtime.state, runtime.calls(), runtime.failure_rate()) == (
            reference.state,
            *reference.rates()[:2],
        )
        assert runtime.slow_call_rate() == reference.rates()[2]


@PROPERTY_RUNS
@given(
    size=st.integers(1, 8),
    minimum=st.integers(1, 10),
    script=st.lists(batches(most=20), max_size=30),
)
def test_count_window_is_the_last_n_calls(
    size: int, minimum: int, script: list[tuple[int, int, int]]
) -> None:
    """metrics_only never moves, so the window sees every call: the last `size` of them."""
    runtime = BreakerRuntime(spec(window_size=size, minimum_calls=minimum))
    runtime.command(T0, "metrics_only")
    outcomes: list[tuple[Fraction, Fraction]] = []
    for n, e, s in script:
        assert runtime.record(T0, n, e, s) == []
        outcomes += [(Fraction(e, n), Fraction(s, n))] * n if n else []
        last = outcomes[-size:]
        assert runtime.calls() == len(last)
        if len(last) < min(minimum, size) or not last:
            assert runtime.failure_rate() is None
        else:
            assert runtime.failure_rate() == float(sum(f for f, _ in last) / len(last))
            assert runtime.slow_call_rate() == float(sum(s for _, s in last) / len(last))


@PROPERTY_RUNS
@given(spec_=specs, script=ops, parts=st.lists(st.integers(1, 4), min_size=40, max_size=40))
def test_splitting_a_batch_in_equal_parts_changes_nothing(
    spec_: BreakerSpec, script: list[Op], parts: list[int]
) -> None:
    whole, split = BreakerRuntime(spec_), BreakerRuntime(spec_)
    now = T0
    for op, m in zip(script, parts, strict=False):
        now += op[1]
        if op[0] != "record":
            assert _apply(whole, now, op) == _apply(split, now, op)
            continue
        n, e, s = op[2]
        mine = whole.record(now, m * n, m * e, m * s)
        theirs = [d for _ in range(m) for d in split.record(now, n, e, s)]
        assert mine == theirs
        assert (whole.calls(), whole.failure_rate()) == (split.calls(), split.failure_rate())


@PROPERTY_RUNS
@given(spec_=specs, script=ops, cut=st.integers(0, 40))
def test_dump_and_load_continue_identically(spec_: BreakerSpec, script: list[Op], cut: int) -> None:
    original = BreakerRuntime(spec_)
    now = T0
    for op in script[:cut]:
        now += op[1]
        _apply(original, now, op)
    restored = BreakerRuntime(spec_)
    restored.load(json.loads(json.dumps(original.dump())))
    assert restored.dump() == original.dump()
    for op in script[cut:]:
        now += op[1]
        assert _apply(original, now, op) == _apply(restored, now, op)
        assert restored.dump() == original.dump()


def test_dump_keeps_a_partial_batch_exactly() -> None:
    base = spec(window="time", permitted_in_half_open=4, failure_rate=0.9)
    runtime = BreakerRuntime(replace(base, minimum_calls=3, window_size=3))
    runtime.record(T0, 3, 3, 0)
    runtime.advance(T0 + 30)
    runtime.record(T0 + 30, 7, 2, 0)  # 4 calls to the trial, 3 with 6/7 failure to closed
    assert runtime.state == CLOSED
    restored = BreakerRuntime(runtime.spec)
    restored.load(json.loads(json.dumps(runtime.dump())))
    assert restored.failure_rate() == runtime.failure_rate() == 2 / 7
