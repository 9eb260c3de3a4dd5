"""The per-payload loop of the daemon's intake: typed decoding, then the engine.

Compiled with the engine (see scripts/compile_core.py), so the loop itself costs little. A
payload that is not one valid event of at most `max_bytes` (None, too large, an array, or
something to reject) goes to the caller's `slow` path, in order, which returns how many
events it took.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rolloutd.core.decisions import Decision
from rolloutd.core.engine import Engine
from rolloutd.core.events import DECODE_ERRORS, Event, decode_single


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
    for payload in payloads:
        if payload is None or len(payload) > max_bytes:
            taken += slow(payload)
            continue
        try:
            event = decode_single(payload)
        except DECODE_ERRORS:
            taken += slow(payload)
            continue
        taken += 1
        decisions = engine.handle(event, now)
        if decisions:
            decided(event, decisions)
    return taken
