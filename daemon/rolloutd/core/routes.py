"""Route wiring: which series one rollout's events feed, and which triggers read them.

Rules the compiled build imposes (compiled with the engine, see `scripts/compile_core.py`):
* Containers an event walks are tuples, built once at wiring time: a tuple holds its items
  in the same block of memory as its header, where a list points to a second block (one
  more cache miss on a rollout an event picked at random).
* A feed is found by comparing its cohort name (`feed_of`): an event's cohort is a fresh
  string, and comparing it with two or three names costs less than hashing it.
* Every class has `__slots__` and typed fields; nothing is added to an instance later.
Semantics: only the series some trigger reads are kept: (rollout, cohort) for requests,
(rollout, cohort, name) for gauges and counters, each sized to the longest window reading
it. A trigger registers as a reader of its own cohort's feed and of its baseline's.
`dump_route` / `load_route` are one rollout's part of the engine's snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from rolloutd.core.breaker import BreakerRuntime
from rolloutd.core.judging import JudgeRuntime
from rolloutd.core.rollout import RolloutRuntime
from rolloutd.core.spec import RolloutSpec, TriggerSpec
from rolloutd.core.triggers import BreakerView, TriggerRuntime
from rolloutd.core.windows import NO_BUCKET, RequestSeries, SampleSeries


class Feed:
    """A request series and the triggers that must read again when it takes requests."""

    __slots__ = ("base_readers", "cohort", "readers", "series")

    def __init__(self, cohort: str, series: RequestSeries) -> None:
        self.cohort = cohort
        self.series = series
        self.readers: tuple[TriggerRuntime, ...] = ()  # read it as their own cohort
        self.base_readers: tuple[TriggerRuntime, ...] = ()  # read it as their baseline


class SampleFeed:
    """A gauge or counter series and the triggers that read it (own cohort or baseline)."""

    __slots__ = ("readers", "series")

    def __init__(self, series: SampleSeries) -> None:
        self.series = series
        self.readers: tuple[TriggerRuntime, ...] = ()


class JudgeFeed:
    """A judge's tests and the triggers that read them (the judge, its sample-ratio check)."""

    __slots__ = ("judge", "name", "readers")

    def __init__(self, name: str, judge: JudgeRuntime) -> None:
        self.name = name
        self.judge = judge
        self.readers: tuple[TriggerRuntime, ...] = ()


class Route:
    """Everything one rollout's events touch."""

    __slots__ = (
        "changed",
        "counters",
        "due",
        "feeds",
        "gauges",
        "head",
        "judges",
        "quiet",
        "rollout",
        "woke",
    )

    def __init__(self, rollout: RolloutRuntime) -> None:
        self.rollout = rollout
        self.head = NO_BUCKET  # the bucket every series was last slid to
        # Quiet: every window is empty and every trigger short of data, so until the next
        # event a bucket boundary cannot change anything (no state moves, the gate is shut).
        self.quiet = False
        self.changed = False  # its state may differ from its last snapshot
        # An event evaluates the rollout only if a trigger woke (must be read) or `due` has
        # come; -inf means "always", and anything but an event's own evaluation resets it.
        self.woke = False
        self.due = -math.inf
        # Request feeds by cohort, looked up by comparing names: an event's cohort is a fresh
        # string, and comparing it with two or three names costs less than hashing it.
        self.feeds: tuple[Feed, ...] = ()
        self.gauges: dict[tuple[str, str], SampleFeed] = {}
        self.counters: dict[tuple[str, str], SampleFeed] = {}
        self.judges: tuple[JudgeFeed, ...] = ()  # fed every request of the rollout

    def feed(self, cohort: str) -> Feed:
        """The request feed of `cohort`; KeyError if no trigger reads it."""
        found = feed_of(self.feeds, cohort)
        if found is None:
            raise KeyError(cohort)
        return found


def _spans(triggers: Iterable[TriggerSpec], bucket: float) -> dict[tuple[str, str, str], set[int]]:
    """Window lengths (in buckets) per series key (kind, cohort, name)."""
    spans: dict[tuple[str, str, str], set[int]] = {}
    for trig in triggers:
        if trig.metric_kind == "breaker" or trig.judge is not None:
            continue  # reads a breaker's state or a judge's tests, not a window
        span = max(1, round(trig.window / bucket))
        kind = trig.metric_kind
        name = "" if kind == "request" else trig.metric_name
        for cohort in _cohorts(trig):
            spans.setdefault((kind, cohort, name), set()).add(span)
    return spans


def _cohorts(trig: TriggerSpec) -> tuple[str, ...]:
    if trig.baseline is None:
        return (trig.cohort,)
    return (trig.cohort, trig.baseline.cohort)


def build_route(spec: RolloutSpec, bucket: float, breakers: dict[str, BreakerRuntime]) -> Route:
    spans = _spans(spec.triggers, bucket)
    latency = {
        cohort for t in spec.triggers if t.metric.startswith("latency_") for cohort in _cohorts(t)
    }
    route = Route(RolloutRuntime(spec, []))
    for (kind, cohort, name), lengths in spans.items():
        if kind == "request":
            route.feeds = (*route.feeds, Feed(cohort, RequestSeries(lengths, cohort in latency)))
        elif kind == "gauge":
            route.gauges[(cohort, name)] = SampleFeed(SampleSeries(lengths))
        else:
            route.counters[(cohort, name)] = SampleFeed(SampleSeries(lengths))
    for trig in spec.triggers:
        if trig.judge is not None:
            runtime = TriggerRuntime(trig, bucket, bucket)
            _watch_judge(route, runtime, trig)
        elif trig.metric_kind == "breaker":
            runtime = TriggerRuntime(trig, bucket, bucket)
            runtime.watch_breaker(BreakerView(breakers[trig.metric_name]))
        else:
            runtime = _trigger_runtime(route, trig, bucket)
        route.rollout.triggers.append(runtime)
    return route


def _trigger_runtime(route: Route, trig: TriggerSpec, bucket: float) -> TriggerRuntime:
    """A trigger on a window, registered to be read again when its series take samples."""
    span = max(1, round(trig.window / bucket))
    runtime = TriggerRuntime(trig, bucket, span * bucket)
    baseline = trig.baseline
    if trig.metric_kind == "request":
        feed = route.feed(trig.cohort)
        base = route.feed(baseline.cohort) if baseline else None
        runtime.watch_requests(
            feed.series.view(span), base.series.view(span) if base is not None else None
        )
        feed.readers = (*feed.readers, runtime)
        if base is not None:
            base.base_readers = (*base.base_readers, runtime)
        return runtime
    table = route.gauges if trig.metric_kind == "gauge" else route.counters
    own = table[(trig.cohort, trig.metric_name)]
    other = table[(baseline.cohort, trig.metric_name)] if baseline else None
    runtime.watch_samples(
        own.series,
        own.series.view(span),
        other.series if other is not None else None,
        other.series.view(span) if other is not None else None,
    )
    own.readers = (*own.readers, runtime)
    if other is not None:
        other.readers = (*other.readers, runtime)
    return runtime


def feed_of(feeds: tuple[Feed, ...], cohort: str) -> Feed | None:
    for feed in feeds:
        if feed.cohort == cohort:
            return feed
    return None


def _watch_judge(route: Route, runtime: TriggerRuntime, trig: TriggerSpec) -> None:
    """A judge trigger gets its tests; its sample-ratio check (`srm_of`) reads the same."""
    judge = trig.judge
    assert judge is not None
    if judge.srm_of is None:
        feed = JudgeFeed(trig.name, JudgeRuntime(trig))
        route.judges = (*route.judges, feed)
    else:
        feed = next(f for f in route.judges if f.name == judge.srm_of)
    runtime.watch_judge(feed.judge)
    feed.readers = (*feed.readers, runtime)


def load_route(route: Route, data: dict[str, Any]) -> None:
    route.rollout.load(data["rollout"])
    judges = data.get("judges", {})  # absent from a snapshot made before judges
    for judged in route.judges:
        if judged.name in judges:
            judged.judge.load(judges[judged.name])
    for cohort, dump in data["requests"].items():
        feed = feed_of(route.feeds, cohort)
        if feed is not None:
            feed.series.load(dump)
    for table, rows in ((route.gauges, data["gauges"]), (route.counters, data["counters"])):
        for cohort, name, dump in rows:
            if (cohort, name) in table:
                table[(cohort, name)].series.load(dump)


def dump_route(route: Route) -> dict[str, Any]:
    """One rollout's part of the snapshot: its state machine and every series it feeds."""
    return {
        "rollout": route.rollout.dump(),
        "requests": {f.cohort: f.series.dump() for f in route.feeds},
        "gauges": [[c, n, f.series.dump()] for (c, n), f in route.gauges.items()],
        "counters": [[c, n, f.series.dump()] for (c, n), f in route.counters.items()],
        **({"judges": {f.name: f.judge.dump() for f in route.judges}} if route.judges else {}),
    }
