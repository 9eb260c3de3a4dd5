"""Debezium's MySQL tutorial events: legacy `source` fields (`ts_sec`, no `ts_ms`) decode.

The samples in data/debezium-mysql/ have the shape of the tutorial's `watch-topic` output
(key TAB value per line): four snapshot inserts (`ts_sec` 0, `snapshot` true), an update and
a delete (`ts_sec` set, `snapshot` null) and the delete's tombstone; once with the schema
wrapper and once as bare payloads (`schemas.enable=false`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rolloutd.adapters.cdc.debezium import ChangeEvent, Tombstone, decode_change
from rolloutd.app.cdc import CdcRouter, MigrationWiring
from rolloutd.core.cdc.migration import MigrationSpec
from rolloutd.core.events import Counter, Gauge, Rejection

DATA = Path(__file__).parent / "data" / "debezium-mysql"
TOPIC = "dbserver1.inventory.customers"
TARGET_TOPIC = "dbserver1.inventory.customers_v2"
FORMS = ("tutorial-with-schema.txt", "tutorial-payload-only.txt")
SNAPSHOT_MS = 1506002642417  # the envelope's ts_ms of the snapshot rows
UPDATE_SEC, DELETE_SEC = 1506002951, 1506003012


def messages(name: str) -> list[tuple[bytes, bytes | None]]:
    out: list[tuple[bytes, bytes | None]] = []
    for line in (DATA / name).read_bytes().splitlines():
        key, value = line.split(b"\t")
        out.append((key, value))
    return out


@pytest.mark.parametrize("name", FORMS)
def test_every_tutorial_message_decodes(name: str) -> None:
    decoded = [decode_change(TOPIC, key, value) for key, value in messages(name)]
    *changes, tombstone = decoded
    assert tombstone == Tombstone(key={"id": 1004})
    assert all(isinstance(c, ChangeEvent) for c in changes), changes
    events: list[ChangeEvent] = changes  # type: ignore[assignment]
    assert [e.op for e in events] == ["c", "c", "c", "c", "u", "d"]
    assert [e.key for e in events] == [{"id": i} for i in (1001, 1002, 1003, 1004, 1004, 1004)]
    assert {e.table_id for e in events} == {("inventory", "", "customers")}
    assert events[4].after is not None
    assert events[4].after["first_name"] == "Anne Marie"
    assert events[5].before is not None
    assert events[5].after is None


@pytest.mark.parametrize("name", FORMS)
def test_commit_time_falls_back_to_ts_sec_then_the_envelope(name: str) -> None:
    events = [decode_change(TOPIC, key, value) for key, value in messages(name)][:-1]
    commit = [e.source.ts_ms for e in events if isinstance(e, ChangeEvent)]
    # Snapshot rows say ts_sec 0 (no binlog time): the envelope's processing time is used.
    assert commit == [SNAPSHOT_MS] * 4 + [UPDATE_SEC * 1000, DELETE_SEC * 1000]
    snapshots = [e.source.snapshot for e in events if isinstance(e, ChangeEvent)]
    assert snapshots == ["true"] * 4 + ["false", "false"]


def test_both_forms_decode_equal() -> None:
    wrapped, plain = (messages(name) for name in FORMS)
    for (wkey, wvalue), (pkey, pvalue) in zip(wrapped, plain, strict=True):
        assert decode_change(TOPIC, wkey, wvalue) == decode_change(TOPIC, pkey, pvalue)


def payload(index: int) -> dict[str, Any]:
    value = messages("tutorial-payload-only.txt")[index][1]
    assert value is not None
    data: dict[str, Any] = json.loads(value)
    return data


def source_of(index: int, **changes: Any) -> bytes:
    data = payload(index)
    data["source"].update(changes)
    return json.dumps(data).encode()


def test_source_ts_ms_wins_over_ts_sec() -> None:
    event = decode_change(TOPIC, None, source_of(4, ts_ms=1506002951777))
    assert isinstance(event, ChangeEvent)
    assert event.source.ts_ms == 1506002951777


def test_no_commit_time_at_all_is_a_missing_field() -> None:
    for ts_sec in (0, None):
        data = json.loads(source_of(4, ts_sec=ts_sec))
        del data["ts_ms"]
        result = decode_change(TOPIC, None, json.dumps(data).encode())
        assert isinstance(result, Rejection)
        assert result.reason == "missing_field"
        assert "$.source.ts_ms" in result.detail
    wrapped = json.dumps({"schema": {}, "payload": data}).encode()
    result = decode_change(TOPIC, None, wrapped)
    assert isinstance(result, Rejection)
    assert result.reason == "missing_field"
    assert "$.payload.source.ts_ms" in result.detail


def test_only_the_envelope_time_is_enough() -> None:
    data = json.loads(source_of(4))
    del data["source"]["ts_sec"]
    event = decode_change(TOPIC, None, json.dumps(data).encode())
    assert isinstance(event, ChangeEvent)
    assert event.source.ts_ms == data["ts_ms"]


def commit_ms(value: bytes) -> int:
    event = decode_change(TOPIC, None, value)
    assert isinstance(event, ChangeEvent)
    return event.source.ts_ms


def dual_write(value: bytes | None) -> bytes | None:
    """The same change written to customers_v2 by a dual write: committed 2 s later."""
    data = None if value is None else json.loads(value)["payload"]
    if value is None or data is None:
        return value  # the tombstone follows the delete on both tables
    ts_sec = commit_ms(value) // 1000 + 2
    data["source"].update(table="customers_v2", ts_sec=ts_sec, snapshot=None)
    data["ts_ms"] = ts_sec * 1000 + 150
    return json.dumps(data).encode()


def test_the_tutorial_stream_through_a_migration_check() -> None:
    spec = MigrationSpec(
        name="customers-v2",
        source_table="inventory.customers",  # MySQL: the database plays the schema's role
        target_table="inventory.customers_v2",
        key_columns=("id",),
        columns=(("id", "id", "identity"), ("email", "email", "identity")),
        grace=5.0,
    )
    router = CdcRouter((MigrationWiring(spec, TOPIC, TARGET_TOPIC, "shop"),))
    now = float(UPDATE_SEC)
    samples: list[tuple[str, float]] = []
    for key, value in messages("tutorial-with-schema.txt"):
        for topic, data in ((TOPIC, value), (TARGET_TOPIC, dual_write(value))):
            out = router.handle(topic, key, data, now)
            assert not isinstance(out, Rejection), out
            samples += [(e.name, e.value) for e in out if isinstance(e, Gauge | Counter)]
        now += 1.0
    samples += [(e.name, e.value) for e in router.tick(now + 10.0) if isinstance(e, Counter)]
    assert not [s for s in samples if s[0] == "data_validation_failures"]
    # Four snapshot rows in, one deleted again, on both sides.
    assert ("migration_progress", 1.0) in samples
    # Lag is target commit - source commit: 2 s, less the snapshot rows' sub-second part
    # (their commit time is the envelope's). The gauge is sent when it moves.
    snapshot_lag = (SNAPSHOT_MS // 1000 + 2) * 1000 - SNAPSHOT_MS
    lags = [value for name, value in samples if name == "cdc_lag_seconds"]
    assert lags == [snapshot_lag / 1000, 2.0]
    assert router.metrics()["customers-v2"]["cdc_lag_seconds"] == 2.0
