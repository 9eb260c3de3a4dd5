"""The per-payload loop of the daemon's intake: typed decoding, then the engine.

Compiled with the engine (see scripts/compile_core.py), so the loop itself costs little. A
payload that is not one valid event of at most `max_bytes` (None, too large, an array, or
something to reject) goes to the caller's `slow` path, in order, which returns how many
events it took.

Events are decoded a batch at a time and then handed to the engine in the same order:
the decoder's code and the engine's code each stay in the instruction cache for a whole
batch, where alternating per event evicted both (about 10% of the time per event).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from rolloutd.core.decisions import Decision
from rolloutd.core.engine import Engine
from rolloutd.core.events import DECODE_ERRORS, Event, decode_single

BATCH: Final = 256  # decoded events held before the engine takes them


def take(
    engine: Engine,
    payloads: Sequence[bytes | None],
    now: float | None,
    max_bytes: int,
    slow: Callable[[bytes | None], int],
    decided: Callable[[Event, list[Decision]], None],
) -> int:
    """Feed `payloads` to `engine` at `now` (None: at each event's time, as replay does);
    the number of events taken."""
    taken = 0
    batch: list[Event] = []
    for payload in payloads:
        if payload is not None and len(payload) <= max_bytes:
            try:
                batch.append(decode_single(payload))
            except DECODE_ERRORS:
                pass
            else:
                if len(batch) == BATCH:
                    taken += _handle(engine, batch, now, decided)
                continue
        if batch:  # what came before goes first
            taken += _handle(engine, batch, now, decided)
        taken += slow(payload)
    if batch:
        taken += _handle(engine, batch, now, decided)
    return taken


def _handle(
    engine: Engine,
    batch: list[Event],
    now: float | None,
    decided: Callable[[Event, list[Decision]], None],
) -> int:
    """Hand a batch to the engine in order and empty it; its length."""
    for event in batch:
        decisions = engine.handle(event, now)
        if decisions:
            decided(event, decisions)
    taken = len(batch)
    batch.clear()
    return taken
