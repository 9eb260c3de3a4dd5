"""The engine: routes events to windows and rollouts, ticks on bucket boundaries, decides.

Rules:
* A function of (state, event, now) -> (state, decisions): no clock, no I/O. The caller says
  what time it is; replay uses event times, the daemon its wall clock.
* Time only moves forward. `advance(now)` evaluates every bucket boundary up to `now` (a
  boundary that coincides with an event is evaluated before the event).
* Every evaluation point (each bucket boundary, each event, each command) evaluates every
  armed rollout, rollout by rollout in config order; a command is applied to its rollout
  at that rollout's turn, just before its evaluation. The first event also starts the
  rollouts that start immediately, each at its turn. An event older than
  the engine's time goes into its own bucket if that bucket is still in the windows, and is
  counted as late; a command is always applied at the engine's time.
* Only the series some trigger reads are kept: (rollout, cohort) for requests,
  (rollout, cohort, name) for gauges and counters.
* `snapshot()` / `restore()` round-trip everything that decides the future, so a restored
  engine continues exactly where the old one stopped.
* Shortcuts that change no decision (`shortcuts=False` turns them off, for tests that prove
  it): quiet rollouts skip bucket boundaries; a request that cannot move a trigger toward a
  breach does not make it read again (`TriggerRuntime.holds`); and an event evaluates a
  rollout only if one of its triggers must be read or its `due` has come: the earliest time
  its state could move on the clock alone (a hold, bake, `for`, resolve or schedule
  deadline). The earliest `due` of all rollouts is kept, so an event that meets no deadline
  evaluates its own rollout at most: O(1), not O(rollouts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from msgspec.structs import astuple

from rolloutd.core.breaker import BreakerRuntime
from rolloutd.core.decisions import BreakerDecision, Decision, RefusedDecision
from rolloutd.core.events import Command, Counter, Event, Gauge, Request, Requests
from rolloutd.core.machines import OPEN
from rolloutd.core.rollout import RolloutRuntime
from rolloutd.core.spec import EngineSpec, RolloutSpec, TriggerSpec
from rolloutd.core.triggers import INACTIVE, INSUFFICIENT, BreakerView, TriggerRuntime
from rolloutd.core.windows import NO_BUCKET, RequestSeries, SampleSeries

# Event classes as compiled-in constants: `type(event) is _REQUEST` is then a pointer test.
_REQUEST: Final = Request
_REQUESTS: Final = Requests
_GAUGE: Final = Gauge
_COMMAND: Final = Command

# An event's fields are read in one call (a tuple in declaration order), not one generic
# attribute lookup each; the positions come from the classes, and a test pins the order.
_fields: Final = astuple
_TS: Final = Request.__struct_fields__.index("ts")
_ROLLOUT: Final = Request.__struct_fields__.index("rollout")
_COHORT: Final = Request.__struct_fields__.index("cohort")
_SERVICE: Final = Request.__struct_fields__.index("service")
_OK: Final = Request.__struct_fields__.index("ok")
_LATENCY: Final = Request.__struct_fields__.index("latency_ms")
_COUNT: Final = Requests.__struct_fields__.index("count")
_ERRORS: Final = Requests.__struct_fields__.index("errors")
_SLOW: Final = Requests.__struct_fields__.index("slow")
_LATENCIES: Final = Requests.__struct_fields__.index("latency_ms")

# The clock before the first call. A float, not None: compiled, a `float | None` field is a
# boxed float, unboxed at every read and allocated at every write.
_NOT_STARTED: Final = -math.inf

SNAPSHOT_VERSION: Final = 1
# What `handle` answers for an event dated after its `latest`, told apart by identity
# (`decisions is FUTURE`); empty, and never to be added to.
FUTURE: Final[list[Decision]] = []
_STAT_FIELDS: Final = ("events", "late", "too_old", "unrouted", "ignored")
# The stats of events taken but of no use, as the daemon labels them (`reason`).
DROP_REASONS: Final = ("too_old", "unrouted", "ignored")


@dataclass(slots=True)
class EngineStats:
    events: int = 0
    late: int = 0  # older than the engine's time by more than one bucket
    too_old: int = 0  # older than every window: dropped
    unrouted: int = 0  # no configured rollout of that name, or no rollout at all
    ignored: int = 0  # a cohort or metric no trigger reads


# The whole-engine blob: the global part and the rollouts' parts, kept raw. Built at run
# time so the field types are objects, not annotations (the same when compiled).
_Snapshot: Any = msgspec.defstruct(
    "_Snapshot", [("engine", msgspec.Raw), ("rollouts", dict[str, msgspec.Raw])]
)


# Containers an event walks are tuples, built once: a tuple holds its items in the same
# block of memory as its header, where a list points to a second block (one more cache miss
# on a rollout the event picked at random).


class _Feed:
    """A request series and the triggers that must read again when it takes requests."""

    __slots__ = ("base_readers", "cohort", "readers", "series")

    def __init__(self, cohort: str, series: RequestSeries) -> None:
        self.cohort = cohort
        self.series = series
        self.readers: tuple[TriggerRuntime, ...] = ()  # read it as their own cohort
        self.base_readers: tuple[TriggerRuntime, ...] = ()  # read it as their baseline


class _SampleFeed:
    """A gauge or counter series and the triggers that read it (own cohort or baseline)."""

    __slots__ = ("readers", "series")

    def __init__(self, series: SampleSeries) -> None:
        self.series = series
        self.readers: tuple[TriggerRuntime, ...] = ()


class _Route:
    """Everything one rollout's events touch."""

    __slots__ = (
        "changed",
        "counters",
        "due",
        "feeds",
        "gauges",
        "head",
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
        self.feeds: tuple[_Feed, ...] = ()
        self.gauges: dict[tuple[str, str], _SampleFeed] = {}
        self.counters: dict[tuple[str, str], _SampleFeed] = {}

    def feed(self, cohort: str) -> _Feed:
        """The request feed of `cohort`; KeyError if no trigger reads it."""
        found = _feed_of(self.feeds, cohort)
        if found is None:
            raise KeyError(cohort)
        return found


def _spans(triggers: Iterable[TriggerSpec], bucket: float) -> dict[tuple[str, str, str], set[int]]:
    """Window lengths (in buckets) per series key (kind, cohort, name)."""
    spans: dict[tuple[str, str, str], set[int]] = {}
    for trig in triggers:
        if trig.metric_kind == "breaker":
            continue  # reads a breaker's state, not a window
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


def _build_route(spec: RolloutSpec, bucket: float, breakers: dict[str, BreakerRuntime]) -> _Route:
    spans = _spans(spec.triggers, bucket)
    latency = {
        cohort for t in spec.triggers if t.metric.startswith("latency_") for cohort in _cohorts(t)
    }
    route = _Route(RolloutRuntime(spec, []))
    for (kind, cohort, name), lengths in spans.items():
        if kind == "request":
            route.feeds = (*route.feeds, _Feed(cohort, RequestSeries(lengths, cohort in latency)))
        elif kind == "gauge":
            route.gauges[(cohort, name)] = _SampleFeed(SampleSeries(lengths))
        else:
            route.counters[(cohort, name)] = _SampleFeed(SampleSeries(lengths))
    for trig in spec.triggers:
        if trig.metric_kind == "breaker":
            runtime = TriggerRuntime(trig, bucket, bucket)
            runtime.watch_breaker(BreakerView(breakers[trig.metric_name]))
        else:
            runtime = _trigger_runtime(route, trig, bucket)
        route.rollout.triggers.append(runtime)
    return route


def _trigger_runtime(route: _Route, trig: TriggerSpec, bucket: float) -> TriggerRuntime:
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


class Engine:
    """All rollouts of one config, driven by events and the caller's clock."""

    def __init__(self, spec: EngineSpec, *, shortcuts: bool = True) -> None:
        self.spec = spec
        self.shortcuts = shortcuts  # off only to check that they change nothing
        self.bucket = spec.bucket
        self.stats = EngineStats()
        self._now = _NOT_STARTED  # the engine's time
        self._head = 0  # the last bucket boundary evaluated
        self._breakers = {b.name: BreakerRuntime(b) for b in spec.breakers}
        self._by_service: dict[str, list[BreakerRuntime]] = {}
        for breaker in self._breakers.values():
            self._by_service.setdefault(breaker.spec.service, []).append(breaker)
        self._routes: dict[str, _Route] = {
            r.name: _build_route(r, spec.bucket, self._breakers) for r in spec.rollouts
        }
        # breaker name -> the routes with a trigger on it: re-evaluated when it moves
        self._breaker_readers: dict[str, list[_Route]] = {}
        for route in self._routes.values():
            for trig in route.rollout.triggers:
                if trig.spec.metric_kind == "breaker":
                    self._breaker_readers.setdefault(trig.spec.metric_name, []).append(route)
        self._order = list(self._routes.values())
        self._restored: set[str] = set()  # rollouts whose state came from a snapshot
        # No rollout's `due` is earlier than this (it may be earlier than the true minimum,
        # which only costs a pass over the rollouts that recomputes it).
        self._due_min = -math.inf

    # -- introspection ------------------------------------------------------------------
    def rollout(self, name: str) -> RolloutRuntime:
        return self._routes[name].rollout

    @property
    def rollouts(self) -> list[RolloutRuntime]:
        return [route.rollout for route in self._order]

    @property
    def now(self) -> float | None:
        """The engine's time; None before the first call."""
        clock = self._now
        return None if clock == _NOT_STARTED else clock

    def _bucket_of(self, ts: float) -> int:
        return bucket_number(ts, self.bucket)

    # -- time ---------------------------------------------------------------------------
    def begin(self, now: float) -> list[Decision]:
        """Set the clock and start the rollouts that start immediately."""
        out: list[Decision] = []
        if self._now != _NOT_STARTED:
            return out
        self._start_clock(now)
        for route in self._order:
            if route.rollout.spec.start == "immediately":
                route.rollout.start(out, now, "start")
                route.changed = True
        return out

    def _start_clock(self, now: float) -> None:
        self._now = now
        self._head = self._bucket_of(now)
        self._due_min = -math.inf  # the first evaluation point evaluates every rollout

    def start_new(self, now: float) -> list[Decision]:
        """After a restore: catch up to `now`, then start the rollouts the snapshot did not
        know (added to the config since) the way `begin` would have."""
        if self._now == _NOT_STARTED:
            return self.begin(now)
        out = self.advance(now)
        now = self._now
        for route in self._order:
            rollout = route.rollout
            if rollout.spec.name in self._restored or rollout.spec.start != "immediately":
                continue
            rollout.start(out, now, "start")
            self._restored.add(rollout.spec.name)
            route.changed = True
            route.due = self._due_min = -math.inf
        return out

    def advance(self, now: float) -> list[Decision]:
        """Evaluate every bucket boundary up to `now`, then move the clock to `now`."""
        out: list[Decision] = []
        if self._now == _NOT_STARTED:
            out.extend(self.begin(now))
        elif now > self._now:
            last = self._bucket_of(now)
            if last > self._head:
                self._ticks(out, last)
            self._now = now
        return out

    def _ticks(self, out: list[Decision], last: int) -> None:
        bucket = self.bucket
        routes = [r for r in self._order if r.rollout.armed and not r.quiet]
        for b in range(self._head + 1, last + 1):
            waiting = [x for x in self._breakers.values() if x.state == OPEN]
            if not routes and not waiting:
                break  # a long silence costs nothing once every rollout is quiet
            boundary = b * bucket
            moved = False
            for breaker in waiting:  # the only move time makes on its own: open -> half_open
                moved = self._breaker_moved(out, breaker, breaker.advance(boundary)) or moved
            if moved:
                routes = [r for r in self._order if r.rollout.armed and not r.quiet]
            for route in routes:
                self._slide(route, b)
                self._evaluate(route, out, boundary)
                if self.shortcuts:
                    route.quiet = _is_quiet(route)
            routes = [r for r in routes if r.rollout.armed and not r.quiet]
        self._head = max(self._head, last)
        self._due_min = self._earliest_due()

    def _evaluate(self, route: _Route, out: list[Decision], now: float) -> None:
        """One rollout at one evaluation point (its windows already at `now`'s bucket)."""
        rollout = route.rollout
        route.woke = False
        if not rollout.armed:
            route.due = math.inf
            return
        before = len(out)
        rollout.evaluate(out, now)
        if len(out) > before or any(t.state != INACTIVE for t in rollout.triggers):
            route.changed = True
        route.due = _due(route, now) if self.shortcuts else -math.inf

    def _pass(
        self,
        out: list[Decision],
        now: float,
        starting: bool = False,
        command: Command | None = None,
        target: _Route | None = None,
    ) -> None:
        """An evaluation point at `now`: every armed rollout in config order, each read if
        a trigger woke or its `due` has come. `starting`: the first event, which starts the
        rollouts that start immediately; `command` is applied to `target` at its turn."""
        shortcuts = self.shortcuts
        current = self._bucket_of(now)
        due_min = math.inf
        for route in self._order:
            rollout = route.rollout
            forced = False
            if starting and rollout.spec.start == "immediately":
                rollout.start(out, now, "start")
                route.changed = forced = True
            if route is target and command is not None:
                self._command(out, route, command, now)
                forced = True
            if not rollout.armed:
                route.due = math.inf
                continue
            if forced or route.woke or now >= route.due or not shortcuts:
                head = route.head
                if head == NO_BUCKET or head < current:
                    self._slide(route, current)
                self._evaluate(route, out, now)
            if route.due < due_min:
                due_min = route.due
        self._due_min = due_min

    def _earliest_due(self) -> float:
        due_min = math.inf
        for route in self._order:
            if route.rollout.armed and route.due < due_min:
                due_min = route.due
        return due_min

    @staticmethod
    def _slide(route: _Route, bucket: int) -> None:
        """Bring every series of the route to `bucket`; its triggers must read again."""
        head = route.head
        if head != NO_BUCKET and head >= bucket:
            return
        route.head = bucket
        route.woke = True
        for feed in route.feeds:
            feed.series.advance(bucket)
        for sample_feed in route.gauges.values():
            sample_feed.series.advance(bucket)
        for sample_feed in route.counters.values():
            sample_feed.series.advance(bucket)
        for trig in route.rollout.triggers:
            trig.dirty = True

    # -- events -------------------------------------------------------------------------
    def handle(
        self, event: Event, now: float | None = None, latest: float = math.inf
    ) -> list[Decision]:
        """Take one event at `now` (default: the later of the engine's time and the event's).

        An event dated after `latest` (the daemon: its clock plus the allowed skew) is
        refused: it changes nothing and the answer is `FUTURE` itself."""
        kind = type(event)
        if kind is _COMMAND:
            command = cast(Command, event)
            if command.ts > latest:
                return FUTURE
            return self._take_command(command, now)
        fields = _fields(event)
        ts: float = fields[_TS]
        if ts > latest:
            return FUTURE
        current_now = self._now
        at = _time_of(now, ts, current_now)
        bucket = self.bucket
        current = bucket_number(at, bucket)
        starting = current_now == _NOT_STARTED
        if starting:
            self._start_clock(at)
            out: list[Decision] = []
        elif at > current_now and current > self._head:
            out = self.advance(at)
        else:
            if at > current_now:
                self._now = at  # the same bucket: nothing to evaluate on the way
            out = []
        stats = self.stats
        stats.events += 1
        if ts < at - bucket:
            stats.late += 1
        name: str | None = fields[_ROLLOUT]
        route = self._routes.get(name) if name is not None else None
        if self._by_service:
            service: str | None = fields[_SERVICE]
            if service is not None:
                self._breaker_calls(out, event, service, at)
        if route is None:
            stats.unrouted += 1
            if starting or at >= self._due_min or not self.shortcuts:
                self._pass(out, at, starting)
            return out
        route.quiet = False
        route.changed = True
        head = route.head
        if head == NO_BUCKET or head < current:
            self._slide(route, current)
        # An event from the future (clock skew) counts in the current bucket.
        event_bucket = current if ts >= at else bucket_number(ts, bucket)
        if kind is _REQUEST:
            added = self._request(route, fields, event_bucket)
        elif kind is _REQUESTS:
            added = self._requests(route, fields, event_bucket)
        else:
            added = self._sample(route, cast(Gauge | Counter, event), event_bucket)
        if added is None:
            stats.ignored += 1
        elif not added:
            stats.too_old += 1
        if starting or at >= self._due_min or not self.shortcuts:
            self._pass(out, at, starting)
        elif route.woke:
            # No rollout is due, so no other one can decide anything: this one alone.
            self._evaluate(route, out, at)
            if route.due < self._due_min:
                self._due_min = route.due
        return out

    def _take_command(self, command: Command, now: float | None) -> list[Decision]:
        """A command is applied at the engine's time (or `now`), never earlier."""
        ts = command.ts
        at = _time_of(now, ts, self._now)
        starting = self._now == _NOT_STARTED
        if starting:
            self._start_clock(at)
            out: list[Decision] = []
        else:
            out = self.advance(at)
        stats = self.stats
        stats.events += 1
        if ts < at - self.bucket:
            stats.late += 1
        name = command.rollout
        route = self._routes.get(name) if name is not None else None
        self._pass(out, at, starting, command, route)
        if route is None:  # after the configured rollouts' decisions at this instant
            out.append(
                RefusedDecision(
                    ts=at,
                    kind="refused",
                    rollout=name or "",
                    command=command.command,
                    reason=f"unknown rollout {name!r}",
                    actor=command.actor,
                )
            )
        return out

    def _breaker_calls(self, out: list[Decision], event: Event, service: str, at: float) -> None:
        """Feed the event to the breakers of its service."""
        breakers = self._by_service.get(service)
        if breakers is not None:
            for breaker in breakers:
                calls = breaker.calls_of(event)
                if calls is not None:
                    self._breaker_moved(out, breaker, breaker.record(at, *calls))

    # Adding an event to its series: None if no trigger reads it, False if too old. Each
    # wakes the route when a trigger must be read again. `fields` is the event as a tuple.

    def _request(self, route: _Route, fields: tuple[Any, ...], bucket: int) -> bool | None:
        feed = _feed_of(route.feeds, fields[_COHORT])
        if feed is None:
            return None
        ok: bool = fields[_OK]
        latency: float | None = fields[_LATENCY]
        if not feed.series.add_one(bucket, not ok, latency):
            return False
        errors = 0 if ok else 1
        if latency is None:
            self._wake(route, feed, 1, errors, 0, 1.0, 0.0)
        else:
            self._wake(route, feed, 1, errors, 1, latency, latency)
        return True

    def _requests(self, route: _Route, fields: tuple[Any, ...], bucket: int) -> bool | None:
        feed = _feed_of(route.feeds, fields[_COHORT])
        if feed is None:
            return None
        lats: tuple[float, ...] = fields[_LATENCIES]
        count: int = fields[_COUNT]
        errors: int = fields[_ERRORS]
        if not feed.series.add(bucket, count, errors, fields[_SLOW], lats):
            return False
        low, high = 1.0, 0.0  # low > high: no latencies
        if lats:
            low = high = lats[0]
            for value in lats:
                if value < low:
                    low = value
                elif value > high:
                    high = value
        self._wake(route, feed, count, errors, len(lats), low, high)
        return True

    def _sample(self, route: _Route, event: Gauge | Counter, bucket: int) -> bool | None:
        table = route.gauges if type(event) is _GAUGE else route.counters
        feed = table.get((event.cohort, event.name))
        if feed is None:
            return None
        if not feed.series.add(bucket, event.ts, event.value):
            return False
        for trig in feed.readers:
            trig.dirty = True
        route.woke = True
        return True

    def _wake(
        self,
        route: _Route,
        feed: _Feed,
        count: int,
        errors: int,
        latencies: int,
        low: float,
        high: float,
    ) -> None:
        """Mark the triggers that must read again after requests were added to `feed`."""
        shortcuts = self.shortcuts
        readers = feed.readers
        if readers:
            _wake_readers(route, readers, True, shortcuts, count, errors, latencies, low, high)
        readers = feed.base_readers
        if readers:
            _wake_readers(route, readers, False, shortcuts, count, errors, latencies, low, high)

    # -- breakers -----------------------------------------------------------------------
    @property
    def breakers(self) -> dict[str, BreakerRuntime]:
        return self._breakers

    def breaker_command(self, name: str, command: str, now: float) -> list[Decision]:
        """force_open | disable | metrics_only | reset, at `now`; KeyError if unknown."""
        breaker = self._breakers[name]
        out = self.advance(now)
        now = self._now
        self._breaker_moved(out, breaker, breaker.command(now, command))
        self._pass(out, now)
        return out

    def _breaker_moved(
        self, out: list[Decision], breaker: BreakerRuntime, decisions: list[BreakerDecision]
    ) -> bool:
        """Record the breaker's decisions and wake the rollouts that watch it (the caller's
        evaluation point evaluates them, in config order); whether it moved."""
        if not decisions:
            return False
        out.extend(decisions)
        for route in self._breaker_readers.get(breaker.spec.name, ()):
            for trig in route.rollout.triggers:
                trig.dirty = True
            route.woke = True
            route.quiet = False
            route.changed = True
        self._due_min = -math.inf
        return True

    def _command(self, out: list[Decision], route: _Route, cmd: Command, now: float) -> None:
        rollout = route.rollout
        route.quiet = False
        route.changed = True
        rollout.command(out, now, cmd.command, cmd.actor, cmd.percent, cmd.full)

    # -- snapshot -----------------------------------------------------------------------
    # A snapshot has a small global part (clock, counters) and one part per rollout, so a
    # store can rewrite only the rollouts that changed (`take_changed`). A rollout's part
    # may be older than the global part: its windows then slide on the next evaluation,
    # which is what they would have done anyway.

    def snapshot_global(self) -> bytes:
        stats = [getattr(self.stats, f) for f in _STAT_FIELDS]
        breakers = {name: b.dump() for name, b in self._breakers.items()}
        state = {
            "version": SNAPSHOT_VERSION,
            "now": self.now,
            "head": self._head,
            "stats": stats,
            "breakers": breakers,
        }
        return msgspec.json.encode(state)

    def snapshot_rollout(self, name: str) -> bytes:
        route = self._routes[name]
        return msgspec.json.encode(
            {
                "rollout": route.rollout.dump(),
                "requests": {f.cohort: f.series.dump() for f in route.feeds},
                "gauges": [[c, n, f.series.dump()] for (c, n), f in route.gauges.items()],
                "counters": [[c, n, f.series.dump()] for (c, n), f in route.counters.items()],
            }
        )

    def take_changed(self) -> set[str]:
        """Rollouts whose state may differ from their last snapshot; resets the set."""
        changed: set[str] = set()
        for route in self._order:
            if route.changed:
                route.changed = False
                changed.add(route.rollout.spec.name)
        return changed

    def snapshot(self) -> bytes:
        """Everything, as one blob."""
        parts = {name: msgspec.Raw(self.snapshot_rollout(name)) for name in self._routes}
        return msgspec.json.encode(_Snapshot(msgspec.Raw(self.snapshot_global()), parts))

    @classmethod
    def restore(cls, spec: EngineSpec, snapshot: bytes, *, shortcuts: bool = True) -> Engine:
        """A new engine for `spec` in the state `snapshot` recorded."""
        doc = msgspec.json.decode(snapshot, type=_Snapshot)
        parts = {name: bytes(part) for name, part in doc.rollouts.items()}
        return cls.restore_parts(spec, bytes(doc.engine), parts, shortcuts=shortcuts)

    @classmethod
    def restore_parts(
        cls,
        spec: EngineSpec,
        global_part: bytes | None,
        rollouts: dict[str, bytes],
        *,
        shortcuts: bool = True,
    ) -> Engine:
        """A new engine for `spec` from snapshot parts.

        Rollouts the parts do not know start fresh; parts of rollouts the spec no longer
        defines are ignored.
        """
        engine = cls(spec, shortcuts=shortcuts)
        if global_part is None:
            return engine
        state = msgspec.json.decode(global_part)
        if state.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported snapshot version {state.get('version')!r}")
        engine._now = _NOT_STARTED if state["now"] is None else state["now"]
        engine._head = state["head"]
        for field, value in zip(_STAT_FIELDS, state["stats"], strict=True):
            setattr(engine.stats, field, value)
        for name, dump in state.get("breakers", {}).items():
            if name in engine._breakers:
                engine._breakers[name].load(dump)
        for name, part in rollouts.items():
            route = engine._routes.get(name)
            if route is not None:
                _load_route(route, msgspec.json.decode(part))
                engine._restored.add(name)
        return engine


def _time_of(now: float | None, ts: float, clock: float) -> float:
    """When an event at `ts` is taken: `now` if given, else the later of `ts` and the
    engine's clock (-inf before the first call)."""
    if now is not None:
        return now
    return ts if ts > clock else clock


def _feed_of(feeds: tuple[_Feed, ...], cohort: str) -> _Feed | None:
    for feed in feeds:
        if feed.cohort == cohort:
            return feed
    return None


def _wake_readers(
    route: _Route,
    readers: tuple[TriggerRuntime, ...],
    own: bool,
    shortcuts: bool,
    count: int,
    errors: int,
    latencies: int,
    low: float,
    high: float,
) -> None:
    """`Engine._wake` for the triggers that read the series as their own cohort (`own`) or
    as their baseline: a trigger the requests cannot move toward a breach only goes stale."""
    for trig in readers:
        if shortcuts and not trig.dirty and trig.holds(own, count, errors, latencies, low, high):
            trig.stale = True
        else:
            trig.dirty = True
            route.woke = True


def bucket_number(ts: float, bucket: float) -> int:
    """`int(ts // bucket)`, the bucket holding `ts`; floor(ts) when buckets are 1 s, the
    same number without a float division (fmod) per event."""
    if bucket == 1.0:
        return math.floor(ts)
    return int(ts // bucket)


def _due(route: _Route, now: float) -> float:
    """When the armed rollout must next be evaluated even if no trigger wakes: the earliest
    time its state could move on the clock alone, after an evaluation at `now`.

    A trigger's `next_change`; the end of the hold or bake; once that has passed (the gate
    or the advance window kept the step), the window's reopening: the gate opens only when
    a trigger moves, which is a wake or a `next_change`. A schedule waits for `start_at`.
    """
    rollout = route.rollout
    if rollout.scheduled:
        start_at = rollout.spec.start_at
        return -math.inf if start_at is None else start_at
    due = math.inf
    started_at = rollout.started_at
    for trig in rollout.triggers:
        change = trig.next_change(now, started_at)
        if change < due:
            due = change
    deadline = rollout.deadline()
    if deadline > now:
        return deadline if deadline < due else due
    shut_from, shut_until = rollout.window_shut
    if shut_from <= now < shut_until and shut_until < due:
        return shut_until
    return due


def _is_quiet(route: _Route) -> bool:
    if route.rollout.scheduled:
        return False  # its start is a deadline: every boundary counts
    triggers = route.rollout.triggers
    if not triggers or any(t.outcome != INSUFFICIENT for t in triggers):
        return False
    if any(v.count for f in route.feeds for v in f.series.views):
        return False
    feeds = (*route.gauges.values(), *route.counters.values())
    return not any(v.samples for f in feeds for v in f.series.views)


def _load_route(route: _Route, data: dict[str, Any]) -> None:
    route.rollout.load(data["rollout"])
    for cohort, dump in data["requests"].items():
        feed = _feed_of(route.feeds, cohort)
        if feed is not None:
            feed.series.load(dump)
    for table, rows in ((route.gauges, data["gauges"]), (route.counters, data["counters"])):
        for cohort, name, dump in rows:
            if (cohort, name) in table:
                table[(cohort, name)].series.load(dump)
