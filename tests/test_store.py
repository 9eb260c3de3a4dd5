"""The SQLite state store: round trips, atomic batches, kill -9 safety, refusing bad files."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rolloutd.adapters.state import StateStore
from rolloutd.adapters.store import Batch, Loaded, OutboxItem, Store, StoreError
from rolloutd.core.outbound import Sink


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


def reopen(path: Path) -> Loaded:
    with Store.open(path) as store:
        return store.load()


def full_batch() -> Batch:
    return Batch(
        engine=b"\x00engine",
        rollouts={"checkout-v2": b"\x01ro", "orders-split": b"\x02ro"},
        revisions={"new_checkout": 7, "orders": 1},
        offsets={("rollout.metrics", 0): 120, ("rollout.metrics", 1): 5, ("cmds", 0): 0},
        outbox=[
            (Sink.parse("kafka:rollout.flags"), b"new_checkout", b'{"percent": 5}', False),
            (Sink.parse("mqtt:rollouts/flags/new_checkout"), None, b'{"percent": 5}', True),
        ],
        meta={"config_hash": "abc"},
        watches={"cdc": b'{"checks": []}', "flag_table": b'{"flags": {}}'},
    )


def assert_full_batch(loaded: Loaded, ids: list[int]) -> None:
    """`loaded` holds exactly what `full_batch()` wrote, its outbox rows under `ids`."""
    assert loaded.engine == b"\x00engine"
    assert loaded.rollouts == {"checkout-v2": b"\x01ro", "orders-split": b"\x02ro"}
    assert loaded.revisions == {"new_checkout": 7, "orders": 1}
    assert loaded.offsets == {
        ("rollout.metrics", 0): 120,
        ("rollout.metrics", 1): 5,
        ("cmds", 0): 0,
    }
    assert loaded.outbox == [
        OutboxItem(
            ids[0], Sink.parse("kafka:rollout.flags"), b"new_checkout", b'{"percent": 5}', False
        ),
        OutboxItem(
            ids[1], Sink.parse("mqtt:rollouts/flags/new_checkout"), None, b'{"percent": 5}', True
        ),
    ]
    assert loaded.meta == {"config_hash": "abc"}
    assert loaded.watches == {"cdc": b'{"checks": []}', "flag_table": b'{"flags": {}}'}


def test_a_new_store_is_empty(path: Path) -> None:
    assert reopen(path) == Loaded(None, {}, {}, {}, [], {})


def test_round_trip_of_every_field(path: Path) -> None:
    with Store.open(path) as store:
        ids = store.commit(full_batch())
        assert ids == sorted(ids)
        assert len(ids) == 2
    assert_full_batch(reopen(path), ids)


def upserts_overwrite_drops_and_done_delete(store: StateStore) -> None:
    """The same on every state store (test_pgstore.py runs it on PostgreSQL)."""
    first = store.commit(full_batch())
    store.commit(
        Batch(
            rollouts={"checkout-v2": b"new"},
            drop_rollouts={"orders-split", "never-existed"},
            revisions={"new_checkout": 8},
            offsets={("rollout.metrics", 0): 130},
            done=[first[0]],
            meta={"config_hash": "def"},
        )
    )
    loaded = store.load()
    assert loaded.engine == b"\x00engine"  # engine=None leaves it as is
    assert loaded.rollouts == {"checkout-v2": b"new"}
    assert loaded.revisions == {"new_checkout": 8, "orders": 1}
    assert loaded.offsets[("rollout.metrics", 0)] == 130
    assert loaded.offsets[("rollout.metrics", 1)] == 5
    assert [item.id for item in loaded.outbox] == [first[1]]
    assert loaded.meta == {"config_hash": "def"}
    assert store.offsets[("rollout.metrics", 0)] == 130


def test_upserts_overwrite_drops_and_done_delete(path: Path) -> None:
    with Store.open(path) as store:
        upserts_overwrite_drops_and_done_delete(store)


def test_confirm_deletes_and_ids_keep_increasing_across_reopen(path: Path) -> None:
    with Store.open(path) as store:
        ids = store.commit(full_batch())
        store.confirm(iter(ids))
        store.confirm([])
        assert store.load().outbox == []
    with Store.open(path) as store:
        (later,) = store.commit(Batch(outbox=[(Sink.parse("kafka:t"), None, b"x", False)]))
    assert later > max(ids)  # never reused, even though the outbox was empty


def test_an_empty_batch_writes_nothing(path: Path) -> None:
    assert Batch().empty()
    assert not Batch(done=[1]).empty()
    assert not Batch(engine=b"").empty()
    with Store.open(path) as store:
        assert store.commit(Batch()) == []
        assert store.load().engine is None


def test_stats_count_rows_and_bytes(path: Path) -> None:
    with Store.open(path) as store:
        store.commit(full_batch())
        stats = store.stats()
    assert stats["rollouts"] == 2
    assert stats["outbox"] == 2
    assert stats["file_bytes"] + stats["wal_bytes"] > 0


def unchecked(**fields: Any) -> Batch:
    """A batch with wrong types, as a buggy caller could build it."""
    return Batch(**fields)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        # Text where a blob belongs: the STRICT table refuses the second rollout row.
        (unchecked(engine=b"new", rollouts={"a": b"new", "b": "text"}), StoreError),
        # NULL meta value: refused after engine, rollouts and revisions were written.
        (unchecked(engine=b"new", revisions={"f": 9}, meta={"k": None}), StoreError),
        # A malformed outbox entry: a Python error after every other table was written.
        (
            unchecked(engine=b"new", offsets={("t", 0): 1}, done=[1], outbox=[("s", b"k")]),
            ValueError,
        ),
    ],
    ids=["text-in-blob", "null-meta", "bad-outbox-tuple"],
)
def test_a_commit_that_fails_midway_changes_nothing(
    path: Path, bad: Batch, error: type[Exception]
) -> None:
    with Store.open(path) as store:
        store.commit(full_batch())
        before = store.load()
        with pytest.raises(error):
            store.commit(bad)
        assert store.load() == before
        store.commit(Batch(meta={"after": "ok"}))  # still usable
    assert reopen(path).engine == before.engine


def test_a_commit_on_a_closed_connection_is_a_store_error(path: Path) -> None:
    store = Store.open(path)
    store.commit(full_batch())
    before = store.load()
    store.close()
    with pytest.raises(StoreError, match=re.escape(str(path))):
        store.commit(Batch(engine=b"lost"))
    assert reopen(path) == before


CHILD = """
import sys
from rolloutd.adapters.store import Batch, Store
from rolloutd.core.outbound import Sink

KEEP = 5  # the child confirms each outbox item 5 batches later
store = Store.open(sys.argv[1])
loaded = store.load()
n = int(loaded.engine or b"0")
ids = {int(item.payload): item.id for item in loaded.outbox}
while True:
    n += 1
    batch = Batch(
        engine=b"%d" % n,
        rollouts={name: b"%d" % n for name in ("a", "b", "c", "d")},
        revisions={"flag": n},
        offsets={("t", 0): n},
        outbox=[(Sink.parse("kafka:t"), None, b"%d" % n, False)],
        done=[ids.pop(n - KEEP)] if n - KEEP in ids else [],
    )
    (ids[n],) = store.commit(batch)
    print(n, flush=True)
"""


def run_and_kill(path: Path, commits: int) -> int:
    """Start a committing child, SIGKILL it after `commits` lines; the last n it reported."""
    seen: list[int] = []
    argv = [sys.executable, "-c", CHILD, str(path)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            seen.append(int(line))
            if len(seen) >= commits:
                break
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()  # what it printed before it died
    seen += [int(line) for line in rest.splitlines(keepends=True) if line.endswith("\n")]
    assert len(seen) >= commits, "the child died on its own"
    return seen[-1]


@pytest.mark.parametrize("rounds", [(50, 80, 120, 60, 200, 50, 150, 90)])
def test_kill_9_loses_nothing_and_repeats_nothing(path: Path, rounds: tuple[int, ...]) -> None:
    previous = 0
    for commits in rounds:
        reported = run_and_kill(path, commits)
        loaded = reopen(path)
        assert loaded.engine is not None
        n = int(loaded.engine)
        assert n >= reported > previous
        assert loaded.offsets == {("t", 0): n}
        assert loaded.revisions == {"flag": n}
        assert loaded.rollouts == dict.fromkeys("abcd", b"%d" % n)
        payloads = [int(item.payload) for item in loaded.outbox]
        assert payloads == list(range(max(1, n - 4), n + 1))  # exactly the unconfirmed ones
        ids = [item.id for item in loaded.outbox]
        assert ids == sorted(set(ids))
        previous = n


def make_truncated(path: Path) -> None:
    with Store.open(path) as store:
        store.commit(Batch(rollouts={f"r{i}": os.urandom(2000) for i in range(200)}))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


def make_future(path: Path) -> None:
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


BAD_FILES: dict[str, tuple[Callable[[Path], object], str]] = {
    "random bytes": (lambda p: p.write_bytes(os.urandom(8192)), "is not a rolloutd state store"),
    "empty file": (lambda p: p.write_bytes(b""), r"is not a rolloutd state store \(empty file\)"),
    "truncated": (make_truncated, "is corrupt"),
    "another app": (make_foreign, r"not a rolloutd state store \(no rolloutd meta table\)"),
    "newer schema": (make_future, "has schema version 99; this rolloutd reads 2"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_is_an_error_and_fresh_moves_it_aside(path: Path, kind: str) -> None:
    make, message = BAD_FILES[kind]
    make(path)
    original = path.read_bytes()
    with pytest.raises(StoreError, match=re.escape(str(path)) + ".*" + message):
        Store.open(path)
    assert path.read_bytes() == original  # refusing it did not touch it
    with Store.open(path, fresh=True) as store:
        assert store.load() == Loaded(None, {}, {}, {}, [], {})
    (bak,) = path.parent.glob("state.db.*.bak")
    assert re.fullmatch(r"state\.db\.\d+\.bak", bak.name)
    assert bak.read_bytes() == original


def test_fresh_keeps_every_earlier_backup(path: Path) -> None:
    for n in range(3):
        with Store.open(path, fresh=True) as store:
            store.commit(Batch(engine=b"%d" % n))
    backups = sorted(path.parent.glob("state.db.*.bak"))
    assert len(backups) == 2
    assert {reopen(bak).engine for bak in backups} == {b"0", b"1"}


def test_fresh_after_a_crash_keeps_the_wal_with_the_backup(path: Path) -> None:
    reported = run_and_kill(path, 50)
    with Store.open(path, fresh=True) as store:
        assert store.load().engine is None
    (bak,) = path.parent.glob("state.db.*.bak")
    engine = reopen(bak).engine
    assert engine is not None
    assert int(engine) >= reported  # the backup holds every committed batch


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "nope" / "state.db")
    assert not (tmp_path / "nope").exists()


def test_a_wal_without_its_database_is_an_error(path: Path) -> None:
    Path(f"{path}-wal").write_bytes(b"stale")
    with pytest.raises(StoreError, match="-wal"):
        Store.open(path)


def test_one_owner_at_a_time(path: Path) -> None:
    with Store.open(path) as store:
        store.commit(full_batch())
        with pytest.raises(StoreError, match="in use"):
            Store.open(path)
        with pytest.raises(StoreError, match="in use"):
            Store.open(path, fresh=True)
        assert list(path.parent.glob("*.bak")) == []
    assert reopen(path).engine == b"\x00engine"


def test_compact_folds_the_wal_into_the_file_and_keeps_everything(path: Path) -> None:
    with Store.open(path) as store:
        for n in range(50):
            store.commit(Batch(engine=b"e%d" % n, rollouts={"r": b"x" * 4000}))
        assert store.stats()["wal_bytes"] > 0
        store.compact()
        assert store.stats()["wal_bytes"] == 0
        assert store.load().engine == b"e49"


def _as_schema_1(path: Path, rollouts: dict[str, bytes]) -> None:
    """Turn a new store into what a schema-1 rolloutd left: the watches' state among the
    rollouts under the names "\\x00cdc" and "\\x00flags", no watches table."""
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE watches")
    conn.executemany("INSERT INTO rollouts VALUES (?, ?)", rollouts.items())
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()


def test_a_schema_1_store_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _as_schema_1(path, {"checkout": b"ro", "\x00cdc": b'{"c":1}', "\x00flags": b'{"f":2}'})
    with Store.open(path) as store:
        loaded = store.load()
        assert loaded.rollouts == {"checkout": b"ro"}
        assert loaded.watches == {"cdc": b'{"c":1}', "flag_table": b'{"f":2}'}
        store.commit(Batch(watches={"cdc": b'{"c":3}'}))
    conn = sqlite3.connect(path)
    (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert version == "2"
    with Store.open(path) as store:  # opened again: nothing left to migrate
        assert store.load().watches == {"cdc": b'{"c":3}', "flag_table": b'{"f":2}'}


def test_a_schema_1_store_without_watches_migrates_to_none(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _as_schema_1(path, {"checkout": b"ro"})
    with Store.open(path) as store:
        loaded = store.load()
    assert loaded.rollouts == {"checkout": b"ro"}
    assert loaded.watches == {}
