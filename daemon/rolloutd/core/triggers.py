"""Trigger evaluation: read a window, judge it, move the trigger's state.

Rules:
* A reading is three-valued: BREACH, OK or INSUFFICIENT (too few samples in any cohort the
  trigger uses, or no value at all). Insufficient data never moves a trigger's state.
* The bound is the threshold, the baseline (factor x the other cohort's value over the same
  window), or both: max(...) for > and >=, min(...) for < and <=.
* States: inactive -> pending (breach, `for` not yet elapsed) -> firing. `for: 0` goes
  straight to firing. A pending trigger whose condition reads false goes inactive at once
  (its `for` starts again at the next breach); a firing one returns to inactive only once
  the condition has been false for one full bucket, so a firing trigger does not flap.
* Insufficient data neither breaks nor completes a streak: the `for` and resolve clocks
  keep running, and the transition they call for happens at the next sufficient reading.
* `unchanged` / `absent` read gauges and counters and can only be true once a whole window
  has been observed since the rollout started.
* Readings are cached: a trigger is re-read only when a series it reads changed (`dirty`)
  or its result depends on the clock (presence ops).
* A request that cannot turn an OK reading into a breach does not make the trigger dirty
  (`skips.holds`, which reads the parts of the last reading kept here): an OK request
  cannot raise an error rate, a latency at or below the p99 cannot raise the p99, a bound
  at its fixed threshold cannot come closer. The reasoning is exact (integer
  cross-multiplication for rates, histogram slots for quantiles), so a decision never
  depends on it; only the value shown between reads may lag (`stale`, `refresh`). Every
  bucket boundary reads again, since what leaves a window can move either way.
* A judge trigger (`spec.judge`) reads its tests instead of a window (`_read_judge`,
  core/judging.py): the e-value against 1/alpha, insufficient below `min_samples` in
  either cohort or while the split is broken. Its state moves as any trigger's.
"""

from __future__ import annotations

import math
from typing import Any, Final

from rolloutd.core.decisions import Evidence
from rolloutd.core.histogram import slot_value
from rolloutd.core.judging import JudgeRuntime
from rolloutd.core.machines import (
    BREACH_HELD,
    BREACH_SEEN,
    CLEAR_HELD,
    CLEAR_SEEN,
    OPEN_STATES,
    TRIGGER_FIRING,
    TRIGGER_INACTIVE,
    TRIGGER_PENDING,
    TRIGGER_TRANSITIONS,
)
from rolloutd.core.spec import TriggerSpec
from rolloutd.core.windows import RequestView, SampleSeries, SampleView

OK: Final = 0
BREACH: Final = 1
INSUFFICIENT: Final = 2
# The states, as the rest of the daemon imports them from here.
INACTIVE: Final = TRIGGER_INACTIVE
PENDING: Final = TRIGGER_PENDING
FIRING: Final = TRIGGER_FIRING

# Comparison ops as small ints, so a read compares natively (compiled) without a call.
GT: Final = 0
GE: Final = 1
LT: Final = 2
LE: Final = 3
_OPS: Final = {">": GT, ">=": GE, "<": LT, "<=": LE}
# What a trigger reads, for `read`.
ERRORS: Final = 0
AVAILABLE: Final = 1
RATE_OF_REQUESTS: Final = 2
LATENCY: Final = 3
TOTAL: Final = 4
LAST: Final = 5
BREAKER: Final = 6
JUDGE: Final = 7  # a judge's test (core/judging.py), not a window
SRM: Final = 8  # a judge's sample-ratio check
_QUANTILES: Final = {
    "latency_p50": 0.5,
    "latency_p90": 0.9,
    "latency_p95": 0.95,
    "latency_p99": 0.99,
}
# How a request moves the metric, for `holds`.
NEVER: Final = 0
RATE: Final = 1
QUANTILE: Final = 2
COUNT: Final = 3


def compare(op: int, value: float, bound: float) -> bool:
    """`value <op> bound` for an op of `_OPS`."""
    if op == GT:
        return value > bound
    if op == GE:
        return value >= bound
    if op == LT:
        return value < bound
    return value <= bound


def _reads(spec: TriggerSpec) -> int:
    if spec.judge is not None:
        return SRM if spec.judge.srm_of is not None else JUDGE
    kind = spec.metric_kind
    if kind == "breaker":
        return BREAKER
    if kind == "counter":
        return TOTAL
    if kind == "gauge":
        return LAST
    return {"error_rate": ERRORS, "availability": AVAILABLE, "request_rate": RATE_OF_REQUESTS}.get(
        spec.metric, LATENCY
    )


def _mode(metric: str, kind: str, presence: bool) -> int:
    if presence or kind != "request":
        return NEVER
    if metric in ("error_rate", "availability"):
        return RATE
    if metric == "request_rate":
        return COUNT
    return QUANTILE


class BreakerView:
    """What a `breaker:<name>` trigger reads: 1.0 while the breaker is open (or forced
    open), else 0.0. A breaker always has a state, so such a trigger never lacks data."""

    __slots__ = ("breaker", "samples", "span")

    def __init__(self, breaker: Any) -> None:
        self.breaker = breaker
        self.samples = 1
        self.span = 1

    def value(self) -> float:
        return 1.0 if self.breaker.state in OPEN_STATES else 0.0


class TriggerRuntime:
    """One trigger of one rollout: its spec, the windows it reads, its state.

    Built with its spec, then pointed at what it reads: `watch_requests`, `watch_samples` or
    `watch_breaker` (the engine does this). Every field is typed for the compiled engine.
    """

    __slots__ = (
        "base_budget",
        "base_den",
        "base_down",
        "base_free",
        "base_num",
        "base_requests",
        "base_sample_view",
        "base_samples",
        "base_value",
        "bound",
        "breaker",
        "bucket_seconds",
        "den",
        "dirty",
        "factor",
        "for_",
        "has_base",
        "judge",
        "min_samples",
        "mode",
        "num",
        "ok_since",
        "op",
        "outcome",
        "own_down",
        "presence",
        "quantile",
        "reads",
        "requests",
        "sample_series",
        "sample_view",
        "samples",
        "since",
        "spec",
        "stale",
        "state",
        "threshold",
        "upper",
        "value",
        "window_seconds",
    )

    def __init__(self, spec: TriggerSpec, bucket_seconds: float, window_seconds: float) -> None:
        presence = spec.op in ("unchanged", "absent")
        upper = spec.op in (">", ">=")
        factor = spec.baseline.factor if spec.baseline is not None else 0.0
        rising_is_bad = upper if spec.metric != "availability" else not upper
        # What every request reads (`holds` and the engine's waking loop) comes first: the
        # compiled object lays fields out in this order, so they share one or two cache lines.
        self.dirty = True
        self.stale = False  # value, bound and samples are older than the windows
        # For `holds`: whether the measured quantity (the error rate for RATE metrics, else
        # the value) must not rise on each side, so that the value does not move toward the
        # breach and the bound does not move toward the value; and the last reading's parts.
        # A negative factor turns the bound around: always read.
        judged = spec.judge is not None
        self.mode = (
            NEVER if factor < 0 or judged else _mode(spec.metric, spec.metric_kind, presence)
        )
        self.outcome = INSUFFICIENT
        self.state = INACTIVE
        self.own_down = rising_is_bad  # the own value must not rise
        self.base_down = not rising_is_bad  # the baseline value must not rise
        self.base_free = False  # the value is within the threshold: no baseline can matter
        self.num = self.den = self.base_num = self.base_den = 0
        self.value: float | None = None
        self.base_value = 0.0
        self.base_budget = 0  # baseline latencies that may still arrive below its quantile
        self.spec = spec
        self.bucket_seconds = bucket_seconds
        self.window_seconds = window_seconds
        # What it reads: set by one of the watch_* methods.
        self.requests: RequestView | None = None
        self.base_requests: RequestView | None = None
        self.sample_view: SampleView | None = None
        self.sample_series: SampleSeries | None = None
        self.base_sample_view: SampleView | None = None
        self.base_samples: SampleSeries | None = None
        self.breaker: BreakerView | None = None
        self.judge: JudgeRuntime | None = None
        self.has_base = spec.baseline is not None
        # Hot-path copies of the spec, so a read is a few attribute loads and arithmetic.
        self.reads = _reads(spec)
        self.presence = presence
        self.min_samples = spec.min_samples
        self.threshold = spec.threshold
        self.factor = factor
        self.upper = upper
        self.op = _OPS.get(spec.op, GT)
        self.for_ = spec.for_
        self.quantile = _QUANTILES.get(spec.metric, 0.0)
        self.since: float | None = None  # when it became pending
        self.ok_since: float | None = None  # first OK reading while pending or firing
        self.bound: float | None = None
        self.samples = 0

    def watch_requests(self, own: RequestView, base: RequestView | None) -> None:
        self.requests = own
        self.base_requests = base if self.has_base else None

    def watch_samples(
        self,
        own: SampleSeries,
        own_view: SampleView,
        base: SampleSeries | None,
        base_view: SampleView | None,
    ) -> None:
        self.sample_series, self.sample_view = own, own_view
        if self.has_base:
            self.base_samples, self.base_sample_view = base, base_view

    def watch_breaker(self, view: BreakerView) -> None:
        self.breaker = view

    def watch_judge(self, judge: JudgeRuntime) -> None:
        self.judge = judge

    # -- reading ------------------------------------------------------------------------
    def _request_value(self, view: RequestView) -> float | None:
        reads = self.reads
        count = view.count
        if reads == ERRORS:
            return view.errors / count if count else None
        if reads == AVAILABLE:
            return 1.0 - view.errors / count if count else None
        if reads == RATE_OF_REQUESTS:
            return count / self.window_seconds
        return view.quantile(self.quantile)

    def _sample_value(self, series: SampleSeries, view: SampleView) -> float | None:
        if self.reads == TOTAL:
            return view.total
        return series.last(view.span)

    def read(self, now: float, started_at: float | None) -> None:
        """Refresh value, bound, samples and outcome from the windows."""
        if self.presence:
            self._read_presence(now, started_at)
            return
        if not self.dirty:
            return
        self.dirty = self.stale = False
        if self.judge is not None:
            self._read_judge(self.judge)
            return
        requests = self.requests
        value: float | None
        if requests is not None:
            samples = self.den = requests.count
            self.num = requests.errors
            value = self._request_value(requests)
        elif self.breaker is not None:
            samples = 1  # a breaker always has a state
            value = self.breaker.value()
        else:
            series, view = self.sample_series, self.sample_view
            assert series is not None
            assert view is not None
            samples = view.samples
            value = self._sample_value(series, view)
        self.value, self.samples = value, samples
        if value is None or samples < self.min_samples:
            self.outcome = INSUFFICIENT
            return
        bound = self.threshold
        if self.has_base:
            base_value: float | None
            base_requests = self.base_requests
            if base_requests is not None:
                base_samples = self.base_den = base_requests.count
                self.base_num = base_requests.errors
                base_value = self._request_value(base_requests)
            else:
                base_series, base_view = self.base_samples, self.base_sample_view
                assert base_series is not None
                assert base_view is not None
                base_samples = base_view.samples
                base_value = self._sample_value(base_series, base_view)
            if base_value is None or base_samples < self.min_samples:
                self.bound = None
                self.outcome = INSUFFICIENT
                return
            self.base_value = base_value
            relative = self.factor * base_value
            if bound is None:
                bound = relative
            elif self.upper:
                bound = bound if bound >= relative else relative
            else:
                bound = bound if bound <= relative else relative
        assert bound is not None
        self.bound = bound
        op = self.op
        threshold = self.threshold
        self.base_free = threshold is not None and not compare(op, value, threshold)
        if compare(op, value, bound):
            self.outcome = BREACH
            return
        self.outcome = OK
        if (
            self.base_requests is not None
            and self.mode == QUANTILE
            and self.upper
            and not self.base_free
        ):
            self.base_budget = self._base_budget(self.base_requests, value)

    def _read_judge(self, judge: JudgeRuntime) -> None:
        """A judge's verdict as a reading: its e-value against 1/alpha (core/judging.py)."""
        if self.reads == SRM:
            value, bound, samples, verdict = judge.srm_reading()
        else:
            value, bound, samples, verdict = judge.reading()
        self.value, self.bound, self.samples = value, bound, samples
        if verdict is None:
            self.outcome = INSUFFICIENT
        else:
            self.outcome = BREACH if verdict else OK

    def evidence(self) -> Evidence | None:
        """A judge trigger's evidence for its decisions; None for any other trigger."""
        judge = self.judge
        if judge is None:
            return None
        return judge.evidence(srm=self.reads == SRM)

    def _base_budget(self, base: RequestView, value: float) -> int:
        """How many baseline latencies, of any value, may arrive before the bound could
        fall to `value`: after k more samples the q-quantile of n is still at least the
        sample of rank r - m as long as k (1 - q) <= m - 1, where r is its rank now. The
        largest m of the form 4^i whose floor keeps the bound above `value` is chosen."""
        histogram = base.histogram
        assert histogram is not None
        q = self.quantile
        rank = int(q * (base.latencies - 1))
        threshold, factor, op = self.threshold, self.factor, self.op
        best = 0
        m = 1
        while m <= rank:
            low = factor * slot_value(histogram.search(rank - m))
            bound = low if threshold is None or low >= threshold else threshold
            if compare(op, value, bound):
                break  # the bound could fall to the value: m is too many
            best = m
            m *= 4
        # The margin covers the rounding of the float rank arithmetic (int(q * (n - 1))).
        return int((best - 1) / (1.0 - q) * (1.0 - 1e-6)) if best > 1 else 0

    def refresh(self) -> None:
        """Bring a stale reading up to date, for display: decisions never need it. Only
        request triggers go stale, and their reading does not depend on the clock."""
        if self.stale:
            self.dirty = True
            self.read(0.0, None)

    def _read_presence(self, now: float, started_at: float | None) -> None:
        view = self.sample_view
        assert view is not None
        self.dirty = False
        self.samples = view.samples
        observed = started_at is not None and now - started_at >= self.window_seconds
        if self.spec.op == "absent":
            self.value = None
            condition = observed and view.samples == 0
        else:
            kind = self.spec.metric_kind
            if kind == "counter":
                self.value = view.total
                still = view.total == 0
            else:
                assert self.sample_series is not None
                self.value = self.sample_series.last(view.span)
                still = view.changes == 0
            condition = observed and view.samples > 0 and still
        self.bound = None
        self.outcome = BREACH if condition else OK

    # -- state --------------------------------------------------------------------------
    def step(self, now: float) -> str | None:
        """Apply the latest reading at `now`; the new state if it changed, else None.

        The reading and the clocks make the event; TRIGGER_TRANSITIONS gives the state."""
        outcome = self.outcome
        state = self.state
        if outcome == OK and state == INACTIVE:
            return None  # the common case
        if outcome == INSUFFICIENT:
            return None  # no transition, and the clocks (since, ok_since) run on
        if outcome == BREACH:
            self.ok_since = None
            if state == INACTIVE:
                return self._move(now, BREACH_HELD if self.for_ <= 0 else BREACH_SEEN)
            if state == PENDING:
                assert self.since is not None
                if now >= self.since + self.for_:
                    return self._move(now, BREACH_HELD)
            return None
        if state == PENDING:
            return self._move(now, CLEAR_SEEN)
        # firing: the resolve clock starts at the first OK reading
        if self.ok_since is None:
            self.ok_since = now
        if now >= self.ok_since + self.bucket_seconds:
            return self._move(now, CLEAR_HELD)
        return None

    def _move(self, now: float, event: str) -> str:
        """Take `event`'s transition: pending starts the `for` clock, inactive stops both."""
        state = TRIGGER_TRANSITIONS[(self.state, event)]
        self.state = state
        if state == PENDING:
            self.since = now
        elif state == INACTIVE:
            self.since = self.ok_since = None
        return state

    def next_change(self, now: float, started_at: float | None) -> float:
        """The earliest time at which `step` could change the state with no new reading
        (the windows unchanged): the end of `for` under a breach, the end of the resolve
        bucket under an OK reading, a presence trigger's first whole window; else inf."""
        due = math.inf
        if self.presence and started_at is not None:
            observed = started_at + self.window_seconds
            if observed > now:
                due = observed
        state = self.state
        outcome = self.outcome
        if state == PENDING and outcome == BREACH:
            since = self.since
            assert since is not None
            if since + self.for_ < due:
                due = since + self.for_
        elif state == FIRING and outcome == OK:
            ok_since = self.ok_since
            if ok_since is not None and ok_since + self.bucket_seconds < due:
                due = ok_since + self.bucket_seconds
        return due

    def reset(self) -> None:
        self.state, self.since, self.ok_since = INACTIVE, None, None
        self.dirty = True
        if self.judge is not None:
            self.judge.reset()  # a start or retry judges the new attempt alone

    @property
    def blocks(self) -> bool:
        """True while this trigger keeps the rollout from advancing."""
        return self.state != INACTIVE or self.outcome == INSUFFICIENT

    def dump(self) -> list[Any]:
        # The last reading is kept too: decisions made before the next read report it.
        return [
            self.state,
            self.since,
            self.ok_since,
            self.outcome,
            self.value,
            self.bound,
            self.samples,
        ]

    def load(self, data: list[Any]) -> None:
        (
            self.state,
            self.since,
            self.ok_since,
            self.outcome,
            self.value,
            self.bound,
            self.samples,
        ) = data
        self.dirty = True
