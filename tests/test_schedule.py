"""Schedules: cron advance windows (against a brute-force reference) and start_at, alone and
driving the engine in virtual time."""

from __future__ import annotations

import asyncio
import calendar
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from helpers import T0, batch, command, engine, error_trigger, rollout
from rolloutd.app.jobs import wall_clock_jobs
from rolloutd.core.decisions import Decision, encode, to_dict
from rolloutd.core.engine import Engine
from rolloutd.core.events import Event
from rolloutd.core.schedule import SEARCH_HORIZON, CronWindow, parse_cron
from rolloutd.core.spec import EngineSpec, StepSpec

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
ZONES = (UTC, BERLIN, NEW_YORK, ZoneInfo("Asia/Kathmandu"))  # Kathmandu: +05:45


def at(zone: tzinfo, year: int, month: int, day: int, *time: int) -> float:
    """Unix time of a wall-clock time in `zone` (the earlier one in a fold)."""
    hour, minute, second = (*time, 0, 0, 0)[:3]
    return datetime(year, month, day, hour, minute, second, tzinfo=zone).timestamp()


# -- parsing --------------------------------------------------------------------------------

ALL_MINUTES, ALL_HOURS = frozenset(range(60)), frozenset(range(24))
ALL_DAYS, ALL_MONTHS = frozenset(range(1, 32)), frozenset(range(1, 13))

# expression -> (minutes, hours, days, months, weekdays, either_day); None = every value.
VALID: dict[str, tuple[Any, ...]] = {
    "* * * * *": (None, None, None, None, None, False),
    "0,30 9-17/2 1 jan,JUL mon-fri": (
        {0, 30},
        {9, 11, 13, 15, 17},
        {1},
        {1, 7},
        {1, 2, 3, 4, 5},
        True,
    ),
    "*/15 0 * * 7": ({0, 15, 30, 45}, {0}, None, None, {0}, False),
    "0 0 * * 5-7": ({0}, {0}, None, None, {5, 6, 0}, False),
    "0 0 * * sun,0,7": ({0}, {0}, None, None, {0}, False),
    "0 0 * * fri-sun": ({0}, {0}, None, None, {5, 6, 0}, False),
    "0 0 * * sat-0,mon-sun/3": ({0}, {0}, None, None, {6, 0, 1, 4}, False),
    "0 0 */2 * sun": ({0}, {0}, set(range(1, 32, 2)), None, {0}, False),
    "0 0 1-31 * sun": ({0}, {0}, None, None, {0}, True),
    "  5   4  * *  *  ": ({5}, {4}, None, None, None, False),
    "*/100 1-5/2 29 2 *": ({0}, {1, 3, 5}, {29}, {2}, None, False),
    "59 23 31 DEC Sat": ({59}, {23}, {31}, {12}, {6}, True),
    "0-59/20 * * Feb-apr Tue-THU": ({0, 20, 40}, None, None, {2, 3, 4}, {2, 3, 4}, False),
}


@pytest.mark.parametrize(("expression", "expected"), VALID.items(), ids=list(VALID))
def test_valid_expressions(expression: str, expected: tuple[Any, ...]) -> None:
    window = parse_cron(expression, BERLIN)
    full = (ALL_MINUTES, ALL_HOURS, ALL_DAYS, ALL_MONTHS, frozenset(range(7)))
    *sets, either_day = expected
    got = (window.minutes, window.hours, window.days, window.months, window.weekdays)
    for field_values, want, every in zip(got, sets, full, strict=True):
        assert field_values == (every if want is None else frozenset(want))
    assert window.either_day is either_day
    assert window.tz is BERLIN
    assert window.expression == " ".join(expression.split())


INVALID = [
    ("* 25 * * *", "field 2 (hour): 25 out of range 0-23"),
    ("60 * * * *", "field 1 (minute): 60 out of range 0-59"),
    ("* * 0 * *", "field 3 (day-of-month): 0 out of range 1-31"),
    ("* * 32 * *", "field 3 (day-of-month): 32 out of range 1-31"),
    ("* * * 13 *", "field 4 (month): 13 out of range 1-12"),
    ("* * * * 8", "field 5 (day-of-week): 8 out of range 0-7"),
    ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("* * * * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ("@daily", "expected 5 fields"),
    ("*/0 * * * *", "field 1 (minute): step must be at least 1, got 0"),
    ("5/10 * * * *", "field 1 (minute): a step needs * or a range before it (write 5-59/10)"),
    ("* * 5-1 * *", "field 3 (day-of-month): range '5-1' runs backwards"),
    ("* * * * sat-fri", "field 5 (day-of-week): range 'sat-fri' runs backwards"),
    ("* * * * 7-1", "field 5 (day-of-week): range '7-1' runs backwards"),
    ("1,,2 * * * *", "field 1 (minute): expected a number, got nothing"),
    ("-1 * * * *", "field 1 (minute): expected a number, got nothing"),
    ("* 1- * * *", "field 2 (hour): expected a number, got nothing"),
    ("* * * foo *", "field 4 (month): expected a number or a month name (jan-dec), got 'foo'"),
    ("* * * mon *", "field 4 (month): expected a number or a month name (jan-dec), got 'mon'"),
    ("* * * * jan", "field 5 (day-of-week): expected a number or a day name (sun-sat), got 'jan'"),
    ("* jan * * *", "field 2 (hour): expected a number, got 'jan'"),
    ("* * * * */x", "field 5 (day-of-week): expected a number as step, got 'x'"),
    ("* * * * 1/", "field 5 (day-of-week): expected a number as step, got nothing"),
    ("\u00b2 * * * *", "field 1 (minute): expected a number, got '\u00b2'"),
    ("0 0 30 2 *", "field 3 (day-of-month): no day 30 exists in month(s) 2, so the window never"),
    ("0 0 31 apr,jun *", "no day 31 exists in month(s) 4,6"),
]


@pytest.mark.parametrize(("expression", "message"), INVALID, ids=[e for e, _ in INVALID])
def test_invalid_expressions_name_the_field(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_cron(expression)


def test_windows_compare_by_meaning_and_zone() -> None:
    weekdays = parse_cron("* 9-15 * * mon-fri", BERLIN)
    same = parse_cron("* 9-15 * * 1-5", ZoneInfo("Europe/Berlin"))
    assert weekdays == same
    assert hash(weekdays) == hash(same)
    assert weekdays != parse_cron("* 9-15 * * mon-fri", NEW_YORK)
    assert weekdays != parse_cron("* 9-16 * * mon-fri", BERLIN)
    assert rollout(advance_window=weekdays) == rollout(advance_window=same)
    assert rollout(advance_window=weekdays) != rollout()
    assert repr(weekdays) == "CronWindow('* 9-15 * * mon-fri', Europe/Berlin)"
    assert str(weekdays) == "* 9-15 * * mon-fri (Europe/Berlin)"


# -- a brute-force reference ----------------------------------------------------------------
# Expressions are drawn as structures, rendered to text, and matched straight from the
# structure: a second, deliberately naive reading of cron.

Item = tuple[Any, ...]  # ("*", step) | ("range", a, b, step) | ("value", v)
FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
NAMES: tuple[dict[int, str], ...] = (
    {},
    {},
    {},
    dict(enumerate(calendar.month_abbr)),
    dict(enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))),
)


@st.composite
def field_items(draw: st.DrawFn, index: int) -> list[Item]:
    low, high = FIELD_RANGES[index]
    value = st.integers(low, high)
    item = st.one_of(
        st.tuples(st.just("*"), st.sampled_from([1, 1, 2, 3, 5, 7, 15])),
        st.tuples(st.just("range"), value, value, st.sampled_from([1, 1, 2, 3])).map(
            lambda t: ("range", min(t[1], t[2]), max(t[1], t[2]), t[3])
        ),
        st.tuples(st.just("value"), value),
    )
    return draw(st.lists(item, min_size=1, max_size=3))


def render(items: list[Item], index: int, names: bool) -> str:
    def number(v: int) -> str:
        name = NAMES[index].get(v)
        return str(name).upper() if names and name and v % 2 else str(v)

    parts = []
    for item in items:
        if item[0] == "*":
            parts.append("*" if item[1] == 1 else f"*/{item[1]}")
        elif item[0] == "range":
            step = "" if item[3] == 1 else f"/{item[3]}"
            parts.append(f"{number(item[1])}-{number(item[2])}{step}")
        else:
            parts.append(number(item[1]))
    return ",".join(parts)


def field_matches(items: list[Item], index: int, value: int) -> bool:
    low, high = FIELD_RANGES[index]
    for item in items:
        if item[0] == "*":
            candidates = range(low, high + 1, item[1])
        elif item[0] == "range":
            candidates = range(item[1], item[2] + 1, item[3])
        else:
            candidates = range(item[1], item[1] + 1)
        if index == 4:  # 0 and 7 are both Sunday
            if any(c % 7 == value for c in candidates):
                return True
        elif value in candidates:
            return True
    return False


Fields = list[list[Item]]


def reference(fields: Fields, zone: tzinfo) -> Callable[[float], bool]:
    # Vixie cron: a day field whose text starts with * does not count as restricted.
    dom_star, dow_star = (fields[i][0][0] == "*" for i in (2, 4))

    def contains(ts: float) -> bool:
        local = datetime.fromtimestamp(ts, UTC).astimezone(zone)
        weekday = (local.weekday() + 1) % 7
        minute, hour, dom, month, dow = (
            field_matches(fields[i], i, v)
            for i, v in enumerate((local.minute, local.hour, local.day, local.month, weekday))
        )
        day = (dom and dow) if dom_star or dow_star else (dom or dow)
        return minute and hour and month and day

    return contains


@st.composite
def expressions(draw: st.DrawFn, frequent: bool = False) -> tuple[Fields, str]:
    """A structured expression and its text. `frequent` keeps the date fields mostly `*`,
    so that matches are minutes or hours apart, not months."""
    fields = [draw(field_items(i)) for i in range(5)]
    if frequent:
        for i in (2, 3, 4):
            if draw(st.integers(0, 3)):
                fields[i] = [("*", 1)]
    names = draw(st.booleans())
    text = " ".join(render(items, i, names) for i, items in enumerate(fields))
    return fields, text


def dst_changes(zone: tzinfo, years: range) -> list[float]:
    """Every instant in `years` at which the zone's UTC offset changes (hourly scan, then
    bisection to the second)."""
    changes = []
    for year in years:
        ts = datetime(year, 1, 1, tzinfo=UTC).timestamp()
        end = datetime(year + 1, 1, 1, tzinfo=UTC).timestamp()
        while ts < end:
            if _offset(zone, ts) != _offset(zone, ts + 3600):
                low, high = int(ts), int(ts) + 3600
                while high - low > 1:
                    middle = (low + high) // 2
                    low, high = (
                        (middle, high)
                        if _offset(zone, middle) == _offset(zone, low)
                        else (low, middle)
                    )
                changes.append(float(high))
            ts += 3600
    return changes


def _offset(zone: tzinfo, ts: float) -> timedelta | None:
    return datetime.fromtimestamp(ts, zone).utcoffset()


YEARS = range(2020, 2031)
CHANGES = {zone: dst_changes(zone, YEARS) for zone in (BERLIN, NEW_YORK)}
START, END = at(UTC, 2020, 1, 1), at(UTC, 2031, 1, 1)


def test_the_dst_changes_are_where_expected() -> None:
    # Berlin: last Sunday of March and October, 01:00 UTC. New York: second Sunday of
    # March 07:00 UTC, first Sunday of November 06:00 UTC.
    assert len(CHANGES[BERLIN]) == len(CHANGES[NEW_YORK]) == 2 * len(YEARS)
    assert at(UTC, 2025, 3, 30, 1) in CHANGES[BERLIN]
    assert at(UTC, 2025, 10, 26, 1) in CHANGES[BERLIN]
    assert at(UTC, 2025, 3, 9, 7) in CHANGES[NEW_YORK]
    assert at(UTC, 2025, 11, 2, 6) in CHANGES[NEW_YORK]


@st.composite
def moments(draw: st.DrawFn) -> tuple[tzinfo, float]:
    """A zone and a time: anywhere in ten years, or within three hours of a DST change."""
    zone = draw(st.sampled_from(ZONES))
    if zone in CHANGES and draw(st.booleans()):
        change = draw(st.sampled_from(CHANGES[zone]))
        return zone, change + draw(st.integers(-3 * 3600, 3 * 3600)) + draw(_fraction)
    return zone, draw(st.integers(int(START), int(END))) + draw(_fraction)


_fraction = st.sampled_from([0.0, 0.0, 0.25, 0.999999])


def opening_window(text: str, zone: tzinfo) -> CronWindow:
    """`parse_cron`, with generated expressions that never open (day 30 of February)
    rejected: parsing refuses them by design (see INVALID)."""
    try:
        return parse_cron(text, zone)
    except ValueError as err:
        if "never opens" in str(err):
            reject()
        raise


@settings(max_examples=400, deadline=None)
@given(expressions(), moments())
def test_contains_matches_the_reference(expr: tuple[Fields, str], moment: Any) -> None:
    fields, text = expr
    zone, ts = moment
    window = opening_window(text, zone)
    assert window.contains(ts) == reference(fields, zone)(ts)


@settings(max_examples=200, deadline=None)
@given(expressions(frequent=True), moments())
def test_contains_matches_the_reference_through_the_next_hours(
    expr: tuple[Fields, str], moment: Any
) -> None:
    # Minute by minute across the moment's neighbourhood, where DST changes are.
    fields, text = expr
    zone, ts = moment
    window, contains = opening_window(text, zone), reference(fields, zone)
    for minute in range(0, 4 * 60, 7):
        assert window.contains(ts + minute * 60) == contains(ts + minute * 60)


BRUTE_MINUTES = 3 * 24 * 60


def brute_next_opening(contains: Callable[[float], bool], ts: float) -> float | None:
    """`ts` if inside, else the first minute start after it that is (every zone here has
    offsets of whole minutes, so local minute starts are UTC minute starts)."""
    if contains(ts):
        return ts
    first = (int(ts) // 60 + 1) * 60
    for minute in range(BRUTE_MINUTES):
        if contains(first + minute * 60):
            return float(first + minute * 60)
    return None


@settings(max_examples=150, deadline=None)
@given(expressions(frequent=True), moments())
def test_next_opening_is_the_first_matching_minute(expr: tuple[Fields, str], moment: Any) -> None:
    fields, text = expr
    zone, ts = moment
    got = opening_window(text, zone).next_opening(ts)
    expected = brute_next_opening(reference(fields, zone), ts)
    if expected is not None:
        assert got == expected
    else:  # nothing in the brute-force range: the answer lies beyond it, or there is none
        assert got is None or got >= ts + BRUTE_MINUTES * 60


@pytest.mark.parametrize(
    ("expression", "zone", "start", "expected"),
    [
        # A Friday afternoon waits for Monday morning.
        ("* 9-15 * * mon-fri", BERLIN, (2025, 11, 21, 16, 30), (2025, 11, 24, 9, 0)),
        # Inside already: the moment itself.
        ("* 9-15 * * mon-fri", BERLIN, (2025, 11, 21, 15, 59, 30), (2025, 11, 21, 15, 59, 30)),
        # Spring forward in Berlin: 02:30 does not exist on 2025-03-30, so the next day's.
        ("30 2 * * *", BERLIN, (2025, 3, 30, 0, 0), (2025, 3, 31, 2, 30)),
        # The hour after the gap is there.
        ("15 3 * * *", BERLIN, (2025, 3, 30, 1, 59), (2025, 3, 30, 3, 15)),
        # Fall back in New York: 01:30 happens twice; the first is the answer.
        ("30 1 * * *", NEW_YORK, (2025, 11, 2, 0, 0), (2025, 11, 2, 1, 30)),
        # Once a year, almost a year away (2024 is a leap year).
        ("0 0 1 1 *", UTC, (2024, 1, 1, 0, 1), (2025, 1, 1, 0, 0)),
        ("0 12 1 mar *", NEW_YORK, (2024, 3, 1, 12, 1), (2025, 3, 1, 12, 0)),
        # Day of month OR day of week when both are restricted.
        ("0 8 13 * fri", UTC, (2025, 11, 22, 0, 0), (2025, 11, 28, 8, 0)),
        ("0 8 */13 * fri", UTC, (2025, 11, 22, 0, 0), (2026, 2, 27, 8, 0)),
    ],
)
def test_next_opening_examples(
    expression: str, zone: tzinfo, start: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    got = parse_cron(expression, zone).next_opening(at(zone, *start))
    assert got == at(zone, *expected)


def test_next_opening_in_the_second_pass_of_a_fold() -> None:
    # Berlin falls back at 2025-10-26 03:00 CEST -> 02:00 CET. From inside the first pass
    # of 02:xx, after its matching minutes, the next match is in the second pass.
    window = parse_cron("10 2 * * *", BERLIN)
    first_pass = at(UTC, 2025, 10, 26, 0, 10)  # 02:10 CEST
    assert window.contains(first_pass)
    assert window.next_opening(first_pass + 60) == at(UTC, 2025, 10, 26, 1, 10)  # 02:10 CET


def test_next_opening_gives_up_after_the_search_horizon() -> None:
    leap_day = parse_cron("0 0 29 2 *")
    assert leap_day.next_opening(at(UTC, 2025, 3, 1)) is None
    assert leap_day.next_opening(at(UTC, 2027, 3, 1)) == at(UTC, 2028, 2, 29)
    assert SEARCH_HORIZON >= 366 * 86400


# -- the engine -----------------------------------------------------------------------------

FRIDAY_1630 = at(BERLIN, 2025, 11, 21, 16, 30)
MONDAY_0900 = at(BERLIN, 2025, 11, 24, 9, 0)
OFFICE_HOURS = parse_cron("* 9-15 * * mon-fri", BERLIN)


def guarded_rollout(**overrides: Any) -> EngineSpec:
    """Step 1 holds until Friday 16:30 Berlin; a rollback trigger reads an hour of errors."""
    trig = error_trigger(baseline=None, window=3600.0, for_=0.0, min_samples=10, threshold=0.1)
    fields: dict[str, Any] = {
        "steps": (StepSpec(5, FRIDAY_1630 - T0), StepSpec(25, 3600), StepSpec(100)),
        "bake": 600.0,
        "advance_window": OFFICE_HOURS,
    }
    fields.update(overrides)
    return EngineSpec(rollouts=(rollout(trig, **fields),), bucket=1.0)


def traffic(start: float, end: float, error_at: float | None = None) -> list[Event]:
    """20 canary requests every 10 minutes (all failing from `error_at` on)."""
    events = []
    ts = start
    while ts < end:
        errors = 20 if error_at is not None and ts >= error_at else 0
        events.append(batch(ts + 15, "canary", 20, errors))
        ts += 600
    return events


def run(eng: Engine, events: list[Event], until: float | None = None) -> list[Decision]:
    out: list[Decision] = []
    for ev in events:
        out.extend(eng.handle(ev))
    if until is not None:
        out.extend(eng.advance(until))
    return out


def percents(decisions: list[Decision]) -> list[tuple[Any, ...]]:
    return [
        (d["ts"], d["percent"], d["reason"])
        for d in map(to_dict, decisions)
        if d["kind"] == "percent"
    ]


def test_a_hold_ending_after_hours_advances_when_the_window_opens() -> None:
    assert at(BERLIN, 2025, 11, 21, 11, 0) == T0  # a Friday, 11:00 in Berlin
    eng = Engine(guarded_rollout())
    out = run(eng, traffic(T0, MONDAY_0900 + 3 * 3600))
    assert percents(out) == [
        (T0 + 15, 5, "start"),
        (MONDAY_0900, 25, "hold elapsed"),  # the bucket boundary at 09:00:00
        # The next hold ends at 10:00 inside the window; the boundary acts.
        (MONDAY_0900 + 3600, 100, "hold elapsed"),
    ]


def test_only_steps_wait_for_the_window() -> None:
    # A rollback trigger fires on Saturday, when steps would not advance.
    saturday_noon = at(BERLIN, 2025, 11, 22, 12, 0)
    eng = Engine(guarded_rollout())
    out = [to_dict(d) for d in run(eng, traffic(T0, MONDAY_0900, error_at=saturday_noon))]
    assert [(d["ts"], d["percent"], d["reason"]) for d in out if d["kind"] == "percent"] == [
        (T0 + 15, 5, "start"),
        (saturday_noon + 15, 0, "rollback: error-spike"),
    ]
    assert eng.rollout("co").phase == "rolled_back"
    # Commands act at any time: promote on a Sunday, then the bake completes at night.
    eng = Engine(guarded_rollout(bake=3600.0))
    sunday = at(BERLIN, 2025, 11, 23, 22, 0)
    run(eng, traffic(T0, sunday))
    promote = command(sunday, "promote", full=True)
    out = [to_dict(d) for d in run(eng, [promote, *traffic(sunday, sunday + 7200)])]
    assert [(d["ts"], d["kind"], d.get("percent") or d.get("phase")) for d in out] == [
        (sunday, "percent", 100),
        (sunday, "phase", "promoted"),
        (sunday + 3600, "phase", "completed"),
    ]


def test_a_hold_that_ends_inside_the_window_is_not_delayed() -> None:
    eng = Engine(guarded_rollout(steps=(StepSpec(5, 3600), StepSpec(100))))
    out = run(eng, traffic(T0, T0 + 7200))
    assert percents(out) == [(T0 + 15, 5, "start"), (T0 + 15 + 3600, 100, "hold elapsed")]


def test_a_closed_gate_at_the_opening_still_waits_for_the_triggers() -> None:
    # No traffic over the weekend: the trigger is short of data, so at 09:00 the gate is
    # shut; the first batch on Monday (09:30:15) brings data and opens it.
    eng = Engine(guarded_rollout())
    events = traffic(T0, FRIDAY_1630) + traffic(MONDAY_0900 + 1800, MONDAY_0900 + 3600)
    assert percents(run(eng, events)) == [
        (T0 + 15, 5, "start"),
        (MONDAY_0900 + 1815, 25, "hold elapsed"),
    ]


def _twin_check(
    spec: EngineSpec, before: list[Event], after: list[Event], until: float
) -> list[Decision]:
    """Run `before`, snapshot, then run `after` on both the original and a restored engine;
    their decisions must agree byte for byte. Returns them."""
    eng = Engine(spec)
    run(eng, before)
    twin = Engine.restore(spec, eng.snapshot())
    mine = run(eng, after, until)
    theirs = run(twin, after, until)
    assert [encode(d) for d in mine] == [encode(d) for d in theirs]
    assert twin.snapshot() == eng.snapshot()
    return mine


def test_restored_mid_wait_continues_exactly() -> None:
    saturday = at(BERLIN, 2025, 11, 22, 10, 0)
    events = traffic(T0, MONDAY_0900 + 7200)
    before = [e for e in events if e.ts < saturday]
    after = [e for e in events if e.ts >= saturday]
    decisions = _twin_check(guarded_rollout(), before, after, MONDAY_0900 + 7200)
    assert percents(decisions) == [
        (MONDAY_0900, 25, "hold elapsed"),
        (MONDAY_0900 + 3600, 100, "hold elapsed"),
    ]


# -- start_at -------------------------------------------------------------------------------


def steady_pairs(start: float, seconds: int) -> list[Event]:
    """A canary and a control batch each second (at +0.25 s and +0.5 s)."""
    events = []
    for i in range(seconds):
        events += [batch(start + i + 0.25, "canary", 50), batch(start + i + 0.5, "control", 50)]
    return events


def test_start_at_in_the_future_starts_at_that_moment() -> None:
    eng = engine(rollout(error_trigger(), start_at=T0 + 90))
    out = run(eng, steady_pairs(T0, 200))
    assert eng.rollout("co").started_at == T0 + 90
    assert percents(out) == [(T0 + 90, 5, "start"), (T0 + 150, 25, "hold elapsed")]
    assert [(d.ts, d.kind) for d in out[:2]] == [(T0 + 90, "percent"), (T0 + 90, "phase")]


def test_start_at_between_boundaries_starts_at_the_next_event() -> None:
    eng = engine(rollout(error_trigger(), start_at=T0 + 90.3))
    out = run(eng, steady_pairs(T0, 100))
    assert percents(out) == [(T0 + 90.5, 5, "start")]  # the control batch at +90.5


def test_start_at_before_the_first_event_starts_at_the_first_event() -> None:
    eng = engine(rollout(error_trigger(), start_at=T0 - 3600))
    out = run(eng, steady_pairs(T0, 10))
    assert percents(out) == [(T0 + 0.25, 5, "start")]


def test_start_at_without_triggers_starts_through_a_silence() -> None:
    eng = engine(rollout(start_at=T0 + 100), rollout(name="other", flag="other"))
    out = run(eng, [batch(T0, "canary", 1, rollout="other")], T0 + 200)
    assert [(d["ts"], d["rollout"]) for d in map(to_dict, out) if d["kind"] == "percent"] == [
        (T0, "other"),
        (T0 + 60, "other"),
        (T0 + 100, "co"),
        (T0 + 120, "other"),
        (T0 + 160, "co"),
    ]


def test_start_at_with_triggers_starts_through_a_silence() -> None:
    # The realistic case: before the start the canary gets no traffic at all.
    eng = engine(rollout(error_trigger(), start_at=T0 + 100), rollout(name="other", flag="o"))
    out = run(eng, [batch(T0, "canary", 1, rollout="other")], T0 + 200)
    assert (T0 + 100, 5, "start") in percents([d for d in out if d.rollout == "co"])


def test_commands_while_scheduled() -> None:
    # An accepted command replaces the schedule; a refused one leaves it.
    eng = engine(rollout(error_trigger(), start_at=T0 + 100))
    out = run(eng, [*steady_pairs(T0, 5), command(T0 + 10, "pause")])
    assert [d.kind for d in out] == ["refused"]
    out = run(eng, [command(T0 + 20, "start", actor="ann")])
    assert percents(out) == [(T0 + 20, 5, "command: start")]
    assert percents(run(eng, steady_pairs(T0 + 21, 100))) == [(T0 + 80, 25, "hold elapsed")]

    eng = engine(rollout(error_trigger(), start_at=T0 + 100))
    run(eng, [*steady_pairs(T0, 5), command(T0 + 10, "abort")])
    assert eng.rollout("co").phase == "aborted"
    assert not eng.rollout("co").armed
    assert percents(run(eng, steady_pairs(T0 + 11, 200))) == []


def test_a_due_start_comes_before_a_command_at_the_same_point() -> None:
    eng = engine(rollout(error_trigger(), start_at=T0 + 10.5))
    run(eng, steady_pairs(T0, 10))
    out = [to_dict(d) for d in eng.handle(command(T0 + 10.75, "promote"))]
    assert [(d["kind"], d.get("reason")) for d in out] == [
        ("percent", "start"),
        ("phase", "start"),
        ("percent", "command: promote"),
    ]


def test_restored_while_scheduled_starts_exactly_as_the_original() -> None:
    spec = EngineSpec(rollouts=(rollout(error_trigger(), start_at=T0 + 90),))
    events = steady_pairs(T0, 200)
    decisions = _twin_check(spec, events[:100], events[100:], T0 + 300)
    assert percents(decisions) == [
        (T0 + 90, 5, "start"),
        (T0 + 150, 25, "hold elapsed"),
        (T0 + 210, 100, "hold elapsed"),
    ]


def test_a_snapshot_without_the_schedule_key_still_loads() -> None:
    eng = engine(rollout(error_trigger()))
    run(eng, steady_pairs(T0, 3))
    state = eng.rollout("co").dump()
    del state["scheduled"]
    eng.rollout("co").load(state)
    assert not eng.rollout("co").scheduled


def test_the_opening_job_ticks_at_the_next_opening_and_schedules_the_one_after() -> None:
    window = parse_cron("0 9 * * *")  # 09:00-09:01 UTC every day
    spec = EngineSpec(rollouts=(rollout(advance_window=window),))
    clock = [datetime(2026, 3, 2, 12, 0, tzinfo=UTC).timestamp()]
    ticks: list[float] = []

    async def scenario() -> None:
        scheduler = wall_clock_jobs(
            lambda: None, lambda: spec, lambda: clock[0], lambda: ticks.append(clock[0])
        )
        scheduler.start(paused=True)  # its jobs are run by hand here
        try:
            job = scheduler.get_job("open:co")
            assert job is not None
            assert job.trigger.run_date == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
            assert scheduler.get_job("compact") is not None
            clock[0] = datetime(2026, 3, 3, 9, 0, tzinfo=UTC).timestamp()  # at the opening
            job.func()
            assert ticks == [clock[0]]  # one evaluation at the exact moment
            again = scheduler.get_job("open:co")
            assert again is not None
            assert again.trigger.run_date == datetime(2026, 3, 4, 9, 0, tzinfo=UTC)
        finally:
            scheduler.shutdown(wait=False)

    asyncio.run(scenario())
