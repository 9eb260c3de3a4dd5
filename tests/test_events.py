"""Events in: typed decoding, every rejection reason, arrays, and a decoder that never raises."""

from __future__ import annotations

import gc
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolloutd.core.events import (
    REJECTION_REASONS,
    Command,
    Counter,
    Event,
    Gauge,
    Rejection,
    Request,
    Requests,
    _reason_for,
    decode_many,
    decode_one,
)
from rolloutd.core.machines import COMMANDS

T0 = 1763719202.0  # 2025-11-21T10:00:02Z

# (JSON line, expected event)
VALID: list[tuple[str, Event]] = [
    # The four examples of DESIGN.md, verbatim.
    (
        '{"ts": 1763719200.5, "type": "request", "rollout": "checkout-v2", "cohort": "canary",'
        ' "ok": false, "latency_ms": 812}',
        Request(ts=1763719200.5, rollout="checkout-v2", ok=False, latency_ms=812.0),
    ),
    (
        '{"ts": 1763719201, "type": "requests", "rollout": "checkout-v2", "cohort": "control",'
        ' "count": 250, "errors": 1}',
        Requests(ts=1763719201.0, rollout="checkout-v2", cohort="control", count=250, errors=1),
    ),
    (
        '{"ts": "2025-11-21T10:00:02Z", "type": "gauge", "rollout": "orders-split",'
        ' "name": "migration_progress", "value": 0.42}',
        Gauge(ts=T0, rollout="orders-split", name="migration_progress", value=0.42),
    ),
    (
        '{"ts": 1763719203, "type": "command", "rollout": "checkout-v2", "command": "promote",'
        ' "actor": "alice"}',
        Command(ts=1763719203.0, rollout="checkout-v2", command="promote", actor="alice"),
    ),
    # request: status decides ok (< 500), `ok` wins over status, status is kept.
    ('{"ts": 1, "type": "request", "status": 200}', Request(ts=1.0, ok=True, status=200)),
    ('{"ts": 1, "type": "request", "status": 499}', Request(ts=1.0, ok=True, status=499)),
    ('{"ts": 1, "type": "request", "status": 503}', Request(ts=1.0, ok=False, status=503)),
    (
        '{"ts": 1, "type": "request", "ok": true, "status": 503}',
        Request(ts=1.0, ok=True, status=503),
    ),
    (
        '{"ts": 1, "type": "request", "ok": true, "service": "users", "cohort": "blue"}',
        Request(ts=1.0, ok=True, service="users", cohort="blue"),
    ),
    (
        '{"ts": 1, "type": "request", "ok": true, "latency_ms": 0}',
        Request(ts=1.0, ok=True, latency_ms=0.0),
    ),
    # requests: boundaries and sampled latencies.
    ('{"ts": 1, "type": "requests", "count": 0, "errors": 0}', Requests(ts=1.0, count=0, errors=0)),
    (
        '{"ts": 1, "type": "requests", "count": 5, "errors": 5, "slow": 5,'
        ' "latency_ms": [1, 2.5, 0]}',
        Requests(ts=1.0, count=5, errors=5, slow=5, latency_ms=(1.0, 2.5, 0.0)),
    ),
    # gauge may be negative; counter may be zero.
    ('{"ts": 1, "type": "gauge", "name": "g", "value": -3.5}', Gauge(ts=1.0, name="g", value=-3.5)),
    ('{"ts": 1, "type": "counter", "name": "c", "value": 0}', Counter(ts=1.0, name="c", value=0.0)),
    ('{"ts": 1, "type": "counter", "name": "c", "value": 2}', Counter(ts=1.0, name="c", value=2.0)),
    # command options.
    (
        '{"ts": 1, "type": "command", "rollout": "r", "command": "set_percent", "percent": 12.5}',
        Command(ts=1.0, rollout="r", command="set_percent", percent=12.5),
    ),
    (
        '{"ts": 1, "type": "command", "rollout": "r", "command": "set_percent", "percent": 0}',
        Command(ts=1.0, rollout="r", command="set_percent", percent=0.0),
    ),
    (
        '{"ts": 1, "type": "command", "rollout": "r", "command": "promote", "full": true,'
        ' "reason": "looks good"}',
        Command(ts=1.0, rollout="r", command="promote", full=True, reason="looks good"),
    ),
    # unknown fields are ignored, wherever they are and however nested.
    (
        '{"extra": {"a": [1, {"b": null}]}, "type": "gauge", "ts": 1, "name": "g", "value": 1,'
        ' "zzz": 1e999}',
        Gauge(ts=1.0, name="g", value=1.0),
    ),
]


@pytest.mark.parametrize(("line", "expected"), VALID)
def test_valid_events_decode(line: str, expected: Event) -> None:
    assert decode_one(line) == expected
    assert decode_one(line.encode()) == expected
    assert decode_many(line) == ([expected], [])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_decodes(command: str) -> None:
    extra = ', "percent": 50' if command == "set_percent" else ""
    line = f'{{"ts": 1, "type": "command", "rollout": "r", "command": "{command}"{extra}}}'
    event = decode_one(line)
    assert isinstance(event, Command)
    assert event.command == command


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2025-11-21T10:00:02Z", T0),
        ("2025-11-21T10:00:02z", T0),
        ("2025-11-21t10:00:02Z", T0),
        ("2025-11-21 10:00:02Z", T0),
        ("2025-11-21T10:00:02+00:00", T0),
        ("2025-11-21T10:00:02-00:00", T0),
        ("2025-11-21T11:00:02+01:00", T0),
        ("2025-11-21T04:30:02-05:30", T0),
        ("2025-11-21T10:00:02.5Z", T0 + 0.5),
        ("2025-11-21T10:00:02.250+00:00", T0 + 0.25),
        ("2025-11-21T10:00:02.123456Z", T0 + 0.123456),
        ("2025-11-21T10:00:02.123456789Z", T0 + 0.123457),  # rounded to microseconds
        ("1970-01-01T00:00:00Z", 0.0),
    ],
)
def test_rfc3339_timestamps_become_unix_seconds(ts: str, expected: float) -> None:
    event = decode_one(json.dumps({"ts": ts, "type": "gauge", "name": "g", "value": 1}))
    assert isinstance(event, Gauge)
    assert type(event.ts) is float
    assert event.ts == pytest.approx(expected, abs=1e-6)


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),  # noqa: DTZ001 - bounds for aware values below
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=45))]),
    )
)
def test_any_aware_rfc3339_time_round_trips(moment: datetime) -> None:
    event = decode_one(
        json.dumps({"ts": moment.isoformat(), "type": "counter", "name": "c", "value": 1})
    )
    assert isinstance(event, Counter)
    assert event.ts == pytest.approx(moment.timestamp(), abs=1e-6)


def _line(**fields: Any) -> str:
    return json.dumps(fields)


def _gauge(**fields: Any) -> str:
    return _line(**{"ts": 1, "type": "gauge", "name": "g", "value": 1, **fields})


def _requests(**fields: Any) -> str:
    return _line(**{"ts": 1, "type": "requests", "count": 10, "errors": 1, **fields})


def _command(**fields: Any) -> str:
    return _line(**{"ts": 1, "type": "command", "rollout": "r", "command": "pause", **fields})


# (payload, expected reason)
REJECTED: list[tuple[str | bytes, str]] = [
    ("", "bad_json"),
    ("   ", "bad_json"),
    ('{"ts": 1, "type": "gauge"', "bad_json"),  # truncated
    ('{"ts": 1, "type": "gauge", "name": "g", "value": 1} {}', "bad_json"),  # two objects
    ("{'ts': 1}", "bad_json"),
    ('{"ts": NaN, "type": "gauge", "name": "g", "value": 1}', "bad_json"),
    (b"\xff\xfe", "bad_json"),
    (b'{"ts": 1, "type": "gauge", "name": "\xff", "value": 1}', "bad_json"),  # not UTF-8
    ('{"ts": 1, "type": "gauge", "name": "g", "value": [1, 2}', "bad_json"),
    ("[" * 100_000, "bad_json"),
    ("[" * 100_000 + "]" * 100_000, "bad_json"),
    ('{"a":' * 100_000, "bad_json"),
    # Nesting inside an unknown field, deeper than the parser allows: still only a rejection.
    ('{"ts": 1, "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "bad_json"),
    ("5", "not_object"),
    ('"hello"', "not_object"),
    ("null", "not_object"),
    ("true", "not_object"),
    ("[]", "not_object"),
    (f"[{_gauge()}]", "not_object"),  # decode_one takes exactly one object
    ('{"ts": 1, "name": "g", "value": 1}', "missing_field"),  # no type
    ('{"type": "gauge", "name": "g", "value": 1}', "missing_field"),  # no ts
    ('{"ts": 1, "type": "request"}', "missing_field"),  # neither ok nor status
    ('{"ts": 1, "type": "request", "ok": null}', "missing_field"),
    ('{"ts": 1, "type": "requests", "count": 1}', "missing_field"),
    ('{"ts": 1, "type": "gauge", "value": 1}', "missing_field"),
    ('{"ts": 1, "type": "counter", "name": "c"}', "missing_field"),
    ('{"ts": 1, "type": "command", "command": "pause"}', "missing_field"),  # no rollout
    ('{"ts": 1, "type": "command", "rollout": "r"}', "missing_field"),
    (_requests(count="10"), "wrong_type"),
    (_requests(count=10.0), "wrong_type"),
    (_requests(errors=True), "wrong_type"),
    (_requests(latency_ms=5), "wrong_type"),
    (_requests(latency_ms=["5"]), "wrong_type"),
    (_line(ts=1, type="request", ok="yes"), "wrong_type"),
    (_line(ts=1, type="request", status="500"), "wrong_type"),
    (_line(ts=1, type="request", ok=True, latency_ms="12"), "wrong_type"),
    (_gauge(ts=True), "wrong_type"),
    (_gauge(ts=None), "wrong_type"),
    (_gauge(value="1"), "wrong_type"),
    (_gauge(name=7), "wrong_type"),
    (_gauge(cohort=None), "wrong_type"),
    (_gauge(rollout=["a"]), "wrong_type"),
    (_command(rollout=None), "wrong_type"),
    (_command(full="yes"), "wrong_type"),
    (_command(command=3), "wrong_type"),
    (_gauge().replace('"value": 1', '"value": 1e999'), "not_finite"),
    (_gauge().replace('"value": 1', '"value": -1e999'), "not_finite"),
    (_gauge().replace('"ts": 1', '"ts": 1e400'), "not_finite"),
    ('{"ts": 1, "type": "counter", "name": "c", "value": -1e999}', "not_finite"),
    (_requests().replace("}", ', "latency_ms": [1, 1e999]}'), "not_finite"),
    ('{"ts": 1, "type": "request", "ok": true, "latency_ms": 1e309}', "not_finite"),
    (_command(command="set_percent").replace("}", ', "percent": 1e999}'), "not_finite"),
    (_requests(count=-1, errors=0), "negative"),
    (_requests(errors=-1), "negative"),
    (_requests(slow=-1), "negative"),
    (_requests(latency_ms=[1, -0.5]), "negative"),
    (_line(ts=1, type="request", ok=True, latency_ms=-1), "negative"),
    ('{"ts": 1, "type": "counter", "name": "c", "value": -0.5}', "negative"),
    (_requests(count=3, errors=4), "errors_exceed_count"),
    (_requests(count=3, errors=0, slow=4), "errors_exceed_count"),
    (_requests(count=0, errors=1), "errors_exceed_count"),
    (_gauge(type="histogram"), "unknown_type"),
    (_gauge(type="Gauge"), "unknown_type"),
    (_gauge(type=""), "unknown_type"),
    (_gauge(type=5), "unknown_type"),
    (_gauge(type=None), "unknown_type"),
    (_gauge(ts="2025-11-21T10:00:02"), "bad_timestamp"),  # naive
    (_gauge(ts="2025-11-21"), "bad_timestamp"),
    (_gauge(ts="yesterday"), "bad_timestamp"),
    (_gauge(ts=""), "bad_timestamp"),
    (_gauge(ts="1763719202"), "bad_timestamp"),
    (_gauge(ts="2025-13-01T00:00:00Z"), "bad_timestamp"),
    (_gauge(ts="2025-11-21T10:00:02+25:00"), "bad_timestamp"),
    (_command(command="launch"), "bad_value"),
    (_command(command="Promote"), "bad_value"),
    (_command(command="set_percent"), "bad_value"),  # no percent
    (_command(command="set_percent", percent=None), "bad_value"),
    (_command(command="set_percent", percent=100.5), "bad_value"),
    (_command(command="set_percent", percent=-1), "bad_value"),
    # The documented ranges (README "Events in"): inside what the compiled engine stores.
    (_requests(count=100000000000000000000000, errors=0), "out_of_range"),
    (_requests(count=2**40 + 1, errors=0), "out_of_range"),
    (_requests(count=2**41, errors=2**40 + 1), "out_of_range"),
    (_requests(count=2**41, errors=0, slow=2**41), "out_of_range"),
    (_requests(latency_ms=[1, 1e9 + 1]), "out_of_range"),
    (_requests(latency_ms=[1.0] * (2**20 + 1)), "out_of_range"),
    (_line(ts=1, type="request", ok=True, latency_ms=2e9), "out_of_range"),
    (_line(ts=1, type="request", status=1000), "out_of_range"),
    (_gauge(value=1e19), "out_of_range"),
    (_gauge(value=-1e19), "out_of_range"),
    ('{"ts": 1, "type": "counter", "name": "c", "value": 1e300}', "out_of_range"),
    (_gauge(ts=-1), "out_of_range"),
    (_gauge(ts=253402300800), "out_of_range"),  # year 10000
    (_gauge(ts=10**30), "out_of_range"),
    (_gauge(ts="1969-12-31T23:59:59Z"), "out_of_range"),
    (_gauge(ts="9999-12-31T23:00:00-05:00"), "out_of_range"),  # 10000-01-01 in UTC
]


@pytest.mark.parametrize(
    "payload",
    [
        _requests(count=2**40, errors=2**40, slow=2**40, latency_ms=[0, 1e9]),
        _line(ts=1, type="request", status=999, latency_ms=1e9),
        _gauge(value=-(2.0**63)),
        _gauge(ts=0),
        _gauge(ts="9999-12-31T23:59:59.999Z"),
        '{"ts": 1, "type": "counter", "name": "c", "value": 9.2e18}',
    ],
)
def test_the_ends_of_each_range_are_accepted(payload: str) -> None:
    assert not isinstance(decode_one(payload), Rejection)


@pytest.mark.parametrize(("payload", "reason"), REJECTED)
def test_rejections_name_the_reason(payload: str | bytes, reason: str) -> None:
    result = decode_one(payload)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.detail
    assert len(result.detail) <= 200


def test_every_reason_has_a_case_and_nothing_else_is_emitted() -> None:
    assert {reason for _, reason in REJECTED} == set(REJECTION_REASONS)
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS)
    assert all(r.isidentifier() and r.islower() for r in REJECTION_REASONS)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (
            _requests(count=3, errors=4),
            Rejection("errors_exceed_count", "errors (4) and slow (0) must not exceed count (3)"),
        ),
        (
            '{"ts": "2025-11-21T10:00:00", "type": "gauge", "name": "g", "value": 1}',
            Rejection("bad_timestamp", "timestamp has no UTC offset - at `$.ts`"),
        ),
    ],
)
def test_detail_is_readable(payload: str, expected: Rejection) -> None:
    # Only details rolloutd words itself: msgspec's own texts change between its releases.
    assert decode_one(payload) == expected


def test_detail_never_carries_a_large_payload() -> None:
    for payload in (_gauge(type="x" * 10_000), _command(command="y" * 10_000), "{" + "x" * 10_000):
        result = decode_one(payload)
        assert isinstance(result, Rejection)
        assert len(result.detail) <= 200


def test_long_details_keep_the_path() -> None:
    result = decode_one(_gauge(type="x - at `$.name` " * 50))
    assert isinstance(result, Rejection)
    assert result.reason == "unknown_type"
    assert result.detail.startswith("Invalid value 'x - at")
    assert result.detail.endswith(" - at `$.type`")
    events, rejections = decode_many(f"[{_gauge()}, {_gauge(type='y' * 500)}]")
    assert len(events) == 1
    assert rejections[0].detail.endswith(" - at `$[1].type`")


def test_an_infinite_float_would_be_not_finite() -> None:
    # JSON cannot reach this (msgspec refuses 1e999 as out of range), but the bounds that
    # keep infinities out produce this message if a parser ever let one through.
    command = {"ts": 1, "type": "command", "rollout": "r", "command": "set_percent"}
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert({**command, "percent": -math.inf}, Event)
    assert _reason_for(str(caught.value)) == "not_finite"


def test_large_payloads_just_decode() -> None:
    samples = [float(i % 1000) for i in range(200_000)]
    event = decode_one(_requests(count=200_000, errors=0, latency_ms=samples))
    assert isinstance(event, Requests)
    assert len(event.latency_ms) == 200_000


def test_decode_many_accepts_one_object() -> None:
    assert decode_many(_gauge()) == ([Gauge(ts=1.0, name="g", value=1.0)], [])


def test_decode_many_accepts_an_array() -> None:
    lines = [line for line, _ in VALID]
    assert decode_many("[" + ",".join(lines) + "]") == ([event for _, event in VALID], [])
    assert decode_many("[]") == ([], [])


def test_a_bad_element_rejects_only_itself() -> None:
    payload = (
        f"[{_gauge()}, 5, {_requests(count='x')}, {_gauge(type='nope')},"
        f" {_requests(count=1, errors=2)}, {_line(ts=2, type='request', status=500)}, {{}}]"
    )
    events, rejections = decode_many(payload)
    assert events == [Gauge(ts=1.0, name="g", value=1.0), Request(ts=2.0, ok=False, status=500)]
    reasons = ["not_object", "wrong_type", "unknown_type", "errors_exceed_count", "missing_field"]
    assert [r.reason for r in rejections] == reasons
    assert rejections[3] == Rejection(
        "errors_exceed_count", "errors (2) and slow (0) must not exceed count (1) - at `$[4]`"
    )


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("7", "not_object"),
        ('"x"', "not_object"),
        ("[1, 2", "bad_json"),
        (b"\xff", "bad_json"),
        ("[" * 100_000, "bad_json"),
        (_requests(count=-1), "negative"),
    ],
)
def test_decode_many_rejects_a_whole_bad_payload_once(payload: str | bytes, reason: str) -> None:
    events, rejections = decode_many(payload)
    assert events == []
    assert [r.reason for r in rejections] == [reason]


def test_nested_arrays_are_not_events() -> None:
    events, rejections = decode_many(f"[[{_gauge()}]]")
    assert events == []
    assert [r.reason for r in rejections] == ["not_object"]


def test_events_are_immutable_untracked_values() -> None:
    event = decode_one(_requests(latency_ms=[1, 2]))
    assert isinstance(event, Requests)
    with pytest.raises(AttributeError):
        event.count = 5  # type: ignore[misc]
    assert hash(event) == hash(decode_one(_requests(latency_ms=[1, 2])))
    assert not gc.is_tracked(event)


def test_events_built_in_python_get_float_timestamps() -> None:
    assert type(Request(ts=5, ok=True).ts) is float
    aware = datetime(2025, 11, 21, 10, 0, 2, tzinfo=UTC)
    assert Gauge(ts=aware, name="g", value=1).ts == T0  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="UTC offset"):
        Gauge(ts=aware.replace(tzinfo=None), name="g", value=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="exceed"):
        Requests(ts=1, count=1, errors=2)


@pytest.mark.parametrize(("line", "expected"), VALID)
def test_encoded_events_decode_to_themselves(line: str, expected: Event) -> None:
    assert decode_one(msgspec.json.encode(expected)) == expected


# --- fuzzing: the decoders never raise --------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    sorted(
        {"type"}.union(
            *(cls.__struct_fields__ for cls in (Request, Requests, Gauge, Counter, Command))
        )
    )
)
tags = st.sampled_from(["request", "requests", "gauge", "counter", "command", "other"])
timestamps = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(),
    st.datetimes().map(datetime.isoformat),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
)
event_like = st.fixed_dictionaries(
    {"ts": timestamps, "type": tags},
    optional={"rollout": st.text(max_size=5), "command": st.sampled_from([*COMMANDS, "x"])},
).flatmap(
    lambda base: st.dictionaries(field_names, json_values, max_size=6).map(
        lambda extra: {**base, **extra}
    )
)


def _check(result: Event | Rejection) -> None:
    if isinstance(result, Rejection):
        assert result.reason in REJECTION_REASONS
        assert 0 < len(result.detail) <= 200
    else:
        assert type(result.ts) is float


@given(st.binary())
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _check(decode_one(data))
    events, rejections = decode_many(data)
    for item in (*events, *rejections):
        _check(item)


@given(st.text())
def test_arbitrary_text_never_raises(data: str) -> None:
    _check(decode_one(data))
    decode_many(data)


@settings(max_examples=300)
@given(json_values | event_like)
def test_arbitrary_json_never_raises(value: object) -> None:
    payload = json.dumps(value)
    _check(decode_one(payload))
    _check(decode_one(payload.encode()))
    events, rejections = decode_many(payload)
    for item in (*events, *rejections):
        _check(item)


@settings(max_examples=300)
@given(st.lists(event_like | json_values, max_size=6))
def test_array_elements_decode_as_if_alone(values: list[object]) -> None:
    events, rejections = decode_many(json.dumps(values))
    alone = [decode_one(json.dumps(v)) for v in values]
    assert events == [r for r in alone if not isinstance(r, Rejection)]
    assert [r.reason for r in rejections] == [r.reason for r in alone if isinstance(r, Rejection)]


@settings(max_examples=300)
@given(event_like)
def test_decoded_events_satisfy_the_contract(value: dict[str, object]) -> None:
    event = decode_one(json.dumps(value))
    if isinstance(event, Rejection):
        return
    assert isinstance(event.ts, float)
    if isinstance(event, Requests):
        assert 0 <= event.errors <= event.count
        assert 0 <= event.slow <= event.count
        assert all(x >= 0 for x in event.latency_ms)
    elif isinstance(event, Request):
        assert isinstance(event.ok, bool)
    elif isinstance(event, Command) and event.command == "set_percent":
        assert event.percent is not None
        assert 0 <= event.percent <= 100


def test_every_event_class_starts_with_the_shared_fields_in_one_order() -> None:
    # The engine reads an event as a tuple (`msgspec.structs.astuple`) at positions taken
    # from Request and Requests; the shared fields must sit at the same places in every class.
    shared = ("ts", "rollout", "cohort", "service")
    for cls in (Request, Requests, Gauge, Counter, Command):
        assert cls.__struct_fields__[: len(shared)] == shared
    event = Requests(ts=5.0, rollout="r", cohort="control", count=3, errors=1, slow=2)
    assert msgspec.structs.astuple(event)[4:7] == (3, 1, 2)
