"""The daemon's time, injected in one piece.

Rules: nothing in the application reads `time` directly. `now()` is the wall clock that
events, decisions and windows are judged by; `monotonic()` measures durations (how long
publishing has failed, a flush's grace), immune to the wall clock's jumps. Tests pass one
`Clock` whose two readings they drive together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    now: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


SYSTEM = Clock()


class FakeClock:
    """A clock that moves only when told: `now()` from `start`, `monotonic()` from 0."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.elapsed = 0.0

    def advance(self, seconds: float) -> None:
        self.elapsed += seconds

    def clock(self) -> Clock:
        return Clock(now=lambda: self.start + self.elapsed, monotonic=lambda: self.elapsed)
