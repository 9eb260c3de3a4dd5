"""Circuit breakers: call outcomes of one service in, breaker states out (resilience4j's model).

Rules:
* States: closed, open, half_open, and the manual forced_open, disabled and metrics_only.
  Every state change is exactly one `BreakerDecision`, and empties the window.
* Closed judges its window as calls are recorded, never on time passing alone: with at least
  `minimum_calls` calls (capped at a count window's size), a failure rate or slow-call rate
  that, as a float, is >= its threshold opens the breaker. A call is slow when its latency
  is strictly above `slow_call_duration`. Below that many calls the rates read None.
* Windows: `count` holds the last N calls; `time` holds the calls of the current second and
  the N-1 before it (per-second buckets that slide with `advance` even when no call arrives).
* Open ignores calls. After `wait_in_open` x `wait_multiplier`^(re-opens in a row), capped at
  `max_wait_in_open`, it turns half_open, which judges the next `permitted_in_half_open`
  calls: a rate at its threshold re-opens (the wait grows), otherwise closed (growth reset).
* Commands work in every state: force_open, disable, metrics_only, reset (closed). One for
  the state already held changes nothing, except that reset still empties the window.
  forced_open and disabled ignore calls; metrics_only keeps a closed window but never moves.
* Batches: n calls with e failures and s slow are n calls in a row, each carrying e/n of a
  failure and s/n of a slow call (exact rationals), and are judged after each of those
  calls, so a batch decides exactly what its calls recorded one by one would, and splitting
  it into parts of the same ratios changes nothing. A batch partly evicted from a count
  window keeps its proportional share; half-open takes only the calls its trial still
  needs (with their proportional share) and the rest go to the state it moves to.
* Time is an argument and never runs backwards: an earlier `now` counts as the latest seen.
  Decisions carry the `now` they were made at.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, Literal

from rolloutd.core.decisions import BreakerDecision
from rolloutd.core.events import Event, Request, Requests
from rolloutd.core.machines import (
    BREAKER_COMMANDS,
    BREAKER_STATES,
    BREAKER_TRANSITIONS,
    CLOSED,
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    METRICS_ONLY,
    OPEN,
    TRIAL_FAILED,
    TRIAL_PASSED,
    WAIT_ELAPSED,
    WINDOW_BREACHED,
)

__all__ = [  # noqa: RUF022 (the breaker's own names, then the states it re-exports)
    "COMMANDS",
    "STATES",
    "BreakerRuntime",
    "BreakerSpec",
    "calls_of",
    "slow_call_ms",
    "CLOSED",
    "DISABLED",
    "FORCED_OPEN",
    "HALF_OPEN",
    "METRICS_ONLY",
    "OPEN",
]
STATES = BREAKER_STATES
# What each command leads to, read off the table (the same from every state).
COMMANDS = {command: BREAKER_TRANSITIONS[(CLOSED, command)] for command in BREAKER_COMMANDS}

Rational = int | Fraction
Point = tuple[int, Rational, Rational]  # a window's calls, failures and slow calls
Seen = tuple[int, float | None, float | None]  # what a decision reports: calls and rates
Batch = tuple[int, int, int]  # calls, failures, slow


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    name: str
    service: str  # events whose `service` equals this feed the breaker
    window: Literal["count", "time"] = "count"
    window_size: int = 100  # calls (count) or seconds (time)
    failure_rate: float = 0.5  # open at >= this fraction of failed calls
    slow_call_rate: float = 1.0  # open at >= this fraction of slow calls
    slow_call_duration: float = 60.0  # seconds; a call slower than this is slow
    minimum_calls: int = 100
    wait_in_open: float = 60.0  # seconds
    wait_multiplier: float = 1.0
    max_wait_in_open: float = 600.0
    permitted_in_half_open: int = 10

    def __post_init__(self) -> None:
        checks = {
            "window is count or time": self.window in ("count", "time"),
            "window_size >= 1": self.window_size >= 1,
            "0 < failure_rate <= 1": 0.0 < self.failure_rate <= 1.0,
            "0 < slow_call_rate <= 1": 0.0 < self.slow_call_rate <= 1.0,
            "slow_call_duration >= 0": 0.0 <= self.slow_call_duration < math.inf,
            "minimum_calls >= 1": self.minimum_calls >= 1,
            "wait_in_open > 0": self.wait_in_open > 0.0,
            "wait_multiplier >= 1": 1.0 <= self.wait_multiplier < math.inf,
            "max_wait_in_open >= wait_in_open": self.wait_in_open <= self.max_wait_in_open,
            "max_wait_in_open finite": self.max_wait_in_open < math.inf,
            "permitted_in_half_open >= 1": self.permitted_in_half_open >= 1,
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"breaker {self.name!r} needs " + ", ".join(failed))

    @property
    def judged_from(self) -> int:
        """Calls the closed window needs before its rates count."""
        if self.window == "count":
            return min(self.minimum_calls, self.window_size)
        return self.minimum_calls

    def wait(self, opens: int) -> float:
        """How long the `opens`-th open in a row lasts."""
        try:
            grown = self.wait_in_open * self.wait_multiplier ** (opens - 1)
        except OverflowError:
            return self.max_wait_in_open
        return min(grown, self.max_wait_in_open)


def slow_call_ms(slow_call_duration: float) -> float:
    """The slow-call bound in milliseconds, as written: 0.2 s is exactly 200 ms."""
    return float(Decimal(repr(slow_call_duration)) * 1000)


def calls_of(event: Event, slow_call_duration: float) -> tuple[int, int, int] | None:
    """(calls, failures, slow) of a request or batch naming a service; None for the rest.

    A batch's slow calls are its `slow`, or the sampled latencies above the bound if more
    (samples are some of the calls, so they only ever prove a lower bound)."""
    if event.service is None:
        return None
    return _outcomes(event, slow_call_ms(slow_call_duration))


def _outcomes(event: Event, bound: float) -> tuple[int, int, int] | None:
    if isinstance(event, Request):
        slow = event.latency_ms is not None and event.latency_ms > bound
        return 1, int(not event.ok), int(slow)
    if isinstance(event, Requests):
        sampled = sum(1 for latency in event.latency_ms if latency > bound)
        return event.count, event.errors, min(event.count, max(event.slow, sampled))
    return None


def _share(part: int, whole: int) -> Rational:
    """part / whole, as an int when it is whole."""
    quotient, rest = divmod(part, whole)
    return quotient if rest == 0 else Fraction(part, whole)


def _part(kept: int, batch: Batch) -> Point:
    """`kept` calls of a batch, with their proportional share of failures and slow calls."""
    n, e, s = batch
    return kept, _share(e * kept, n), _share(s * kept, n)


def _rate(amount: Rational, calls: int) -> float:
    return float(amount / calls)


def _rates(point: Point) -> Seen:
    calls, failures, slow = point
    return calls, _rate(failures, calls), _rate(slow, calls)


def _plus(point: Point, more: Point, times: int = 1) -> Point:
    """`point` plus `times` x `more`, element-wise."""
    return (
        point[0] + more[0] * times,
        point[1] + more[1] * times,
        point[2] + more[2] * times,
    )


def _to_json(value: Rational) -> int | list[int]:
    return value if isinstance(value, int) else [value.numerator, value.denominator]


def _from_json(value: int | list[int]) -> Rational:
    return value if isinstance(value, int) else Fraction(*value)


@dataclass(frozen=True, slots=True)
class _Piece:
    """The window after call k (k_lo <= k <= k_hi) of a batch: `start` after call `base`,
    plus `step` per call."""

    k_lo: int
    k_hi: int
    base: int
    start: Point
    step: Point

    def at(self, k: int) -> Point:
        return _plus(self.start, self.step, k - self.base)


def _first_breach(
    pieces: Iterator[_Piece], why: Callable[[Point], str]
) -> tuple[int, Point] | None:
    """The first call of a batch after which the window breaches (`why` is not ""), if any.

    Along a piece each rate is a ratio of linear functions of k, hence monotone. A falling
    rate below its threshold at the piece's start stays below, so once the start is clear
    the breach is monotone along the piece and a bisection finds its first call."""
    for piece in pieces:
        if piece.k_lo > piece.k_hi:
            continue
        if why(piece.at(piece.k_lo)):
            return piece.k_lo, piece.at(piece.k_lo)
        if not why(piece.at(piece.k_hi)):
            continue
        clear, breach = piece.k_lo, piece.k_hi
        while breach - clear > 1:
            mid = (clear + breach) // 2
            if why(piece.at(mid)):
                breach = mid
            else:
                clear = mid
        return breach, piece.at(breach)
    return None


class _CountWindow:
    """The last `size` calls, as batch parts [kept, n, e, s] (the last `kept` calls of a
    batch), oldest first; `seen` is their running total, subtracted as calls leave."""

    __slots__ = ("parts", "seen", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: deque[list[int]] = deque()
        self.seen: Point = (0, 0, 0)

    def advance(self, clock: float) -> None:
        pass  # a count window does not age

    def add(self, clock: float, kept: int, batch: Batch) -> None:
        self.parts.append([kept, *batch])
        self.seen = _plus(self.seen, _part(kept, batch))
        excess = self.seen[0] - self.size
        while excess > 0:
            oldest = self.parts[0]
            cut = min(oldest[0], excess)
            self.seen = _plus(self.seen, _part(cut, (oldest[1], oldest[2], oldest[3])), -1)
            if cut == oldest[0]:
                self.parts.popleft()
            else:
                oldest[0] -= cut
            excess -= cut

    def pieces(self, kept: int, batch: Batch, minimum: int) -> Iterator[_Piece]:
        """While the window fills, then one piece per old part the batch pushes out."""
        per_call = _part(1, batch)
        fill = min(kept, self.size - self.seen[0])
        yield _Piece(max(1, minimum - self.seen[0]), fill, 0, self.seen, per_call)
        k, point = fill, _plus(self.seen, per_call, fill)
        for old_kept, n, e, s in self.parts:
            if k >= kept:
                return
            step = _plus(per_call, _part(1, (n, e, s)), -1)  # calls: one in, one out
            end = min(kept, k + old_kept)
            yield _Piece(k + 1, end, k, point, step)
            k, point = end, _plus(point, step, end - k)

    def dump(self) -> dict[str, Any]:
        return {"parts": [list(part) for part in self.parts]}

    def load(self, data: dict[str, Any]) -> None:
        for kept, n, e, s in data["parts"]:
            self.parts.append([kept, n, e, s])
            self.seen = _plus(self.seen, _part(kept, (n, e, s)))


class _TimeWindow:
    """The calls of the current second and the size-1 before it, as per-second buckets
    (empty ones left out), oldest first; `seen` is their running total, subtracted as
    buckets leave."""

    __slots__ = ("buckets", "head", "seen", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.head: int | None = None
        self.buckets: deque[tuple[int, Point]] = deque()
        self.seen: Point = (0, 0, 0)

    def advance(self, clock: float) -> None:
        self.head = math.floor(clock)
        while self.buckets and self.buckets[0][0] <= self.head - self.size:
            self.seen = _plus(self.seen, self.buckets.popleft()[1], -1)

    def add(self, clock: float, kept: int, batch: Batch) -> None:
        self.advance(clock)
        assert self.head is not None
        point = _part(kept, batch)
        self.seen = _plus(self.seen, point)
        if self.buckets and self.buckets[-1][0] == self.head:
            point = _plus(self.buckets.pop()[1], point)
        self.buckets.append((self.head, point))

    def pieces(self, kept: int, batch: Batch, minimum: int) -> Iterator[_Piece]:
        yield _Piece(max(1, minimum - self.seen[0]), kept, 0, self.seen, _part(1, batch))

    def dump(self) -> dict[str, Any]:
        rows = [[b, calls, _to_json(f), _to_json(s)] for b, (calls, f, s) in self.buckets]
        return {"head": self.head, "buckets": rows}

    def load(self, data: dict[str, Any]) -> None:
        self.head = data["head"]
        for second, calls, failures, slow in data["buckets"]:
            point = (calls, _from_json(failures), _from_json(slow))
            self.buckets.append((second, point))
            self.seen = _plus(self.seen, point)


class BreakerRuntime:
    """One breaker: its spec, state, window (or half-open trial) and open deadline."""

    __slots__ = ("_clock", "_opens", "_slow_ms", "_trial", "_until", "_window", "spec", "state")

    def __init__(self, spec: BreakerSpec) -> None:
        self.spec = spec
        self.state = CLOSED
        self._slow_ms = slow_call_ms(spec.slow_call_duration)
        self._clock: float | None = None
        self._opens = 0  # opens in a row, for the growing wait
        self._until = 0.0
        self._trial: Point = (0, 0, 0)
        self._window = self._new_window()

    def _new_window(self) -> _CountWindow | _TimeWindow:
        if self.spec.window == "count":
            return _CountWindow(self.spec.window_size)
        return _TimeWindow(self.spec.window_size)

    def calls_of(self, event: Event) -> Batch | None:
        """(calls, failures, slow) if the event is a request or batch of this breaker's service."""
        if event.service != self.spec.service:
            return None
        return _outcomes(event, self._slow_ms)

    # -- reading ------------------------------------------------------------------------
    def _seen(self) -> Point:
        return self._trial if self.state == HALF_OPEN else self._window.seen

    def _judged(self) -> bool:
        """Enough calls for rates: the trial's size in half_open, else `judged_from`."""
        spec = self.spec
        minimum = spec.permitted_in_half_open if self.state == HALF_OPEN else spec.judged_from
        calls = self._seen()[0]
        return calls > 0 and calls >= minimum

    def calls(self) -> int:
        """Calls in the window (closed, metrics_only) or the trial (half_open)."""
        return self._seen()[0]

    def failure_rate(self) -> float | None:
        """The failure rate, or None while there are fewer calls than the state judges on."""
        calls, failures, _ = self._seen()
        return _rate(failures, calls) if self._judged() else None

    def slow_call_rate(self) -> float | None:
        calls, _, slow = self._seen()
        return _rate(slow, calls) if self._judged() else None

    def _why(self, point: Point) -> str:
        """Which rates of `point` reach their thresholds, or "" if none does."""
        calls, failures, slow = point
        spec = self.spec
        checks = (
            ("failure rate", _rate(failures, calls), spec.failure_rate),
            ("slow call rate", _rate(slow, calls), spec.slow_call_rate),
        )
        return "; ".join(
            f"{name} {r:.6g} >= {bound:.6g}" for name, r, bound in checks if r >= bound
        )

    # -- moving -------------------------------------------------------------------------
    def _tick(self, now: float) -> float:
        clock = now if self._clock is None else max(self._clock, now)
        self._clock = clock
        return clock

    def _now(self) -> float:
        assert self._clock is not None, "every entry point ticks the clock first"
        return self._clock

    def _enter(
        self, out: list[BreakerDecision], now: float, event: str, seen: Seen, why: str
    ) -> None:
        """Take `event`'s transition (BREAKER_TRANSITIONS): one decision, an empty window."""
        state = BREAKER_TRANSITIONS[(self.state, event)]
        calls, failure_rate, slow_call_rate = seen
        name = self.spec.name
        out.append(
            BreakerDecision(
                ts=now,
                kind="breaker",
                breaker=name,
                state=state,
                failure_rate=failure_rate,
                slow_call_rate=slow_call_rate,
                calls=calls,
                reason=why,
            )
        )
        self.state = state
        self._window = self._new_window()
        self._trial = (0, 0, 0)
        if state == OPEN:
            self._until = self._now() + self.spec.wait(self._opens)

    def advance(self, now: float) -> list[BreakerDecision]:
        """Let time pass: an open breaker whose wait elapsed turns half-open; windows slide."""
        clock = self._tick(now)
        out: list[BreakerDecision] = []
        if self.state == OPEN and clock >= self._until:
            self._enter(out, now, WAIT_ELAPSED, (0, None, None), "wait in open elapsed")
        elif self.state in (CLOSED, METRICS_ONLY):
            self._window.advance(clock)
        return out

    def record(self, now: float, calls: int, failures: int, slow: int) -> list[BreakerDecision]:
        """Record `calls` calls made at `now`, `failures` of them failed and `slow` slow."""
        if calls < 0 or not 0 <= failures <= calls or not 0 <= slow <= calls:
            raise ValueError(f"bad call counts: {calls} calls, {failures} failed, {slow} slow")
        out = self.advance(now)
        left = calls
        while left:  # the state after a transition takes the rest of the batch
            left -= self._take(out, now, left, (calls, failures, slow))
        return out

    def _take(self, out: list[BreakerDecision], now: float, kept: int, batch: Batch) -> int:
        """Feed the last `kept` calls of `batch` to the current state; how many it took."""
        if self.state == CLOSED and self._may_breach(kept, batch):
            pieces = self._window.pieces(kept, batch, self.spec.judged_from)
            breach = _first_breach(pieces, self._why)
            if breach is not None:
                taken, point = breach
                self._opens = 1
                self._enter(out, now, WINDOW_BREACHED, _rates(point), self._why(point))
                return taken
        if self.state in (CLOSED, METRICS_ONLY):
            self._window.add(self._now(), kept, batch)
        elif self.state == HALF_OPEN:
            return self._try(out, now, kept, batch)
        return kept  # open, forced_open and disabled ignore calls

    def _may_breach(self, kept: int, batch: Batch) -> bool:
        """A cheap bound first: while the batch goes in, a judged window holds at least
        `judged_from` calls and one more than now (up to a count window's size), and no
        more failures (slow calls) than now plus all of the batch's."""
        _, failures, slow = _plus(self._window.seen, _part(kept, batch))
        more = self._window.seen[0] + 1
        least = min(self.spec.window_size, more) if self.spec.window == "count" else more
        return bool(self._why((max(least, self.spec.judged_from), failures, slow)))

    def _try(self, out: list[BreakerDecision], now: float, kept: int, batch: Batch) -> int:
        """Half-open: the calls the trial still needs; judged once it has them all."""
        permitted = self.spec.permitted_in_half_open
        point = _plus(self._trial, _part(min(kept, permitted - self._trial[0]), batch))
        taken = point[0] - self._trial[0]
        if point[0] < permitted:
            self._trial = point
        elif why := self._why(point):
            self._opens += 1
            self._enter(out, now, TRIAL_FAILED, _rates(point), f"half-open trial failed: {why}")
        else:
            self._opens = 0
            self._enter(out, now, TRIAL_PASSED, _rates(point), "half-open trial passed")
        return taken

    def command(self, now: float, command: str) -> list[BreakerDecision]:
        """force_open, disable, metrics_only or reset (to closed, with an empty window)."""
        if command not in BREAKER_COMMANDS:
            known = ", ".join(BREAKER_COMMANDS)
            raise ValueError(f"unknown breaker command {command!r}; known: {known}")
        out = self.advance(now)
        if BREAKER_TRANSITIONS[(self.state, command)] != self.state:
            self._opens = 0
            seen = (self.calls(), self.failure_rate(), self.slow_call_rate())
            self._enter(out, now, command, seen, f"command: {command}")
        elif command == "reset":
            self._window = self._new_window()
        return out

    # -- snapshot -----------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Plain JSON-able state; `load` into a runtime of the same spec continues identically."""
        return {
            "state": self.state,
            "clock": self._clock,
            "opens": self._opens,
            "until": self._until,
            "trial": [_to_json(value) for value in self._trial],
            "window": self._window.dump(),
        }

    def load(self, data: dict[str, Any]) -> None:
        if data["state"] not in STATES:
            raise ValueError(f"unknown breaker state {data['state']!r}")
        self.state = data["state"]
        self._clock = data["clock"]
        self._opens = data["opens"]
        self._until = data["until"]
        calls, failures, slow = data["trial"]
        self._trial = (calls, _from_json(failures), _from_json(slow))
        self._window = self._new_window()
        self._window.load(data["window"])
