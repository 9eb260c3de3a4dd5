"""The daemon's and replay's garbage-collector setting."""

from __future__ import annotations

import gc

from rolloutd.app import gc_tuning


def test_tune_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc_tuning.tune()
        assert gc.get_threshold() == (gc_tuning.YOUNG, before[1], before[2])
    finally:
        gc.set_threshold(*before)
