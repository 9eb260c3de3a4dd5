"""Durable state: one SQLite file holds what the daemon must not lose.

Rules:
* One transaction per processed batch (`commit`): engine blob, changed rollout blobs, flag
  revisions, consumer offsets and outbox rows land together or not at all. A failed commit
  rolls back and raises `StoreError`; the store is as it was before.
* WAL with `synchronous=NORMAL`: a committed batch survives a crash of the process (kill -9)
  at any moment. A power loss or OS crash may lose the last few commits, never corrupt the
  file (SQLite syncs the WAL before each checkpoint).
* A file at `path` is always a complete store: a new one is built beside it and renamed into
  place, so an empty, foreign, corrupt or newer-schema file is an error, never a silent reset.
  `fresh=True` is the explicit reset: the old file (with its -wal/-shm) is renamed to
  `<path>.<unix-ts>.bak`, never deleted.
* One owner: the connection holds an exclusive lock for its lifetime, so a second daemon (or
  any reader) on the same file gets "in use" instead of a shared, diverging state.
* The watches beside the rollouts (the CDC migration checks, the flag table's drift watch)
  keep their state in their own table, `watches`, one row per watch, never among the
  rollouts under made-up names.
* The schema is versioned (`meta.schema_version`); an older store is migrated in place, in
  one transaction, when it is opened (`_MIGRATIONS`); a newer one is refused.
* Outbox ids come from AUTOINCREMENT: they only grow, even after the outbox empties.
* Each store has an epoch: the wall clock in ms when it was created, in `meta`. Flag
  revisions start above `epoch * REVISIONS_PER_EPOCH`, so a store created after another one
  was lost (deleted, moved aside by `fresh=True`) publishes revisions greater than every
  revision of the old one without reading anything back (as long as a flag averaged under
  1000 changes a millisecond, which no daemon does, and the clock moved forward between
  the two creations). A store made before epochs existed reads as epoch 0.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rolloutd.core.outbound import Sink

if TYPE_CHECKING:
    from rolloutd.adapters.lease import Lease

SCHEMA_VERSION = 2
REVISIONS_PER_EPOCH = 1000  # epoch ms * 1000 stays below 2**53 (exact in JSON doubles) to 2255
APPLICATION_ID = 0x524F4C4C  # "ROLL" in the SQLite header: names the file as ours
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE service_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE engine (id INTEGER PRIMARY KEY CHECK (id = 1), state BLOB NOT NULL) STRICT;
CREATE TABLE rollouts (name TEXT PRIMARY KEY, state BLOB NOT NULL) STRICT;
CREATE TABLE watches (name TEXT PRIMARY KEY, state BLOB NOT NULL) STRICT;
CREATE TABLE revisions (flag TEXT PRIMARY KEY, revision INTEGER NOT NULL) STRICT;
CREATE TABLE offsets (topic TEXT NOT NULL, part INTEGER NOT NULL, next INTEGER NOT NULL,
                      PRIMARY KEY (topic, part)) STRICT, WITHOUT ROWID;
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, key BLOB,
                     payload BLOB NOT NULL, retain INTEGER NOT NULL) STRICT;
"""
_OFFSETS = "SELECT topic, part, next FROM offsets"
# version -> the statements that take a store of that version to the next one
_MIGRATIONS = {
    # 1 -> 2: the watches' state moves out of `rollouts`, where it was kept under the names
    # "\x00cdc" and "\x00flags", into a table of its own.
    1: """
CREATE TABLE watches (name TEXT PRIMARY KEY, state BLOB NOT NULL) STRICT;
INSERT INTO watches SELECT 'cdc', state FROM rollouts WHERE name = char(0) || 'cdc';
INSERT INTO watches SELECT 'flag_table', state FROM rollouts WHERE name = char(0) || 'flags';
DELETE FROM rollouts WHERE name IN (char(0) || 'cdc', char(0) || 'flags');
""",
}
_T = TypeVar("_T")


class StoreError(Exception):
    """The state file cannot be opened, read or written; the message names path and cause.

    `fresh_helps`: the file is there but unusable (corrupt, foreign, another schema), so
    `--fresh` (which keeps it aside) would let the daemon start. `transient`: the store is
    out of reach for now (a database that does not answer), so a restart may well work.
    """

    def __init__(self, message: str, *, fresh_helps: bool = False, transient: bool = False) -> None:
        super().__init__(message)
        self.fresh_helps = fresh_helps
        self.transient = transient


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    sink: Sink
    key: bytes | None
    payload: bytes
    retain: bool = False


@dataclass(slots=True)
class Loaded:
    engine: bytes | None
    rollouts: dict[str, bytes]
    revisions: dict[str, int]
    offsets: dict[tuple[str, int], int]
    outbox: list[OutboxItem]
    meta: dict[str, str]
    watches: dict[str, bytes] = field(default_factory=dict)  # watch name -> its state


@dataclass(slots=True)
class Batch:
    engine: bytes | None = None
    rollouts: dict[str, bytes] = field(default_factory=dict)
    drop_rollouts: set[str] = field(default_factory=set)
    revisions: dict[str, int] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    outbox: list[tuple[Sink, bytes | None, bytes, bool]] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    watches: dict[str, bytes] = field(default_factory=dict)  # watch name -> its new state

    def empty(self) -> bool:
        changes = (self.rollouts, self.drop_rollouts, self.revisions, self.offsets, self.watches)
        return self.engine is None and not any((*changes, self.outbox, self.done, self.meta))


def _sidecars(path: Path) -> list[Path]:
    return [path, Path(f"{path}-wal"), Path(f"{path}-shm")]


def _describe(exc: sqlite3.Error) -> str:
    name = getattr(exc, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return "is not a rolloutd state store"
    if name.startswith("SQLITE_BUSY"):
        return "is in use by another process"
    return "is corrupt or unreadable"


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit mode: transactions are explicit. timeout=0: a locked file fails at once.
    conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    conn.execute("PRAGMA locking_mode = EXCLUSIVE")
    return conn


class Store:
    """The daemon's SQLite state file; see the module docstring for its guarantees."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self.epoch = int(row[0]) if row else 0  # ms at creation; 0: made before epochs
        self.created = False  # open() made this file (no state file was there)
        self.moved_aside: Path | None = None  # fresh=True: where the old file went
        # The offsets table as last read or committed: the next offset to read per
        # (topic, partition). The one record of positions; nothing else keeps its own.
        self.offsets: dict[tuple[str, int], int] = {}
        self.generation: int | None = None  # no leader lease: one daemon owns the file
        self.lease: Lease | None = None

    @property
    def revision_floor(self) -> int:
        """Every flag revision this store hands out is greater than this."""
        return self.epoch * REVISIONS_PER_EPOCH

    @classmethod
    def open(cls, path: str | Path, *, fresh: bool = False) -> Store:
        path = Path(path)
        if not path.parent.is_dir():
            what = "is not a directory" if path.parent.exists() else "does not exist"
            raise StoreError(f"state file {path}: directory {path.parent} {what}")
        if path.is_dir():
            raise StoreError(f"state file {path} is a directory")
        moved, created = None, False
        try:
            if fresh:
                moved = _move_aside(path)
            if not path.exists():
                if Path(f"{path}-wal").exists():
                    raise StoreError(f"state file {path} is missing but its -wal file is not")
                _create(path)
                created = True
        except OSError as exc:
            raise StoreError(f"state file {path} cannot be created ({exc})") from exc
        store = cls(path, _open_checked(path))
        store.created, store.moved_aside = created, moved
        return store

    def load(self) -> Loaded:
        def read(cur: sqlite3.Cursor) -> Loaded:
            engine = cur.execute("SELECT state FROM engine").fetchone()
            rows = cur.execute("SELECT id, sink, key, payload, retain FROM outbox ORDER BY id")
            outbox = [OutboxItem(i, Sink.parse(s), k, p, bool(r)) for i, s, k, p, r in rows]
            return Loaded(
                engine=engine[0] if engine else None,
                rollouts=dict(cur.execute("SELECT name, state FROM rollouts")),
                revisions=dict(cur.execute("SELECT flag, revision FROM revisions")),
                offsets={(t, p): n for t, p, n in cur.execute(_OFFSETS)},
                outbox=outbox,
                meta=dict(cur.execute("SELECT key, value FROM service_meta")),
                watches=dict(cur.execute("SELECT name, state FROM watches")),
            )

        loaded = self._transaction("load", read, "BEGIN")
        self.offsets = dict(loaded.offsets)
        return loaded

    def commit(self, batch: Batch) -> list[int]:
        if batch.empty():
            return []
        ids = self._transaction("commit", lambda cur: _write(cur, batch))
        self.offsets.update(batch.offsets)  # only once the transaction holds them
        return ids

    def confirm(self, ids: Iterable[int]) -> None:
        rows = [(i,) for i in ids]
        if rows:
            self._transaction("confirm", lambda cur: cur.executemany(_DELETE_OUTBOX, rows))

    def stats(self) -> dict[str, int]:
        def count(cur: sqlite3.Cursor) -> dict[str, int]:
            (rollouts,) = cur.execute("SELECT count(*) FROM rollouts").fetchone()
            (outbox,) = cur.execute("SELECT count(*) FROM outbox").fetchone()
            return {"rollouts": rollouts, "outbox": outbox}

        counts = self._transaction("stats", count, "BEGIN")
        main, wal, _ = (p.stat().st_size if p.exists() else 0 for p in _sidecars(self.path))
        return {"file_bytes": main, "wal_bytes": wal, **counts}

    def compact(self) -> None:
        """Fold the WAL into the database file and truncate it (a periodic job)."""
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"state file {self.path}: checkpoint failed ({exc})") from exc

    def close(self) -> None:
        self._conn.close()  # the last connection checkpoints the WAL into the file

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(
        self, what: str, body: Callable[[sqlite3.Cursor], _T], begin: str = "BEGIN IMMEDIATE"
    ) -> _T:
        conn = self._conn
        try:
            cur = conn.execute(begin)
            result = body(cur)
            conn.execute("COMMIT")
            return result
        except BaseException as exc:
            # Also on a non-SQLite error (bad batch, cancellation): nothing half-written stays.
            with contextlib.suppress(sqlite3.Error):  # closed connection: nothing to undo
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"state file {self.path}: {what} failed ({exc})") from exc
            raise


_DELETE_OUTBOX = "DELETE FROM outbox WHERE id = ?"
_INSERT_OUTBOX = "INSERT INTO outbox (sink, key, payload, retain) VALUES (?, ?, ?, ?) RETURNING id"


def _write(cur: sqlite3.Cursor, batch: Batch) -> list[int]:
    engine = [(1, batch.engine)] if batch.engine is not None else []
    statements: list[tuple[str, Iterable[Any]]] = [
        ("INSERT OR REPLACE INTO engine VALUES (?, ?)", engine),
        ("INSERT OR REPLACE INTO rollouts VALUES (?, ?)", batch.rollouts.items()),
        ("INSERT OR REPLACE INTO revisions VALUES (?, ?)", batch.revisions.items()),
        ("INSERT OR REPLACE INTO service_meta VALUES (?, ?)", batch.meta.items()),
        ("INSERT OR REPLACE INTO watches VALUES (?, ?)", batch.watches.items()),
        ("INSERT OR REPLACE INTO offsets VALUES (?, ?, ?)", _offset_rows(batch.offsets)),
        ("DELETE FROM rollouts WHERE name = ?", ((name,) for name in batch.drop_rollouts)),
        (_DELETE_OUTBOX, ((i,) for i in batch.done)),
    ]
    for sql, rows in statements:
        cur.executemany(sql, rows)
    added = []
    for sink, key, payload, retain in batch.outbox:
        row = (str(sink), key, payload, int(retain))
        added.append(cur.execute(_INSERT_OUTBOX, row).fetchone()[0])
    return added


def _offset_rows(offsets: dict[tuple[str, int], int]) -> Iterable[tuple[str, int, int]]:
    return ((topic, part, nxt) for (topic, part), nxt in offsets.items())


def _move_aside(path: Path) -> Path | None:
    """Rename an existing store and its WAL files to `<path>.<ts>.bak[-wal|-shm]`."""
    if not any(p.exists() for p in _sidecars(path)):
        return None
    _ensure_unlocked(path)
    stamp = int(time.time())
    bak = Path(f"{path}.{stamp}.bak")
    for n in itertools.count(1):  # two fresh starts within a second
        if not any(p.exists() for p in _sidecars(bak)):
            break
        bak = Path(f"{path}.{stamp}-{n}.bak")
    for src, dst in zip(_sidecars(path), _sidecars(bak), strict=True):
        if src.exists():
            src.rename(dst)
    return bak


def _create(path: Path) -> None:
    """Build a new store beside `path`, then rename it into place (atomic)."""
    tmp = Path(f"{path}.creating")
    for leftover in _sidecars(tmp):  # a half-built store from a crash during creation
        leftover.unlink(missing_ok=True)
    # Rollback-journal mode with synchronous=FULL here: the commit fsyncs a self-contained file
    # (no -wal to carry along); the first open switches it to WAL.
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.executescript(
            f"BEGIN; {_SCHEMA} PRAGMA application_id = {APPLICATION_ID}; "
            f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); "
            f"INSERT INTO meta VALUES ('epoch', '{time.time_ns() // 1_000_000}'); COMMIT;"
        )
    finally:
        conn.close()
    tmp.replace(path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _ensure_unlocked(path: Path) -> None:
    """Refuse to move a store aside while another process has it open."""
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:  # only "in use" matters: a corrupt file is moved aside
        if _describe(exc) == "is in use by another process":
            raise StoreError(f"state file {path} {_describe(exc)} ({exc})") from exc
    finally:
        conn.close()


def _open_checked(path: Path) -> sqlite3.Connection:
    """Connect, check the file, and take the exclusive lock (held until close)."""
    conn = _connect(path)
    try:
        version = _identify(path, conn)
        if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0] != "wal":
            raise StoreError(f"state file {path} cannot use WAL journaling")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA journal_size_limit = 16777216")  # trim the WAL after checkpoints
        conn.execute("BEGIN IMMEDIATE")
        _migrate(conn, version)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        damaged = getattr(exc, "sqlite_errorname", "") in ("SQLITE_NOTADB", "SQLITE_CORRUPT")
        raise StoreError(
            f"state file {path} {_describe(exc)} ({exc})", fresh_helps=damaged
        ) from exc
    except StoreError:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, version: int) -> None:
    """Take a store of schema `version` to SCHEMA_VERSION, inside the caller's transaction."""
    while version < SCHEMA_VERSION:
        for statement in _MIGRATIONS[version].strip().split(";\n"):
            conn.execute(statement)
        version += 1
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def _identify(path: Path, conn: sqlite3.Connection) -> int:
    """The schema version of `path`; StoreError unless it is a sound rolloutd store of a
    schema this rolloutd reads (its own, or an older one it migrates)."""
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StoreError(f"state file {path} is corrupt ({'; '.join(problems)})", fresh_helps=True)
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone()
    if app_id != APPLICATION_ID or not has_meta:
        cause = "no rolloutd meta table" if not has_meta else f"application_id {app_id:#x}"
        cause = "empty file" if path.stat().st_size == 0 else cause
        raise StoreError(
            f"state file {path} is not a rolloutd state store ({cause})", fresh_helps=True
        )
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    readable = {str(v) for v in (*_MIGRATIONS, SCHEMA_VERSION)}
    if row is None or row[0] not in readable:
        found = row[0] if row else "none"
        raise StoreError(
            f"state file {path} has schema version {found}; this rolloutd reads {SCHEMA_VERSION}",
            fresh_helps=True,
        )
    epoch = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    if epoch is not None and not epoch[0].isdigit():
        raise StoreError(f"state file {path} is corrupt (epoch {epoch[0][:20]!r})")
    return int(row[0])
