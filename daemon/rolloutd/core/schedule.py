"""Advance windows: the minutes in which a rollout may take its next step, as cron.

Rules:
* A pure function of time. The time zone arrives as a tzinfo (the config resolves the IANA
  name at the edge); nothing here reads a clock or a file.
* Standard 5-field cron: minute hour day-of-month month day-of-week. A field is a list
  (`a,b`) of `*`, `n`, `a-b`, `*/n` or `a-b/n`; months may be jan-dec, weekdays sun-sat,
  and 0 and 7 are both Sunday, so a weekday range may end on Sunday (`fri-sun`). Names are
  case-insensitive.
* A moment is inside the window when its minute, as wall-clock time in the zone, matches.
  Wall-clock times skipped by a DST gap never occur; those repeated by a fold match twice.
* Day-of-month and day-of-week: when both are restricted, a day matches when either does
  (Vixie cron's rule, which also counts a field starting with `*`, such as `*/2`, as
  unrestricted); otherwise both must match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

# How far `next_opening` looks ahead: far enough for anything that matches once a year.
SEARCH_HORIZON = 367 * 86400.0

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February as in leap years


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int
    names: dict[str, int]
    star_high: int  # the top of `*`: day-of-week stops at 6, since 7 is Sunday again


_FIELDS = (
    _Field("minute", 0, 59, {}, 59),
    _Field("hour", 0, 23, {}, 23),
    _Field("day-of-month", 1, 31, {}, 31),
    _Field("month", 1, 12, {name: i for i, name in enumerate(_MONTHS, start=1)}, 12),
    _Field("day-of-week", 0, 7, {name: i for i, name in enumerate(_WEEKDAYS)}, 6),
)
_NAMES_HINT = {"month": " or a month name (jan-dec)", "day-of-week": " or a day name (sun-sat)"}


@dataclass(frozen=True, slots=True)
class CronWindow:
    """A parsed cron expression in a time zone. Build it with `parse_cron`.

    Two windows are equal when they match the same minutes in the same zone, whatever the
    spelling (`1-5` and `mon-fri`), so an equivalent rewrite is not a config change.
    """

    expression: str = field(compare=False)
    tz: tzinfo
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]  # day of month, 1-31
    months: frozenset[int]  # 1-12
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    either_day: bool  # both day fields restricted: a day matches when either does

    def __repr__(self) -> str:
        return f"CronWindow({self.expression!r}, {self.tz})"

    def __str__(self) -> str:
        return f"{self.expression} ({self.tz})"

    def contains(self, ts: float) -> bool:
        """Whether the moment `ts` (unix seconds) is inside the window."""
        local = datetime.fromtimestamp(ts, self.tz)
        return (
            local.minute in self.minutes and local.hour in self.hours and self._day_matches(local)
        )

    def next_opening(self, ts: float) -> float | None:
        """The first moment at or after `ts` inside the window: `ts` itself when it is
        inside, else the start of the first matching minute; None if there is none within
        SEARCH_HORIZON.

        Skips whole days and hours that cannot match, so a year's search takes a few hundred
        steps. Assumes at most one UTC offset change per skipped stretch (at most a day).
        """
        if self.contains(ts):
            return ts
        end = ts + SEARCH_HORIZON
        # Zone offsets are whole seconds, so minute starts are whole seconds: from here on
        # the search steps through integers and lands exactly on them. (ceil, not floor: a
        # candidate before `ts` could match where `ts` itself does not.)
        now = math.ceil(ts)
        while now <= end:
            local = datetime.fromtimestamp(now, self.tz)
            skip = self._skip(local)
            if skip == 0:
                return float(now)
            now = self._jump(now, local, skip)
        return None

    # -- helpers ------------------------------------------------------------------------
    def _day_matches(self, local: datetime) -> bool:
        if local.month not in self.months:
            return False
        by_date = local.day in self.days
        by_weekday = local.isoweekday() % 7 in self.weekdays
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)

    def _skip(self, local: datetime) -> int:
        """Wall-clock seconds from `local` to the next moment that may match; 0 if it does."""
        into_minute = local.second
        into_hour = local.minute * 60 + into_minute
        into_day = local.hour * 3600 + into_hour
        if not self._day_matches(local):
            return 86400 - into_day
        if local.hour not in self.hours:
            later = [h for h in self.hours if h > local.hour]
            return (min(later) * 3600 if later else 86400) - into_day
        if local.minute not in self.minutes:
            later = [m for m in self.minutes if m > local.minute]
            return (min(later) * 60 if later else 3600) - into_hour
        return 0

    def _jump(self, now: int, local: datetime, skip: int) -> int:
        """`now` moved `skip` wall-clock seconds on, or to the instant the zone's offset
        changes on the way (the wall clock jumps there, so the search resumes from it)."""
        offset = local.utcoffset()
        target = now + skip
        if datetime.fromtimestamp(target, self.tz).utcoffset() == offset:
            return target
        low, high = now, target  # the offset is `offset` at low and differs at high
        while high - low > 1:
            middle = (low + high) // 2
            if datetime.fromtimestamp(middle, self.tz).utcoffset() == offset:
                low = middle
            else:
                high = middle
        return high


def parse_cron(expression: str, tz: tzinfo = UTC) -> CronWindow:
    """The window `expression` describes in `tz`; ValueError naming the field otherwise
    ("field 2 (hour): 25 out of range 0-23")."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(
            "expected 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)}: {expression!r}"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, index) for index, text in enumerate(parts)
    )
    weekdays = frozenset(day % 7 for day in weekdays)
    either_day = not parts[2].startswith("*") and not parts[4].startswith("*")
    if not either_day and not any(day <= _DAYS_IN_MONTH[m - 1] for m in months for day in days):
        raise ValueError(
            f"field 3 (day-of-month): no day {_listing(days)} exists in month(s) "
            f"{_listing(months)}, so the window never opens"
        )
    return CronWindow(
        expression=" ".join(parts),
        tz=tz,
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=weekdays,
        either_day=either_day,
    )


def _listing(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _parse_field(text: str, index: int) -> frozenset[int]:
    spec = _FIELDS[index]
    where = f"field {index + 1} ({spec.name})"
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            step = _number(step_text, where, " as step")
            if step < 1:
                raise ValueError(f"{where}: step must be at least 1, got {step}")
        if base == "*":
            first, last = spec.low, spec.star_high
        elif "-" in base:
            low_text, _, high_text = base.partition("-")
            first, last = _value(low_text, spec, where), _value(high_text, spec, where)
            if spec.name == "day-of-week" and last == 0 < first:
                last = 7  # "fri-sun": Sunday ends the week as well as starting it
            if first > last:
                raise ValueError(f"{where}: range {base!r} runs backwards")
        elif slash:
            raise ValueError(
                f"{where}: a step needs * or a range before it "
                f"(write {base}-{spec.high}/{step_text}), got {item!r}"
            )
        else:
            first = last = _value(base, spec, where)
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _value(token: str, spec: _Field, where: str) -> int:
    named = spec.names.get(token.lower())
    if named is not None:
        return named
    number = _number(token, where, _NAMES_HINT.get(spec.name, ""))
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{where}: {number} out of range {spec.low}-{spec.high}")
    return number


def _number(token: str, where: str, hint: str = "") -> int:
    # isdigit alone would take "²" and other non-ASCII digits.
    if not (token.isascii() and token.isdigit()):
        shown = repr(token) if token else "nothing"
        raise ValueError(f"{where}: expected a number{hint}, got {shown}")
    return int(token)
