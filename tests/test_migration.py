"""Migration checks: table-driven cases, properties against a brute-force reference, memory."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolloutd.adapters.cdc.debezium import ChangeEvent, Source, decode_change
from rolloutd.core.cdc.migration import MigrationChecker, MigrationSpec, Sample
from rolloutd.core.cdc.rows import readers
from rolloutd.core.cdc.state import UNAVAILABLE

GRACE = 30.0
SPEC = MigrationSpec(
    name="users-split",
    source_table="public.users",
    target_table="public.users_v2",
    key_columns=("id",),
    columns=(("id", "id", "identity"), ("email", "email", "lower"), ("name", "name", "trim")),
    grace=GRACE,
)


def change(
    table: str,
    op: str,
    lsn: int,
    row: dict[str, Any] | None = None,
    *,
    ts_ms: int | None = None,
    before: dict[str, Any] | None = None,
    key: dict[str, Any] | None = None,
) -> ChangeEvent:
    source = Source(
        db="app",
        schema="public",
        table=table,
        ts_ms=lsn * 10 if ts_ms is None else ts_ms,
        lsn=lsn,
        snapshot="true" if op == "r" else "false",
    )
    return ChangeEvent(op=op, source=source, before=before, after=row, key=key)  # type: ignore[arg-type]


def src(op: str, lsn: int, row: dict[str, Any] | None = None, **kw: Any) -> ChangeEvent:
    return change("users", op, lsn, row, **kw)


def tgt(op: str, lsn: int, row: dict[str, Any] | None = None, **kw: Any) -> ChangeEvent:
    return change("users_v2", op, lsn, row, **kw)


def user(i: int, email: str = "A@x.io", name: str = "Ann") -> dict[str, Any]:
    return {"id": i, "email": email, "name": name}


def mapped(i: int, email: str = "a@x.io", name: str = "Ann") -> dict[str, Any]:
    return {"id": i, "email": email, "name": name}


# -- table-driven cases --------------------------------------------------------------------
# Each step: (now, change). Then the checker advances to END; failures and keys must match.
END = 1000.0
CASES: list[tuple[str, list[tuple[float, ChangeEvent]], dict[str, int], list[Any]]] = [
    (
        "clean dual write",
        [
            (1, src("c", 1, user(1))),
            (1.2, tgt("c", 1, mapped(1))),
            (5, src("u", 2, user(1, name=" Bo "))),
            (5.1, tgt("u", 2, mapped(1, name="Bo"))),
            (9, src("d", 3, None, before={"id": 1})),
            (9.3, tgt("d", 3, None, before={"id": 1})),
        ],
        {},
        [],
    ),
    (
        "target drops an update",
        [
            (1, src("c", 1, user(1))),
            (1.2, tgt("c", 1, mapped(1))),
            (5, src("u", 2, user(1, email="B@x.io"))),
        ],
        {"mismatch": 1},
        [(1,)],
    ),
    ("target misses an insert", [(1, src("c", 1, user(7)))], {"missing": 1}, [(7,)]),
    ("extra row on the target", [(1, tgt("c", 1, mapped(9)))], {"extra": 1}, [(9,)]),
    (
        "delete propagates",
        [
            (1, src("c", 1, user(1))),
            (2, tgt("c", 1, mapped(1))),
            (3, src("d", 2, None, key={"id": 1})),
            (4, tgt("d", 2, None, key={"id": 1})),
        ],
        {},
        [],
    ),
    (
        "delete not propagated",
        [
            (1, src("c", 1, user(1))),
            (2, tgt("c", 1, mapped(1))),
            (3, src("d", 2, None, before={"id": 1})),
        ],
        {"extra": 1},
        [(1,)],
    ),
    (
        "transform not applied on the target",
        [(1, src("c", 1, user(1, email="MiXed@X.io"))), (2, tgt("c", 1, user(1, "MiXed@X.io")))],
        {"mismatch": 1},
        [(1,)],
    ),
    (
        "target ahead of the source, duplicates, out of order",
        [
            (1, tgt("c", 1, mapped(1))),
            (1, tgt("u", 2, mapped(1, name="Cy"))),
            (2, tgt("c", 1, mapped(1))),
            (3, src("u", 2, user(1, name="Cy"))),
            (3, src("c", 1, user(1))),
            (4, src("u", 2, user(1, name="Cy"))),
        ],
        {},
        [],
    ),
    (
        "an intermediate version the target skipped is no failure",
        [
            (1, src("c", 1, user(1))),
            (2, src("u", 2, user(1, name="Bo"))),
            (3, src("u", 3, user(1, name="Cy"))),
            (4, tgt("c", 1, mapped(1, name="Cy"))),
        ],
        {},
        [],
    ),
    (
        "unchanged TOAST column matches anything",
        [
            (1, src("u", 1, user(1, name=UNAVAILABLE))),
            (2, tgt("u", 1, mapped(1, name="a long text"))),
        ],
        {},
        [],
    ),
    (
        "a late counterpart does not undo a failure",
        [(1, src("c", 1, user(1))), (40, tgt("c", 1, mapped(1)))],
        {"missing": 1},
        [(1,)],
    ),
]


def run(steps: Iterable[tuple[float, ChangeEvent]], checker: MigrationChecker) -> list[Sample]:
    out: list[Sample] = []
    for now, event in steps:
        out += checker.on_change(event, now)
    out += checker.advance(END)
    return out


@pytest.mark.parametrize(
    ("steps", "failures", "keys"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cases(
    steps: list[tuple[float, ChangeEvent]], failures: dict[str, int], keys: list[Any]
) -> None:
    checker = MigrationChecker(SPEC)
    run(steps, checker)
    expected = {"missing": 0, "extra": 0, "mismatch": 0} | failures
    assert checker.failures() == expected
    assert [s.key for s in checker.sample_keys()] == keys
    assert checker.pending() == 0


def test_failures_are_judged_when_grace_ends_not_before() -> None:
    checker = MigrationChecker(SPEC)
    assert checker.on_change(src("c", 1, user(1)), 10.0) == [
        Sample("gauge", "migration_progress", 0.0)
    ]
    assert checker.on_change(src("c", 2, user(2)), 10.0) == []
    assert checker.advance(39.999) == []
    assert checker.pending() == 2
    assert checker.advance(40.0) == [Sample("counter", "data_validation_failures", 2.0)]
    assert checker.failures()["missing"] == 2
    assert checker.pending() == 0
    # A counterpart at the deadline comes after the judgement.
    checker.on_change(src("c", 3, user(3)), 50.0)
    out = checker.on_change(tgt("c", 1, mapped(3)), 80.0)
    assert Sample("counter", "data_validation_failures", 1.0) in out


def test_lag_and_progress_samples() -> None:
    checker = MigrationChecker(SPEC)
    checker.on_change(src("c", 1, user(1), ts_ms=1_000_000), 1.0)
    out = checker.on_change(tgt("c", 1, mapped(1), ts_ms=1_000_250), 1.5)
    assert out == [
        Sample("gauge", "cdc_lag_seconds", 0.25),
        Sample("gauge", "migration_progress", 1.0),
    ]
    assert checker.last_lag() == 0.25
    # Target first: the lag is still target commit minus source commit.
    checker.on_change(tgt("c", 2, mapped(2), ts_ms=1_002_000), 2.0)
    out = checker.on_change(src("c", 2, user(2), ts_ms=1_001_500), 2.5)
    assert Sample("gauge", "cdc_lag_seconds", 0.5) in out
    quantiles = checker.lag_quantiles((0.5, 1.0))  # lower rank rule: p50 of two is the first
    assert quantiles[0.5] == pytest.approx(0.25, rel=0.01)
    assert quantiles[1.0] == pytest.approx(0.5, rel=0.01)
    assert checker.advance(62.0) == []
    assert checker.lag_quantiles((0.5,)) == {0.5: None}  # the window slid past both
    assert MigrationChecker(SPEC).lag_quantiles() == {0.5: None, 0.9: None, 0.99: None}


def test_snapshot_and_backfill_progress() -> None:
    checker = MigrationChecker(SPEC)
    for i in range(10):
        checker.on_change(src("r", 1, user(i)), 0.0)
    assert checker.progress().ratio == 0.0
    for i in range(5):
        checker.on_change(tgt("c", i + 1, mapped(i)), 10.0 + i)
    progress = checker.progress()
    assert (progress.source_rows, progress.target_rows, progress.ratio) == (10, 5, 0.5)
    assert progress.rate == pytest.approx(5 / 60)
    # A backfill has no grace: the rows still to copy wait without failing.
    checker.advance(5000.0)
    assert checker.pending() == 5
    assert sum(checker.failures().values()) == 0
    assert checker.progress().rate == 0.0
    # A backfilled row that differs is judged after grace.
    checker.on_change(tgt("c", 10, mapped(5, name="Zed")), 5001.0)
    for i in range(6, 10):
        checker.on_change(tgt("c", 10 + i, mapped(i)), 5001.0)
    checker.advance(6000.0)
    assert checker.failures() == {"missing": 0, "extra": 0, "mismatch": 1}
    assert checker.progress().ratio == 1.0
    assert checker.pending() == 0


def test_deletes_inserts_and_truncates_count_rows() -> None:
    checker = MigrationChecker(SPEC)
    checker.on_change(src("c", 1, user(1)), 0.0)
    checker.on_change(src("c", 2, user(2)), 0.0)
    checker.on_change(src("c", 2, user(2)), 0.0)  # a duplicate counts once
    checker.on_change(src("d", 3, None, before={"id": 1}), 0.0)
    assert checker.progress().source_rows == 1
    out = checker.on_change(src("t", 4), 1.0)
    assert checker.progress().source_rows == 0
    assert checker.truncates() == 1
    assert out == [Sample("gauge", "migration_progress", 1.0)]


def test_messages_other_tables_and_unkeyed_changes() -> None:
    checker = MigrationChecker(SPEC)
    message = decode_change(
        "p.public.users",
        None,
        b'{"op":"m","source":{"db":"app","schema":"public","table":"users","ts_ms":1},'
        b'"message":{"prefix":"x","content":""}}',
    )
    assert isinstance(message, ChangeEvent)
    assert checker.on_change(message, 1.0) == []
    assert checker.on_change(change("orders", "c", 1, {"id": 1}), 1.0) == []
    assert checker.on_change(src("c", 1, {"email": "no id"}), 1.0) == []
    assert checker.unkeyed() == 1
    assert checker.held() == 0


def test_key_from_the_message_key_and_multi_column_keys() -> None:
    spec = MigrationSpec(
        name="m",
        source_table="app.public.users",
        target_table=("app", "public", "users_v2"),
        key_columns=("tenant", "id"),
        columns=(("tenant_id", "tenant", "int"), ("id", "id", "identity"), ("v", "v", "string")),
    )
    checker = MigrationChecker(spec)
    checker.on_change(src("c", 1, {"tenant": "7", "id": 1, "v": 3}), 0.0)
    checker.on_change(src("d", 2, None, key={"tenant": "8", "id": 1}), 0.0)
    checker.on_change(tgt("c", 1, {"tenant_id": 7, "id": 1, "v": "3"}), 1.0)
    checker.on_change(tgt("c", 2, {"tenant_id": 8, "id": 1, "v": "4"}), 1.0)
    checker.advance(END)
    assert checker.failures() == {"missing": 0, "extra": 1, "mismatch": 0}
    assert [s.key for s in checker.sample_keys()] == [(8, 1)]


def test_transforms() -> None:
    columns = tuple((f"t{i}", f"s{i}", tf) for i, tf in enumerate(TRANSFORM_CASES))
    source, _ = readers(("s0",), columns)
    image = {f"s{i}": case[0] for i, case in enumerate(TRANSFORM_CASES.values())}
    assert source.row_of(image) == tuple(case[1] for case in TRANSFORM_CASES.values())
    for transform in ("identity", "lower", "trim", "string", "int"):
        source, _ = readers(("s",), (("t", "s", transform),))
        assert source.row_of({"s": None}) == (None,)
        assert source.row_of({}) == (None,)


TRANSFORM_CASES: dict[str, tuple[Any, Any]] = {
    "identity": ({"a": [1]}, {"a": [1]}),
    "lower": ("MiXed", "mixed"),
    "trim": ("  x y ", "x y"),
    "string": (True, "true"),
    "int": (" 42 ", 42),
}


@pytest.mark.parametrize(
    ("transform", "value", "expected"),
    [
        ("string", 12, "12"),
        ("string", 1.5, "1.5"),
        ("string", {"b": 1, "a": [2]}, '{"a":[2],"b":1}'),
        ("int", 3.0, 3),
        ("int", 3.5, 3.5),
        ("int", "x1", "x1"),
        ("int", False, 0),
        ("lower", 5, 5),
        ("trim", ["x "], ["x "]),
    ],
)
def test_transform_edges(transform: str, value: Any, expected: Any) -> None:
    source, _ = readers(("s",), (("t", "s", transform),))
    assert source.row_of({"s": value}) == (expected,)


def test_object_keys_are_keyed_by_canonical_json() -> None:
    spec = MigrationSpec(
        "m", "public.users", "public.users_v2", ("id",), (("id", "id", "identity"),)
    )
    checker = MigrationChecker(spec)
    checker.on_change(src("c", 1, {"id": {"b": 1, "a": 2}}), 0.0)
    checker.on_change(tgt("c", 1, {"id": {"a": 2, "b": 1}}), 0.0)
    assert checker.pending() == 0


def test_same_table_names_in_two_databases() -> None:
    spec = replace(SPEC, source_table="old.public.users", target_table=("new", "public", "users"))
    checker = MigrationChecker(spec)
    moved = ChangeEvent(
        op="c",
        source=Source(db="new", schema="public", table="users", ts_ms=1, lsn=1),
        after=mapped(1),
    )
    checker.on_change(moved, 0.0)
    assert checker.progress().target_rows == 1
    assert checker.progress().source_rows == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source_table": "users"}, "schema.table"),
        ({"target_table": "public.users"}, "different tables"),
        ({"target_table": "other.public.users"}, "different tables"),
        ({"key_columns": ()}, "key_columns"),
        ({"columns": (("a", "a", "upper"),)}, "unknown transform"),
        ({"grace": 0.0}, "grace"),
        ({"max_pending": 0}, "max_pending"),
    ],
)
def test_spec_validation(changes: dict[str, Any], message: str) -> None:
    fields = {
        "name": "m",
        "source_table": "public.users",
        "target_table": "public.users_v2",
        "key_columns": ("id",),
        "columns": (("id", "id", "identity"),),
    } | changes
    with pytest.raises(ValueError, match=message):
        MigrationSpec(**fields)


def test_overflow_is_counted_and_memos_go_first() -> None:
    spec = replace(SPEC, max_pending=3)
    checker = MigrationChecker(spec)
    checker.on_change(src("c", 1, user(1)), 0.0)
    checker.on_change(tgt("c", 1, mapped(1)), 0.0)  # key 1 settles: a memo
    for i in range(2, 7):
        checker.on_change(src("c", i, user(i)), 0.0)  # 2, 3 fit; 4 evicts the memo; 5, 6 not
    assert (checker.held(), checker.pending(), checker.overflow()) == (3, 3, 2)
    checker.on_change(tgt("c", 2, mapped(2)), 1.0)
    assert (checker.held(), checker.pending()) == (3, 2)
    # The target rows of refused keys are not called extra: their source may have been seen.
    checker.on_change(tgt("c", 5, mapped(5)), 10.0)  # evicts the memo of key 2
    checker.on_change(tgt("c", 6, mapped(6)), 10.0)  # refused
    assert checker.overflow() == 3
    checker.advance(END)
    assert checker.failures() == {"missing": 2, "extra": 0, "mismatch": 0}
    assert checker.unverified() == 1
    assert [s.key for s in checker.sample_keys()] == [(3,), (4,)]
    assert checker.pending() == 0


def test_extra_is_reported_again_once_overflow_is_long_past() -> None:
    spec = replace(SPEC, max_pending=1)
    checker = MigrationChecker(spec)
    checker.on_change(src("c", 1, user(1)), 0.0)
    checker.on_change(src("c", 2, user(2)), 0.0)  # refused
    checker.on_change(tgt("c", 1, mapped(9)), 100.0)
    checker.advance(END)
    assert checker.failures() == {"missing": 1, "extra": 1, "mismatch": 0}


def test_sample_keys_keep_the_latest() -> None:
    spec = replace(SPEC, sample_size=2)
    checker = MigrationChecker(spec)
    for i in range(5):
        checker.on_change(src("c", i + 1, user(i)), float(i))
    checker.advance(END)
    assert [(s.key, s.kind, s.at) for s in checker.sample_keys()] == [
        ((3,), "missing", END),
        ((4,), "missing", END),
    ]


# -- properties against a brute-force reference -----------------------------------------
# A history is a list of (key, name, delete?) source operations. The source inserts a key it
# does not have, else deletes it (delete?) or updates it. The target applies a subset of the
# source changes in commit order, as upserts and deletes (a delete of a missing row changes
# nothing, so it emits no change).
PROP_SPEC = MigrationSpec(
    name="prop",
    source_table="public.users",
    target_table="public.users_v2",
    key_columns=("id",),
    columns=SPEC.columns,
    grace=GRACE,
    sample_size=1000,
)
operations = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(["A", "B", "C"]), st.booleans()),
    min_size=1,
    max_size=40,
)


@dataclass
class History:
    source: list[ChangeEvent] = field(default_factory=list)
    target: list[tuple[int, ChangeEvent]] = field(default_factory=list)  # (source index, change)
    expected: dict[tuple[Any, ...], str] = field(default_factory=dict)


def build(ops: list[tuple[int, str, bool]], applied: list[bool]) -> History:
    history = History()
    source_rows: dict[int, str] = {}
    target_rows: dict[int, str] = {}
    for index, (key, name, delete) in enumerate(ops):
        lsn = index + 1
        if key in source_rows and delete:
            del source_rows[key]
            history.source.append(src("d", lsn, None, before={"id": key}))
        else:
            op = "u" if key in source_rows else "c"
            source_rows[key] = name
            history.source.append(src(op, lsn, user(key, name=name)))
        if not applied[index]:
            continue
        tlsn = len(history.target) + 1
        if key not in source_rows:
            if target_rows.pop(key, None) is not None:
                history.target.append((index, tgt("d", tlsn, None, key={"id": key}, ts_ms=lsn)))
        else:
            op = "u" if key in target_rows else "c"
            target_rows[key] = name
            history.target.append((index, tgt(op, tlsn, mapped(key, name=name), ts_ms=lsn)))
    for key in set(source_rows) | set(target_rows):
        want, have = source_rows.get(key), target_rows.get(key)
        if want != have:
            kind = "missing" if have is None else "extra" if want is None else "mismatch"
            history.expected[(key,)] = kind
    return history


def deliveries(history: History, rng: random.Random) -> list[ChangeEvent]:
    """Every change at least once, some twice, in any order."""
    events = history.source + [event for _, event in history.target]
    events += [event for event in events if rng.random() < 0.3]
    rng.shuffle(events)
    return events


def reported(checker: MigrationChecker) -> dict[tuple[Any, ...], str]:
    return {sample.key: sample.kind for sample in checker.sample_keys()}


@settings(max_examples=150, deadline=None)
@given(operations, st.randoms(use_true_random=False), st.data())
def test_reports_exactly_the_keys_whose_final_state_differs(
    ops: list[tuple[int, str, bool]], rng: random.Random, data: st.DataObject
) -> None:
    applied = data.draw(st.lists(st.booleans(), min_size=len(ops), max_size=len(ops)))
    history = build(ops, applied)
    checker = MigrationChecker(PROP_SPEC)
    events = deliveries(history, rng)
    for i, event in enumerate(events):
        checker.on_change(event, i * 0.9 * GRACE / len(events))
    checker.advance(END)
    assert reported(checker) == history.expected
    assert checker.pending() == 0


@settings(max_examples=100, deadline=None)
@given(operations, st.randoms(use_true_random=False))
def test_a_target_that_applies_everything_never_fails(
    ops: list[tuple[int, str, bool]], rng: random.Random
) -> None:
    history = build(ops, [True] * len(ops))
    assert history.expected == {}
    checker = MigrationChecker(PROP_SPEC)
    for i, event in enumerate(deliveries(history, rng)):
        checker.on_change(event, i * 0.01)
    assert checker.pending() == 0  # everything matched: nothing is held but memos
    checker.advance(END)
    assert sum(checker.failures().values()) == 0
    assert checker.held() == 0  # and memos go after their TTL


@settings(max_examples=100, deadline=None)
@given(
    operations,
    st.lists(st.floats(0.0, 2.5 * GRACE), min_size=40, max_size=40),
    st.randoms(use_true_random=False),
)
def test_lag_below_half_the_grace_in_either_direction_never_fails(
    ops: list[tuple[int, str, bool]], gaps: list[float], rng: random.Random
) -> None:
    """Over many grace periods: each stream delivers each change (and its duplicates) up to
    0.45 grace after it happened, so either stream may run ahead of the other."""
    history = build(ops, [True] * len(ops))
    happened = [sum(gaps[: i + 1]) for i in range(len(ops))]
    changes = list(enumerate(history.source)) + history.target
    changes += [change for change in changes if rng.random() < 0.3]  # duplicates
    timed = [(happened[i] + rng.uniform(0, 0.45 * GRACE), event) for i, event in changes]
    timed.sort(key=lambda item: item[0])
    checker = MigrationChecker(PROP_SPEC)
    for now, event in timed:
        checker.on_change(event, now)
    checker.advance(timed[-1][0] + 10 * GRACE)
    assert sum(checker.failures().values()) == 0


@settings(max_examples=100, deadline=None)
@given(operations, st.randoms(use_true_random=False), st.integers(1, 6), st.data())
def test_pending_keys_never_exceed_the_cap(
    ops: list[tuple[int, str, bool]], rng: random.Random, cap: int, data: st.DataObject
) -> None:
    applied = data.draw(st.lists(st.booleans(), min_size=len(ops), max_size=len(ops)))
    spec = replace(SPEC, max_pending=cap)
    checker = MigrationChecker(spec)
    for i, event in enumerate(deliveries(build(ops, applied), rng)):
        checker.on_change(event, i * 2.0)
        assert checker.pending() <= checker.held() <= cap
    checker.advance(END)
    assert checker.pending() == 0


@settings(max_examples=60, deadline=None)
@given(operations, st.randoms(use_true_random=False), st.data())
def test_dump_and_load_are_exact(
    ops: list[tuple[int, str, bool]], rng: random.Random, data: st.DataObject
) -> None:
    applied = data.draw(st.lists(st.booleans(), min_size=len(ops), max_size=len(ops)))
    spec = replace(SPEC, max_pending=4)
    events = deliveries(build(ops, applied), rng)
    cut = data.draw(st.integers(0, len(events)))
    times = [i * 7.0 for i in range(len(events))]
    original = MigrationChecker(spec)
    for now, event in zip(times[:cut], events[:cut], strict=True):
        original.on_change(event, now)
    restored = MigrationChecker(spec)
    restored.load(json.loads(json.dumps(original.dump())))
    assert restored.dump() == original.dump()
    for now, event in zip(times[cut:], events[cut:], strict=True):
        assert restored.on_change(event, now) == original.on_change(event, now)
    assert restored.advance(END) == original.advance(END)
    assert restored.dump() == original.dump()
    assert restored.sample_keys() == original.sample_keys()


def test_load_refuses_another_version() -> None:
    with pytest.raises(ValueError, match="version"):
        MigrationChecker(SPEC).load({"version": 99})


def test_a_hot_key_with_a_steady_lag_never_fails() -> None:
    checker = MigrationChecker(SPEC)
    for second in range(300):
        lsn = second + 1
        checker.on_change(src("u", lsn, user(1, name=f"n{second}"), ts_ms=second * 1000), second)
        if second >= 20:  # the target is 20 s behind, the grace is 30 s
            lag = second - 20
            target = tgt("u", lag + 1, mapped(1, name=f"n{lag}"), ts_ms=second * 1000 + 500)
            checker.on_change(target, second + 0.5)
    assert sum(checker.failures().values()) == 0
    assert checker.last_lag() == 20.5


def test_a_hot_key_the_target_stopped_following_is_judged_on_time() -> None:
    checker = MigrationChecker(SPEC)
    checker.on_change(src("c", 1, user(1)), 0.0)
    checker.on_change(tgt("c", 1, mapped(1)), 0.0)
    failed_at = None
    for tenth in range(1, 2000):  # ten updates a second, none reaches the target
        out = checker.on_change(src("u", tenth + 1, user(1, name=f"n{tenth}")), tenth / 10)
        if out and failed_at is None:
            failed_at = tenth / 10
    assert failed_at == pytest.approx(0.1 + GRACE)


def test_gauges_are_sent_when_they_move_not_on_every_change() -> None:
    checker = MigrationChecker(SPEC)
    sent: list[Sample] = []
    for i in range(1, 2001):
        sent += checker.on_change(src("c", i, user(i), ts_ms=i * 1000), i / 100)
    for i in range(1, 2001):
        lag_ms = 100 if i < 1000 else 101 if i < 1500 else 300  # steady, a 1% step, a jump
        target = tgt("c", i, mapped(i), ts_ms=i * 1000 + lag_ms)
        sent += checker.on_change(target, 20 + i / 100)
    lags = [s.value for s in sent if s.name == "cdc_lag_seconds"]
    assert lags == [0.1, 0.3]
    progress = [s.value for s in sent if s.name == "migration_progress"]
    assert progress[0] == 0.0
    assert progress[-1] == 1.0
    steps = [b - a for a, b in pairwise(progress)]
    assert min(steps[:-1]) >= 0.001 - 1e-9  # not on each of the 2000 target rows
    assert 500 <= len(progress) <= 1002
    assert checker.progress().ratio == 1.0
    assert checker.last_lag() == 0.3


def test_stale_deadlines_are_dropped_and_judgements_survive_it() -> None:
    checker = MigrationChecker(replace(SPEC, max_pending=10_000))
    for i in range(5000):
        checker.on_change(src("c", i + 1, user(i)), 0.0)
    for i in range(0, 5000, 2):  # half of them settle: their deadlines go stale
        checker.on_change(tgt("c", i + 1, mapped(i)), 1.0)
    assert len(checker._keys.heap) <= 2 * checker.pending() + 1024
    for i in range(5000, 5100):  # late arrivals, due after the first 2500
        checker.on_change(src("c", i + 1, user(i)), 5.0)
    out = checker.advance(31.0)  # the judged keys settle (and compact) mid-expiry
    assert out == [Sample("counter", "data_validation_failures", 2500.0)]
    assert checker.pending() == 100
    assert checker.advance(35.0) == [Sample("counter", "data_validation_failures", 100.0)]
    assert checker.failures()["missing"] == 2600
    assert checker.pending() == 0
