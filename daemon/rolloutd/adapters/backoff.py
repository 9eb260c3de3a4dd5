"""Exponential backoff with full jitter, for reconnect loops."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from `first` up to `cap`, each drawn uniformly from [d/2, d]."""

    def __init__(self, first: float = 0.2, cap: float = 10.0, rng: random.Random | None = None):
        self.first = first
        self.cap = cap
        self.rng = rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.first * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 32)
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0
