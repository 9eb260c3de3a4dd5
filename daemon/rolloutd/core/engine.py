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
* Only the series some trigger reads are kept (`routes.py` wires them).
* `snapshot()` / `restore()` round-trip everything that decides the future, so a restored
  engine continues exactly where the old one stopped.
* Shortcuts that change no decision (`shortcuts=False` turns them off, for tests that prove
  it), defined in `skips.py`: quiet rollouts skip bucket boundaries; a request that cannot
  move a trigger toward a breach does not make it read again (`holds`); and an event
  evaluates a rollout only if one of its triggers must be read or its `due` has come. The
  earliest `due` of all rollouts is kept, so an event that meets no deadline evaluates its
  own rollout at most: O(1), not O(rollouts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, cast

import msgspec
from msgspec.structs import astuple

from rolloutd.core.breaker import BreakerRuntime
from rolloutd.core.decisions import BreakerDecision, Decision, RefusedDecision
from rolloutd.core.events import Command, Counter, Event, Gauge, Request, Requests
from rolloutd.core.machines import OPEN
from rolloutd.core.rollout import RolloutRuntime
from rolloutd.core.routes import Feed, Route, build_route, dump_route, feed_of, load_route
from rolloutd.core.skips import due, is_quiet, wake_readers
from rolloutd.core.spec import EngineSpec
from rolloutd.core.triggers import INACTIVE
from rolloutd.core.windows import NO_BUCKET

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
_KEY: Final = Request.__struct_fields__.index("key")
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
        self._routes: dict[str, Route] = {
            r.name: build_route(r, spec.bucket, self._breakers) for r in spec.rollouts
        }
        # breaker name -> the routes with a trigger on it: re-evaluated when it moves
        self._breaker_readers: dict[str, list[Route]] = {}
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
                    route.quiet = is_quiet(route)
            routes = [r for r in routes if r.rollout.armed and not r.quiet]
        self._head = max(self._head, last)
        self._due_min = self._earliest_due()

    def _evaluate(self, route: Route, out: list[Decision], now: float) -> None:
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
        route.due = due(route, now) if self.shortcuts else -math.inf

    def _pass(
        self,
        out: list[Decision],
        now: float,
        starting: bool = False,
        command: Command | None = None,
        target: Route | None = None,
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
                self._slide(route, current)  # what its decisions show is of now
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
    def _slide(route: Route, bucket: int) -> None:
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
        for judged in route.judges:
            judged.judge.flush(bucket)  # the closed buckets' evidence, read at their end
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

    def _request(self, route: Route, fields: tuple[Any, ...], bucket: int) -> bool | None:
        ok: bool = fields[_OK]
        latency: float | None = fields[_LATENCY]
        judged = False
        if route.judges:
            lats = () if latency is None else (latency,)
            judged = _judge(route, fields[_COHORT], 1, 0 if ok else 1, lats, fields[_KEY], bucket)
        feed = feed_of(route.feeds, fields[_COHORT])
        if feed is None:
            return True if judged else None
        if not feed.series.add_one(bucket, not ok, latency):
            return False
        errors = 0 if ok else 1
        if latency is None:
            self._wake(route, feed, 1, errors, 0, 1.0, 0.0)
        else:
            self._wake(route, feed, 1, errors, 1, latency, latency)
        return True

    def _requests(self, route: Route, fields: tuple[Any, ...], bucket: int) -> bool | None:
        lats: tuple[float, ...] = fields[_LATENCIES]
        count: int = fields[_COUNT]
        errors: int = fields[_ERRORS]
        judged = False
        if route.judges:
            judged = _judge(route, fields[_COHORT], count, errors, lats, None, bucket)
        feed = feed_of(route.feeds, fields[_COHORT])
        if feed is None:
            return True if judged else None
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

    def _sample(self, route: Route, event: Gauge | Counter, bucket: int) -> bool | None:
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
        route: Route,
        feed: Feed,
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
            wake_readers(route, readers, True, shortcuts, count, errors, latencies, low, high)
        readers = feed.base_readers
        if readers:
            wake_readers(route, readers, False, shortcuts, count, errors, latencies, low, high)

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

    def _command(self, out: list[Decision], route: Route, cmd: Command, now: float) -> None:
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
        return msgspec.json.encode(dump_route(self._routes[name]))

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
                load_route(route, msgspec.json.decode(part))
                engine._restored.add(name)
        return engine


def _time_of(now: float | None, ts: float, clock: float) -> float:
    """When an event at `ts` is taken: `now` if given, else the later of `ts` and the
    engine's clock (-inf before the first call)."""
    if now is not None:
        return now
    return ts if ts > clock else clock


def _judge(
    route: Route,
    cohort: str,
    count: int,
    errors: int,
    latencies: tuple[float, ...],
    key: str | None,
    bucket: int,
) -> bool:
    """Requests into the open bucket of the route's judges (at the rollout's share now);
    whether one took them. The tests see them when the bucket closes (`_slide`)."""
    took = False
    rho = route.rollout.percent / 100.0
    at = route.head  # slid to the engine's bucket before any event is taken
    for feed in route.judges:
        judge = feed.judge
        arm = judge.arm(cohort)
        if arm >= 0:
            judge.take(arm, count, errors, latencies, rho, key, bucket, at)
            took = True
    return took


def bucket_number(ts: float, bucket: float) -> int:
    """`int(ts // bucket)`, the bucket holding `ts`; floor(ts) when buckets are 1 s, the
    same number without a float division (fmod) per event."""
    if bucket == 1.0:
        return math.floor(ts)
    return int(ts // bucket)
