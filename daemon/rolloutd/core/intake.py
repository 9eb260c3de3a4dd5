"""The daemon's one ingest loop: payloads in, the engine's decisions and the rejections out.

Rules:
* Every payload goes through here once. A payload that is one valid event of at most
  `max_bytes` takes the fast path: typed decoding a batch at a time, then the engine in the
  same order (the decoder's code and the engine's code each stay in the instruction cache
  for a whole batch; alternating per event evicted both, about 10% of the time per event).
  Anything else (None, too large, an array of events, something to reject) takes the slow
  path in its place in the order: it is rejected, or decoded whole (`decode_many`) and its
  events handed to the engine like the fast path's.
* Nothing calls back: `take` returns a `Taken` with the decisions (each with its event's
  time, for the latency histogram), the rejections with the payload's index, the failures.
  The caller counts, logs and publishes from it.
* Guarded (`max_future_skew` given, the daemon): an event dated after `now +
  max_future_skew` is rejected (`future_timestamp`; the engine checks it with the timestamp
  it reads anyway and answers `FUTURE`), and an exception while the engine handles one event
  is returned with that event's payload index and the event skipped: one message must never
  stop the intake. Unguarded (replay, `now` None: each event at its own time), such an
  exception propagates.

Compiled with the engine (see scripts/compile_core.py), so the loop itself costs little.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from rolloutd.core.decisions import Decision
from rolloutd.core.engine import FUTURE, Engine
from rolloutd.core.events import DECODE_ERRORS, Event, Rejection, decode_many, decode_single

BATCH: Final = 256  # decoded events held before the engine takes them
FUTURE_TIMESTAMP: Final = "future_timestamp"


class Taken:
    """What one call of `take` produced, in payload order."""

    def __init__(self) -> None:
        self.events = 0  # events the engine took
        self.decided: list[tuple[float, list[Decision]]] = []  # (event ts, its decisions)
        self.rejected: list[tuple[int, Rejection]] = []  # (payload index, why)
        self.failed: list[tuple[int, Exception]] = []  # (payload index, what handling raised)

    def decisions(self) -> list[Decision]:
        """All the decisions, in order."""
        return [d for _, decisions in self.decided for d in decisions]


class _Loop:
    """One call's state: the engine, its guard, and what it produced."""

    def __init__(self, engine: Engine, now: float | None, max_future_skew: float | None) -> None:
        self.engine = engine
        self.now = now
        self.guarded = max_future_skew is not None
        self.skew = 0.0 if max_future_skew is None else max_future_skew
        self.latest = float("inf") if now is None else now + self.skew
        self.out = Taken()

    def handle(self, events: list[Event], first: int, each: int) -> None:
        """Hand `events` to the engine in order: the one at position i came from payload
        `first + i * each` (`each` 1 for a batch of single events, 0 for one payload's)."""
        engine, now, out = self.engine, self.now, self.out
        if not self.guarded:
            for event in events:
                decisions = engine.handle(event, now)
                if decisions:
                    out.decided.append((event.ts, decisions))
            out.events += len(events)
            return
        latest = self.latest
        index = first - each
        for event in events:
            index += each
            try:
                decisions = engine.handle(event, now, latest)
            except Exception as exc:  # input we could not handle: skip it, never stop
                out.failed.append((index, exc))
                continue
            if decisions is FUTURE:
                out.rejected.append((index, self._future(event)))
                continue
            out.events += 1
            if decisions:
                out.decided.append((event.ts, decisions))

    def _future(self, event: Event) -> Rejection:
        detail = (
            f"ts {event.ts!r} is more than {self.skew:g}s after the clock ({self.now!r})"
            " - at `$.ts`"
        )
        return Rejection(FUTURE_TIMESTAMP, detail)

    def slow(self, payload: bytes | None, index: int, max_bytes: int) -> None:
        """A payload that is not one valid event: rejected, or its events taken."""
        if payload is None:
            self.out.rejected.append((index, Rejection("empty", "no payload")))
            return
        if len(payload) > max_bytes:
            self.out.rejected.append((index, Rejection("too_large", f"{len(payload)} bytes")))
            return
        events, rejections = decode_many(payload)
        for rejection in rejections:
            self.out.rejected.append((index, rejection))
        if events:
            self.handle(list(events), index, 0)


def take(
    engine: Engine,
    payloads: Sequence[bytes | None],
    now: float | None,
    max_bytes: int,
    max_future_skew: float | None = None,
) -> Taken:
    """Feed `payloads` to `engine` at `now` (None: at each event's time, as replay does);
    guarded when `max_future_skew` is given (see the module's rules)."""
    loop = _Loop(engine, now, max_future_skew)
    batch: list[Event] = []
    index = 0  # of the payload in hand; the batch holds the events of the ones before it
    for payload in payloads:
        if payload is not None and len(payload) <= max_bytes:
            try:
                batch.append(decode_single(payload))
            except DECODE_ERRORS:
                pass
            else:
                index += 1
                if len(batch) == BATCH:
                    loop.handle(batch, index - BATCH, 1)
                    batch.clear()
                continue
        if batch:  # what came before goes first
            loop.handle(batch, index - len(batch), 1)
            batch.clear()
        loop.slow(payload, index, max_bytes)
        index += 1
    if batch:
        loop.handle(batch, index - len(batch), 1)
    return loop.out
