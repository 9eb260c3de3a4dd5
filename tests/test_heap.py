"""The daemon's and replay's garbage-collector setting."""

from __future__ import annotations

import gc

from rolloutd import heap


def test_tune_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        heap.tune()
        assert gc.get_threshold() == (heap.YOUNG, before[1], before[2])
    finally:
        gc.set_threshold(*before)
