"""The per-payload loop of the daemon's intake: typed decoding, then the engine.

Compiled with the engine (see scripts/compile_core.py), so the loop itself costs little. A
payload that is not one valid event of at most `max_bytes` (None, too large, an array, or
something to reject) goes to the caller's `slow` path, in order, which returns how many
events it took.

Events are decoded a batch at a time and then handed to the engine in the same order:
the decoder's code and the engine's code each stay in the instruction cache for a whole
batch, where alternating per event evicted both (about 10% of the time per event).

With a `Guard` (the daemon's), an event dated after `guard.latest` is refused (the engine
checks it with the timestamp it reads anyway, and answers `FUTURE`), and an exception while
the engine handles one event is reported with that event's payload index and the event
skipped: one message must never stop the intake. Without one, such an exception propagates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from rolloutd.core.decisions import Decision
from rolloutd.core.engine import FUTURE, Engine
from rolloutd.core.events import DECODE_ERRORS, Event, decode_single

BATCH: Final = 256  # decoded events held before the engine takes them


class Guard:
    """What the daemon's intake checks beyond decoding, and whom it tells."""

    def __init__(
        self,
        latest: float,
        future: Callable[[Event], None],
        failed: Callable[[int, Exception], None],
    ) -> None:
        self.latest = latest  # events dated later than this are refused
        self.future = future  # told of each refused event
        self.failed = failed  # told (payload index, exception) when handling one raised


def take(
    engine: Engine,
    payloads: Sequence[bytes | None],
    now: float | None,
    max_bytes: int,
    slow: Callable[[bytes | None], int],
    decided: Callable[[Event, list[Decision]], None],
    guard: Guard | None = None,
) -> int:
    """Feed `payloads` to `engine` at `now` (None: at each event's time, as replay does);
    the number of events taken."""
    taken = 0
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
                    taken += _handle(engine, batch, index - BATCH, now, decided, guard)
                continue
        if batch:  # what came before goes first
            taken += _handle(engine, batch, index - len(batch), now, decided, guard)
        taken += slow(payload)
        index += 1
    if batch:
        taken += _handle(engine, batch, index - len(batch), now, decided, guard)
    return taken


def _handle(
    engine: Engine,
    batch: list[Event],
    first: int,
    now: float | None,
    decided: Callable[[Event, list[Decision]], None],
    guard: Guard | None,
) -> int:
    """Hand a batch (the events of payloads `first`, `first + 1`, ...) to the engine in order
    and empty it; the number of events the engine took."""
    if guard is None:
        for event in batch:
            decisions = engine.handle(event, now)
            if decisions:
                decided(event, decisions)
        taken = len(batch)
    else:
        taken = 0
        latest = guard.latest
        index = first
        for event in batch:
            try:
                decisions = engine.handle(event, now, latest)
            except Exception as exc:  # input we could not handle: skip it, never stop
                guard.failed(index, exc)
                index += 1
                continue
            index += 1
            if decisions is FUTURE:
                guard.future(event)
                continue
            taken += 1
            if decisions:
                decided(event, decisions)
    batch.clear()
    return taken
