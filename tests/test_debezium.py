"""Debezium decoding: the shared samples, both JsonConverter forms, a decoder that never raises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolloutd.adapters.cdc.debezium import (
    CDC_REJECTION_REASONS,
    OPS,
    ChangeEvent,
    DataCollectionCount,
    Heartbeat,
    Tombstone,
    TransactionMarker,
    _decode_slowly,
    decode_change,
)
from rolloutd.core.events import Rejection

SAMPLES = Path(__file__).parent / "data" / "debezium-postgres"  # Debezium's own samples
TOPIC = "dbserver1.inventory.customers"
ANNE = {"id": 1, "first_name": "Anne", "last_name": "Kretchmar", "email": "annek@noanswer.org"}


def encode(value: object) -> bytes:
    return json.dumps(value).encode()


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return data


def message(name: str) -> tuple[bytes | None, bytes]:
    """(key, value) as on Kafka: `{key, value}` files hold both, the others only the value."""
    data = sample(name)
    if "value" in data and "key" in data:
        return encode(data["key"]), encode(data["value"])
    return None, (SAMPLES / name).read_bytes()


def wrap(payload: object) -> dict[str, Any]:
    """The `schemas.enable=true` form (the schema's content does not matter to the decoder)."""
    return {"schema": {"type": "struct", "optional": False, "fields": []}, "payload": payload}


# (file, op, (db, schema, table), key, before, after, source.ts_ms, ts_ms)
EXPECTED: list[tuple[str, str, tuple[str, str, str], Any, Any, Any, int, int]] = [
    ("pg-create-value-with-schema.json", "c", ("postgres", "public", "customers"),
     None, None, ANNE, 1559033904863, 1559033904863),
    ("pg-update-value-payload-only.json", "u", ("postgres", "public", "customers"),
     None, {"id": 1}, ANNE | {"first_name": "Anne Marie"}, 1559033904863, 1465584025523),
    ("pg-delete-value-payload-only.json", "d", ("postgres", "public", "customers"),
     None, {"id": 1}, None, 1559033904863, 1465581902461),
    ("pg-truncate-value-payload-only.json", "t", ("postgres", "public", "customers"),
     None, None, None, 1559033904863, 1559033904961),
    ("pg-message-transactional-value-payload-only.json", "m", ("postgres", "", ""),
     None, None, None, 1559033904863, 1559033904961),
    ("pg-snapshot-read-wire-2.1.3-payload.json", "r", ("postgres", "inventory", "customers"),
     None, None, ANNE | {"id": 1004}, 1582540780812, 1582540780812),
    ("pg-create-wire-1.4.0-no-schema.json", "c", ("orderdb", "inventory", "purchaseorder"),
     {"id": 1}, None, {"id": 1, "customerid": 123, "orderdate": 1548936781000000},
     1610716846989, 1610716847249),
    ("pg-update-wire-1.4.0-no-schema.json", "u", ("orderdb", "inventory", "orderline"),
     {"id": 2}, None, {"id": 2, "item": "Debezium for Dummies", "quantity": 1,
                       "status": "CANCELLED", "totalprice": "C7c=", "order_id": 1},
     1610716988917, 1610716989245),
    ("pg-create-wire-2.1.4-payload.json", "c", ("postgres", "inventory", "customers"),
     None, None, {"id": 1005, "first_name": "Bob", "last_name": "Marley",
                  "email": "bob@marley.com"}, 1733906311010, 1733906311190),
]  # fmt: skip


@pytest.mark.parametrize("case", EXPECTED, ids=[c[0] for c in EXPECTED])
def test_every_shared_sample_decodes(case: tuple[Any, ...]) -> None:
    name, op, table, key, before, after, source_ts, ts = case
    raw_key, value = message(name)
    event = decode_change(TOPIC, raw_key, value)
    assert isinstance(event, ChangeEvent), event
    assert (event.op, event.table_id, event.key) == (op, table, key)
    assert (event.before, event.after) == (before, after)
    assert (event.source.ts_ms, event.ts_ms) == (source_ts, ts)


def test_every_shared_sample_is_covered() -> None:
    names = {path.name for path in SAMPLES.glob("*.json")}
    covered = {case[0] for case in EXPECTED} | {
        "pg-transaction-begin.json",
        "pg-transaction-end.json",
    }
    assert names == covered


def test_sample_details() -> None:
    created = decode_change(TOPIC, None, message("pg-create-value-with-schema.json")[1])
    assert isinstance(created, ChangeEvent)
    assert created.source.snapshot == "true"  # a boolean in this (documentation) sample
    assert (created.source.lsn, created.source.tx_id) == (24023128, 555)
    assert created.transaction is None
    read = decode_change(TOPIC, None, message("pg-snapshot-read-wire-2.1.3-payload.json")[1])
    assert isinstance(read, ChangeEvent)
    assert read.source.snapshot == "true"
    note = decode_change(
        TOPIC, None, message("pg-message-transactional-value-payload-only.json")[1]
    )
    assert isinstance(note, ChangeEvent)
    assert note.message is not None
    assert (note.message.prefix, note.message.content) == ("foo", "Ymfy")


@pytest.mark.parametrize("case", EXPECTED, ids=[c[0] for c in EXPECTED])
def test_schema_wrapped_and_payload_only_decode_equal(case: tuple[Any, ...]) -> None:
    raw_key, value = message(case[0])
    data = json.loads(value)
    payload = data["payload"] if "schema" in data else data
    key = None if raw_key is None else json.loads(raw_key)
    wrapped_key = None if key is None else encode(wrap(key))
    plain = decode_change(TOPIC, raw_key, encode(payload))
    assert isinstance(plain, ChangeEvent)
    assert decode_change(TOPIC, wrapped_key, encode(wrap(payload))) == plain
    assert decode_change(TOPIC, raw_key, encode(wrap(payload)).replace(b", ", b",\n  ")) == plain


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [(True, "true"), (False, "false"), ("last", "last"), ("incremental", "incremental"),
     (None, "false"), ("absent", "false"), ("true", "true"), ("false", "false")],
)  # fmt: skip
def test_snapshot_is_a_string_whether_given_as_string_or_boolean(
    snapshot: object, expected: str
) -> None:
    payload = sample("pg-snapshot-read-wire-2.1.3-payload.json")
    if snapshot == "absent":
        del payload["source"]["snapshot"]
    else:
        payload["source"]["snapshot"] = snapshot
    for value in (payload, wrap(payload)):
        event = decode_change(TOPIC, None, encode(value))
        assert isinstance(event, ChangeEvent)
        assert event.source.snapshot == expected


def test_tombstones() -> None:
    assert decode_change(TOPIC, b'{"id": 1}', None) == Tombstone(key={"id": 1})
    assert decode_change(TOPIC, encode(wrap({"id": 1})), None) == Tombstone(key={"id": 1})
    assert decode_change(TOPIC, b'{"id": 1}', encode(wrap(None))) == Tombstone(key={"id": 1})
    assert decode_change(TOPIC, b'{"id": 1}', b"null") == Tombstone(key={"id": 1})
    assert decode_change(TOPIC, None, None) == Rejection("empty", "null key and null value")
    rejected = decode_change(TOPIC, encode(wrap(None)), None)
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "empty"


def test_truncate_with_a_null_key() -> None:
    event = decode_change(TOPIC, None, message("pg-truncate-value-payload-only.json")[1])
    assert isinstance(event, ChangeEvent)
    assert (event.op, event.key, event.before, event.after) == ("t", None, None, None)


def test_the_message_key_replaces_any_key_in_the_value() -> None:
    payload = sample("pg-create-wire-2.1.4-payload.json") | {"key": {"id": 99}}
    event = decode_change(TOPIC, None, encode(payload))
    assert isinstance(event, ChangeEvent)
    assert event.key is None
    event = decode_change(TOPIC, b'{"id": 1005}', encode(payload))
    assert isinstance(event, ChangeEvent)
    assert event.key == {"id": 1005}


def test_transaction_markers() -> None:
    topic = "dbserver1.transaction"
    begin = decode_change(topic, b'{"id": "571:53195829"}', message("pg-transaction-begin.json")[1])
    assert begin == TransactionMarker(status="BEGIN", id="571:53195829", ts_ms=1486500577125)
    end = decode_change(topic, None, message("pg-transaction-end.json")[1])
    assert end == TransactionMarker(
        status="END",
        id="571:53195832",
        ts_ms=1486500577691,
        event_count=2,
        data_collections=(DataCollectionCount(data_collection="s1.a", event_count=1),
                          DataCollectionCount(data_collection="s2.a", event_count=1)),
    )  # fmt: skip
    assert decode_change(topic, None, encode(wrap(sample("pg-transaction-end.json")))) == end


def test_a_table_named_transaction_is_still_a_table() -> None:
    payload = sample("pg-create-wire-2.1.4-payload.json")
    event = decode_change("dbserver1.inventory.transaction", b'{"id": 1005}', encode(payload))
    assert isinstance(event, ChangeEvent)
    assert event.key == {"id": 1005}


def test_changes_in_a_transaction_carry_its_block() -> None:
    payload = sample("pg-create-wire-2.1.4-payload.json")
    payload["transaction"] = {"id": "767:34466480", "total_order": 3, "data_collection_order": 1}
    event = decode_change(TOPIC, None, encode(payload))
    assert isinstance(event, ChangeEvent)
    assert event.transaction is not None
    assert (event.transaction.id, event.transaction.total_order) == ("767:34466480", 3)


def test_heartbeats() -> None:
    topic = "__debezium-heartbeat.dbserver1"
    expected = Heartbeat(prefix="dbserver1", ts_ms=1733906311010)
    key = b'{"serverName": "dbserver1"}'
    assert decode_change(topic, key, b'{"ts_ms": 1733906311010}') == expected
    assert decode_change(topic, key, encode(wrap({"ts_ms": 1733906311010}))) == expected
    rejected = decode_change(topic, key, b"{}")
    assert isinstance(rejected, Rejection)
    assert rejected.reason == "missing_field"


CREATE = sample("pg-create-wire-2.1.4-payload.json")


def without(obj: dict[str, Any], *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    target = copy
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return copy


def changed(obj: dict[str, Any], value: object, *path: str) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(obj))
    target = copy
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return copy


# (topic, key, value, reason, detail fragment)
# A detail worded by msgspec (its text changes between releases): only the reason is checked.
MSGSPEC = None
REJECTED: list[tuple[str, bytes | None, bytes | None, str, str | None]] = [
    (TOPIC, None, b"{", "bad_json", MSGSPEC),
    (TOPIC, None, b"", "bad_json", MSGSPEC),
    (TOPIC, None, b'{"op": "c", "x": "\xff"}', "bad_json", MSGSPEC),
    (TOPIC, None, b"[]", "not_object", "value: expected an object, got an array"),
    (TOPIC, None, b"5", "not_object", "got a number"),
    (TOPIC, None, encode(wrap("x")), "not_object", "payload: expected an object, got a string"),
    (TOPIC, None, encode(without(CREATE, "op")), "missing_field", MSGSPEC),
    (TOPIC, None, encode(without(CREATE, "source")), "missing_field", MSGSPEC),
    (TOPIC, None, encode(without(without(CREATE, "ts_ms"), "source", "ts_ms")), "missing_field",
     MSGSPEC),
    (TOPIC, None, encode(changed(CREATE, None, "after")), "missing_field", "op `c` needs"),
    (TOPIC, None, encode({"op": "m", "source": CREATE["source"]}), "missing_field", "message"),
    (TOPIC, None, encode(changed(CREATE, 5, "before")), "wrong_type", MSGSPEC),
    (TOPIC, None, encode(changed(CREATE, "x", "source", "ts_ms")), "wrong_type", MSGSPEC),
    (TOPIC, None, encode(wrap(changed(CREATE, 1, "source", "db"))), "wrong_type",
     MSGSPEC),
    (TOPIC, None, encode(changed(CREATE, "x", "op")), "unknown_op", MSGSPEC),
    (TOPIC, None, encode(wrap(changed(CREATE, "x", "op"))), "unknown_op", MSGSPEC),
    (TOPIC, b"{", encode(CREATE), "bad_key", "key: "),
    (TOPIC, b"[1]", encode(CREATE), "bad_key", "key: expected an object or null, got an array"),
    (TOPIC, b"{", None, "bad_key", "key: "),
    (TOPIC, None, None, "empty", "null key and null value"),
    ("p.transaction", None, b'{"id": "1"}', "missing_field", MSGSPEC),
    ("p.transaction", None, b'{"status": "MIDDLE", "id": "1"}', "bad_value", MSGSPEC),
]  # fmt: skip


@pytest.mark.parametrize(("topic", "key", "value", "reason", "fragment"), REJECTED)
def test_rejections_name_the_reason(
    topic: str, key: bytes | None, value: bytes | None, reason: str, fragment: str | None
) -> None:
    result = decode_change(topic, key, value)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail
    if fragment is not None:
        assert fragment in result.detail


def test_every_reason_has_a_case() -> None:
    assert {case[3] for case in REJECTED} == set(CDC_REJECTION_REASONS)


def test_details_stay_short() -> None:
    payload = changed(CREATE, "x" * 10_000, "op")
    result = decode_change(TOPIC, None, encode(payload))
    assert isinstance(result, Rejection)
    assert len(result.detail) <= 200


# -- fuzz ----------------------------------------------------------------------------------
topics = st.sampled_from([TOPIC, "p.transaction", "__debezium-heartbeat.p", "x"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
fields = {
    "op": st.sampled_from(["r", "c", "u", "d", "t", "m", "x"]) | json_values,
    "source": st.fixed_dictionaries(
        {},
        optional={
            "db": st.text(max_size=4) | json_values,
            "schema": st.text(max_size=4),
            "table": st.text(max_size=4),
            "ts_ms": st.integers() | json_values,
            "snapshot": st.booleans() | st.sampled_from(["true", "last"]) | json_values,
            "lsn": st.integers() | st.none(),
            "txId": st.integers() | st.text(max_size=2),
        },
    )
    | json_values,
    "before": st.dictionaries(st.text(max_size=4), json_values, max_size=3) | json_values,
    "after": st.dictionaries(st.text(max_size=4), json_values, max_size=3) | st.none(),
    "ts_ms": st.integers() | st.none(),
    "message": st.fixed_dictionaries(
        {"prefix": st.text(max_size=3), "content": st.text(max_size=3)}
    )
    | json_values,
    "transaction": st.none() | json_values,
    "status": st.sampled_from(["BEGIN", "END", "?"]),
    "id": st.text(max_size=4) | json_values,
}
envelopes = st.fixed_dictionaries({}, optional=fields)
values = (
    envelopes.map(encode)
    | envelopes.map(lambda e: encode(wrap(e)))
    | json_values.map(encode)
    | st.binary(max_size=64)
    | st.none()
)
keys = (
    st.none()
    | st.binary(max_size=16)
    | json_values.map(encode)
    | json_values.map(lambda k: encode(wrap(k)))
)
DECODED = (ChangeEvent, Tombstone, TransactionMarker, Heartbeat, Rejection)


@settings(max_examples=300, deadline=None)
@given(topics, keys, values)
def test_decoding_never_raises(topic: str, key: bytes | None, value: bytes | None) -> None:
    result = decode_change(topic, key, value)
    assert isinstance(result, DECODED)
    if isinstance(result, Rejection):
        assert result.reason in CDC_REJECTION_REASONS
        assert len(result.detail) <= 200
    if isinstance(result, ChangeEvent):
        assert result.op in OPS
        assert isinstance(result.source.snapshot, str)
        assert result.op in ("d", "t", "m") or result.after is not None


@settings(max_examples=150, deadline=None)
@given(topics, keys, envelopes)
def test_the_slow_path_agrees_with_the_fast_path(
    topic: str, key: bytes | None, envelope: dict[str, Any]
) -> None:
    for value in (encode(envelope), encode(wrap(envelope))):
        fast = decode_change(topic, key, value)
        slow = _decode_slowly(topic, key, value)
        if isinstance(fast, Rejection):
            assert isinstance(slow, Rejection)
            assert slow.reason == fast.reason
        else:
            assert slow == fast


def test_decoded_events_encode_back() -> None:
    event = decode_change(TOPIC, b'{"id": 1}', message("pg-create-wire-1.4.0-no-schema.json")[1])
    assert isinstance(event, ChangeEvent)
    again = msgspec.json.decode(msgspec.json.encode(event), type=ChangeEvent)
    assert again == event
