"""Jobs on the wall clock: store compaction and advance-window openings.

Rules: the ticker already evaluates every bucket boundary (so steps advance at an opening
on their own); the opening job evaluates at the exact moment and says so in the log, then
schedules the window's next opening from the spec as it is then (a reload may change it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from rolloutd.core.spec import EngineSpec

log = logging.getLogger("rolloutd.service")

COMPACT_EVERY = 300.0  # seconds between WAL checkpoints of the state store


def wall_clock_jobs(
    compact: Callable[[], None],
    spec: Callable[[], EngineSpec],
    now: Callable[[], float],
    tick: Callable[[], None],
) -> AsyncIOScheduler:
    """A scheduler (not started) with the compaction job and each window's next opening."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(
        compact,
        IntervalTrigger(seconds=COMPACT_EVERY),
        id="compact",
        coalesce=True,
        max_instances=1,
    )

    def schedule_opening(name: str) -> None:
        window = next(r.advance_window for r in spec().rollouts if r.name == name)
        assert window is not None
        at = now()
        opening = window.next_opening(at if not window.contains(at) else at + 60.0)
        if opening is None:
            return

        def opened() -> None:
            log.info("advance window of %s is open (%s)", name, window.expression)
            tick()
            schedule_opening(name)

        when = datetime.fromtimestamp(opening, tz=UTC)
        scheduler.add_job(
            opened, DateTrigger(run_date=when), id=f"open:{name}", replace_existing=True
        )

    for rollout in spec().rollouts:
        if rollout.advance_window is not None:
            schedule_opening(rollout.name)
    return scheduler
