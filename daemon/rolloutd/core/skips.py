"""The engine's three shortcuts: work skipped where it cannot change a decision.

* Quiet rollouts (`is_quiet`): every window empty and every trigger short of data, so until
  the next event a bucket boundary cannot change anything; the ticker skips them.
* Due and woke (`due`, `Route.woke`): an event evaluates a rollout only if one of its
  triggers must read again (woke) or its `due` has come: the earliest time its state could
  move on the clock alone.
* Holds (`holds`, called by `wake_readers`): a request that cannot move an OK reading toward
  a breach does not make its trigger read again; the reading only goes stale.
Each is exact: `Engine(spec, shortcuts=False)` turns them all off, and the tests compare the
two engines' decisions on generated traffic (tests/test_shortcuts.py, the property tests).

Rules the compiled build imposes (compiled with the engine, see `scripts/compile_core.py`):
plain functions over the typed route and trigger objects, no closures, no generators on the
per-event path (`wake_readers`, `holds`); comparisons on small-int modes, not strings.
"""

from __future__ import annotations

import math

from rolloutd.core.routes import Route
from rolloutd.core.triggers import (
    INACTIVE,
    INSUFFICIENT,
    NEVER,
    OK,
    QUANTILE,
    RATE,
    TriggerRuntime,
)


def wake_readers(
    route: Route,
    readers: tuple[TriggerRuntime, ...],
    own: bool,
    shortcuts: bool,
    count: int,
    errors: int,
    latencies: int,
    low: float,
    high: float,
) -> None:
    """`Engine._wake` for the triggers that read the series as their own cohort (`own`) or
    as their baseline: a trigger the requests cannot move toward a breach only goes stale."""
    for trig in readers:
        if shortcuts and not trig.dirty and holds(trig, own, count, errors, latencies, low, high):
            trig.stale = True
        else:
            trig.dirty = True
            route.woke = True


def due(route: Route, now: float) -> float:
    """When the armed rollout must next be evaluated even if no trigger wakes: the earliest
    time its state could move on the clock alone, after an evaluation at `now`.

    A trigger's `next_change`; the end of the hold or bake; once that has passed (the gate
    or the advance window kept the step), the window's reopening: the gate opens only when
    a trigger moves, which is a wake or a `next_change`. A schedule waits for `start_at`.
    """
    rollout = route.rollout
    if rollout.scheduled:
        start_at = rollout.spec.start_at
        return -math.inf if start_at is None else start_at
    due = math.inf
    started_at = rollout.started_at
    for trig in rollout.triggers:
        change = trig.next_change(now, started_at)
        if change < due:
            due = change
    deadline = rollout.deadline()
    if deadline > now:
        return deadline if deadline < due else due
    shut_from, shut_until = rollout.window_shut
    if shut_from <= now < shut_until and shut_until < due:
        return shut_until
    return due


def is_quiet(route: Route) -> bool:
    if route.rollout.scheduled:
        return False  # its start is a deadline: every boundary counts
    triggers = route.rollout.triggers
    if not triggers or any(t.outcome != INSUFFICIENT for t in triggers):
        return False
    if any(v.count for f in route.feeds for v in f.series.views):
        return False
    feeds = (*route.gauges.values(), *route.counters.values())
    return not any(v.samples for f in feeds for v in f.series.views)


def holds(
    trig: TriggerRuntime,
    own: bool,
    count: int,
    errors: int,
    latencies: int,
    low: float,
    high: float,
) -> bool:
    """Whether adding requests to the own (`own`) or the baseline series keeps this
    OK, inactive reading OK, so the trigger `trig` need not be read again yet.

    `count` requests with `errors` errors and `latencies` latencies between `low` and
    `high` (`low > high` when there are none). Invariants kept between reads: the own value
    has not moved toward the breach since the reading, nor the bound toward the value.
    """
    mode = trig.mode
    if mode == NEVER or trig.outcome != OK or trig.state != INACTIVE:
        return False
    if own:
        down = trig.own_down
    else:
        if trig.base_free:
            return True  # the bound never passes its threshold, the value is within it
        down = trig.base_down
    if mode == RATE:
        # errors/count vs num/den, exactly: the rate of the sum moves the same way.
        if own:
            lhs, rhs = errors * trig.den, trig.num * count
        else:
            lhs, rhs = errors * trig.base_den, trig.base_num * count
        return lhs <= rhs if down else lhs >= rhs
    if mode == QUANTILE:
        if low > high:
            return True  # no latency: the quantile stays
        # A value at or below the quantile's slot value lands in a slot at or below it,
        # and then the quantile's slot cannot rise (and symmetrically).
        ref = trig.value if own else trig.base_value
        assert ref is not None
        if high <= ref if down else low >= ref:
            return True
        if own or trig.base_budget < latencies:
            return False
        trig.base_budget -= latencies
        return True
    # COUNT: every request raises the request rate.
    return count == 0 if down else True
