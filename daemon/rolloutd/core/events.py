"""Typed input events and the decoder that turns JSON into them.

Rules:
* Pure: no I/O, no clock reads, no asyncio. Bytes (or str) go in; events or rejections come out.
* The decoders never raise. Bad input becomes a `Rejection(reason, detail)`: `reason` is one of
  `REJECTION_REASONS` (a Prometheus label value), `detail` is short human text and never
  carries the whole payload.
* Fast path: one call to a module-level typed msgspec decoder. Only when that fails does the
  slow path work out why, from msgspec's error and a syntax-only re-parse.
* Validation is a decoding concern (msgspec constraints plus `__post_init__`). Events built in
  Python are trusted for types and ranges; `__post_init__` still normalises `ts` to float,
  resolves `Request.ok` and runs the cross-field checks.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Final, Literal, get_args

import msgspec
from msgspec import Meta
from msgspec.structs import force_setattr

from rolloutd.core.machines import COMMANDS

_MAX = sys.float_info.max
# JSON cannot spell NaN, and msgspec refuses numbers beyond the float range ("Number out of
# range"); the explicit bounds keep infinities out even if a parser ever produced them.
Finite = Annotated[float, Meta(ge=-_MAX, le=_MAX)]

# The documented range of every number an event carries (README, "Events in"). They are
# generous, and they keep every event inside what the compiled engine stores: its request
# counts are i64 sums over a window (2**63 / 2**40 leaves room for 2**23 of the largest
# batches in one window), and a bucket number must fit an i64 too.
MAX_COUNT: Final = 2**40
MAX_LATENCY_MS: Final = 1e9  # about 11.6 days
MAX_VALUE: Final = 2.0**63  # gauges and counters: nanosecond timestamps still fit
MAX_LATENCY_SAMPLES: Final = 2**20  # sampled latencies in one `requests` event
MAX_STATUS: Final = 999
MIN_TS: Final = 0.0  # 1970-01-01T00:00:00Z
END_TS: Final = 253_402_300_800.0  # 10000-01-01T00:00:00Z: the last year allowed is 9999

Timestamp = Annotated[float, Meta(ge=MIN_TS, lt=END_TS)]
Latency = Annotated[float, Meta(ge=0.0, le=MAX_LATENCY_MS)]
Amount = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
GaugeValue = Annotated[float, Meta(ge=-MAX_VALUE, le=MAX_VALUE)]
CounterValue = Annotated[float, Meta(ge=0.0, le=MAX_VALUE)]
Status = Annotated[int, Meta(ge=0, le=MAX_STATUS)]
Latencies = Annotated[tuple[Latency, ...], Meta(max_length=MAX_LATENCY_SAMPLES)]

CommandName = Literal[
    "start", "promote", "pause", "resume", "abort", "retry", "rollback", "set_percent"
]
# The names are machines.COMMANDS; a Literal must spell them out for the decoder's checks.
assert get_args(CommandName) == COMMANDS, "CommandName must list machines.COMMANDS in order"

REJECTION_REASONS: tuple[str, ...] = (
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "not_finite",
    "negative",
    "errors_exceed_count",
    "unknown_type",
    "bad_timestamp",
    "bad_value",
    "out_of_range",
)
_DETAIL_LIMIT = 200


class _Invalid(ValueError):
    """Raised by `__post_init__`; msgspec chains it as the ValidationError's cause."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _unix_seconds(ts: object) -> float:
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            raise _Invalid("bad_timestamp", "timestamp has no UTC offset - at `$.ts`")
        seconds = ts.timestamp()
        if not MIN_TS <= seconds < END_TS:
            text = f"timestamp {ts.isoformat()} is outside years 1970..9999 - at `$.ts`"
            raise _Invalid("out_of_range", text)
        return seconds
    if isinstance(ts, int | float):
        return float(ts)
    raise TypeError(f"ts must be a number or an aware datetime, not {type(ts).__name__}")


def _normalise_ts(event: _EventBase) -> None:
    force_setattr(event, "ts", _unix_seconds(event.ts))


class _EventBase(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    # JSON gives a number or an RFC 3339 string; after __post_init__ it is always a float.
    if TYPE_CHECKING:
        ts: float
    else:
        ts: Timestamp | datetime
    rollout: str | None = None
    cohort: str = "canary"
    service: str | None = None

    def __post_init__(self) -> None:
        # The test is inlined in every __post_init__: it runs for every event decoded.
        if self.ts.__class__ is not float:
            _normalise_ts(self)


class Request(_EventBase, tag="request", frozen=True, kw_only=True, gc=False):
    """One call. JSON gives `ok`, or `status` (ok when < 500); `ok` wins when both are given."""

    if TYPE_CHECKING:
        ok: bool
    else:
        ok: bool | None = None
    latency_ms: Latency | None = None
    status: Status | None = None
    # Who made the call (a user or device id), for a judge's one-error-per-key-per-bucket
    # count (`judge.per_key`); optional, ignored elsewhere.
    key: str | None = None

    def __post_init__(self) -> None:
        if self.ts.__class__ is not float:
            _normalise_ts(self)
        if self.ok is None:
            if self.status is None:
                raise _Invalid("missing_field", "Object missing required field `ok` or `status`")
            force_setattr(self, "ok", self.status < 500)


class Requests(_EventBase, tag="requests", frozen=True, kw_only=True, gc=False):
    """A pre-aggregated batch of calls, with optional sampled latencies."""

    count: Amount
    errors: Amount
    slow: Amount = 0
    latency_ms: Latencies = ()

    def __post_init__(self) -> None:
        if self.ts.__class__ is not float:
            _normalise_ts(self)
        if self.errors > self.count or self.slow > self.count:
            raise _Invalid(
                "errors_exceed_count",
                f"errors ({self.errors}) and slow ({self.slow}) must not exceed "
                f"count ({self.count})",
            )


class Gauge(_EventBase, tag="gauge", frozen=True, kw_only=True, gc=False):
    """A level; the last value wins."""

    name: str
    value: GaugeValue


class Counter(_EventBase, tag="counter", frozen=True, kw_only=True, gc=False):
    """An increment added to a counter."""

    name: str
    value: CounterValue


class Command(_EventBase, tag="command", frozen=True, kw_only=True, gc=False):
    """An operator command for one rollout."""

    rollout: str
    command: CommandName
    percent: Finite | None = None
    full: bool = False
    actor: str | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.ts.__class__ is not float:
            _normalise_ts(self)
        percent = self.percent
        if percent is None:
            if self.command == "set_percent":
                raise _Invalid("bad_value", "set_percent needs `percent` - at `$.percent`")
        elif not 0.0 <= percent <= 100.0:
            raise _Invalid("bad_value", f"percent {percent!r} is outside 0..100 - at `$.percent`")


Event = Request | Requests | Gauge | Counter | Command


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a payload (or one element of an array payload) was skipped."""

    reason: str  # one of REJECTION_REASONS
    detail: str  # short human text, at most ~200 characters


_ONE: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)
_ONE_OR_MANY: msgspec.json.Decoder[Event | list[Event]] = msgspec.json.Decoder(Event | list[Event])
_SYNTAX = msgspec.json.Decoder(msgspec.Raw)
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])
# UnicodeError: invalid UTF-8 in a string (bytes in) or a lone surrogate (str in).
# RecursionError: nesting deeper than the interpreter's recursion limit.
DECODE_ERRORS = (msgspec.DecodeError, UnicodeError, RecursionError)


# The fast path for a payload that holds one valid object: raises one of DECODE_ERRORS for
# anything else (an array, or something to reject), which `decode_many` then sorts out.
decode_single = _ONE.decode


def decode_one(data: bytes | str) -> Event | Rejection:
    """Decode exactly one JSON object (a replay line) into an event, or say why not."""
    try:
        return _ONE.decode(data)
    except DECODE_ERRORS as err:
        return _rejection(*_explain(data, err))


def decode_many(data: bytes | str) -> tuple[list[Event], list[Rejection]]:
    """Decode one object or a JSON array of them; a bad element rejects only itself."""
    try:
        decoded = _ONE_OR_MANY.decode(data)
    except DECODE_ERRORS:
        return _decode_many_slowly(data)
    if isinstance(decoded, list):
        return decoded, []
    return [decoded], []


def _decode_many_slowly(data: bytes | str) -> tuple[list[Event], list[Rejection]]:
    try:
        elements = _ELEMENTS.decode(data)
    except msgspec.ValidationError:
        # Not an array: a single (bad) object, or not an object at all.
        single = decode_one(data)
        return ([], [single]) if isinstance(single, Rejection) else ([single], [])
    except DECODE_ERRORS as err:
        return [], [_rejection("bad_json", str(err))]
    events: list[Event] = []
    rejections: list[Rejection] = []
    for index, element in enumerate(elements):
        try:
            events.append(_ONE.decode(element))
        except DECODE_ERRORS as err:
            reason, detail = _explain(element, err)
            rejections.append(_rejection(reason, _at_index(detail, index)))
    return events, rejections


_AT = " - at `$"  # how msgspec appends the JSON path of an error


def _at_index(detail: str, index: int) -> str:
    """Point a detail's `$...` path into element `index` of the array."""
    head, sep, path = detail.rpartition(_AT)
    if sep:
        return f"{head}{_AT}[{index}]{path}"
    return f"{detail}{_AT}[{index}]`"


def _rejection(reason: str, detail: str) -> Rejection:
    if len(detail) > _DETAIL_LIMIT:
        # Keep both ends: the start says what was wrong, the end says where.
        detail = detail[:150] + "..." + detail[-(_DETAIL_LIMIT - 153) :]
    return Rejection(reason, detail)


def _explain(data: bytes | str | msgspec.Raw, err: Exception) -> tuple[str, str]:
    """Classify a failed decode as (reason, detail). Slow path only."""
    if not isinstance(err, msgspec.ValidationError):
        return "bad_json", str(err) or type(err).__name__
    # The typed decoder stops at the first mismatch; the payload may still be broken later on.
    try:
        _SYNTAX.decode(data)
    except DECODE_ERRORS as syntax_err:
        return "bad_json", str(syntax_err) or type(syntax_err).__name__
    cause = err.__cause__
    if isinstance(cause, _Invalid):
        return cause.reason, str(err)
    return _reason_for(str(err)), str(err)


_WRONG_TYPE = re.compile(r"Expected `[^`]*`, got `[^`]*`")
_NEGATIVE = re.compile(r"Expected `(?:int|float)` >= 0")
_FLOAT_LIMIT = re.compile(r"Expected `float` [<>]= -?1\.7976931348623157e\+308")
# A documented range (README): a bound on a number, or on the length of an array.
_OUT_OF_RANGE = re.compile(r"Expected `(?:(?:int|float)` [<>]=? |array` of length <= )")


def _reason_for(message: str) -> str:
    """Map a msgspec ValidationError message (our types only) to a rejection reason."""
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        text, path = message, ""
    path = path.rstrip("`")
    if not path and text.startswith("Expected `object"):
        return "not_object"
    if text.startswith("Object missing required field"):
        return "missing_field"
    if path == "$.type":
        return "unknown_type"
    if text == "Number out of range" or _FLOAT_LIMIT.match(text):
        return "not_finite"
    if text.startswith("Invalid RFC3339"):
        return "bad_timestamp"
    if _WRONG_TYPE.match(text):
        return "wrong_type"
    if _NEGATIVE.match(text) and path != "$.ts":
        return "negative"
    if _OUT_OF_RANGE.match(text):
        return "out_of_range"
    return "bad_value"
