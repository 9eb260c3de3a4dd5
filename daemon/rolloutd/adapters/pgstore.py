"""Durable state in PostgreSQL: what store.py keeps in a file, shared by a leader and standbys.

Rules:
* The same transaction model as store.py: engine blob, changed rollout blobs, watches, flag
  revisions, consumer offsets and outbox rows land in one transaction or not at all; a
  failed commit rolls back and raises `StoreError`.
* Fenced: a commit (and a confirm) first checks, in its own transaction, that this daemon
  still holds the lease (`lease.FENCE`, which keeps the row locked until the commit ends);
  otherwise it rolls back and raises `LeaseLost`. A daemon that lost the lease writes
  nothing again.
* rolloutd creates the schema (under an advisory lock, so two daemons starting at once make
  it once) and migrates it (`meta.schema_version`, `_MIGRATIONS`); a newer schema is
  refused. Outbox ids come from an identity column: they only grow.
* The epoch and revision floor are store.py's: ms at creation, times REVISIONS_PER_EPOCH.
* Connections have connect and statement timeouts, so a database that hangs fails a call
  instead of stalling the daemon. Messages name host and database, never the password.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from rolloutd.adapters.lease import FENCE, Conn, Lease, LeaseLost
from rolloutd.adapters.store import (
    REVISIONS_PER_EPOCH,
    Batch,
    Loaded,
    OutboxItem,
    StoreError,
)
from rolloutd.config.sections import postgres_place
from rolloutd.core.outbound import Sink

SCHEMA_VERSION = 1
CREATE_LOCK = 0x524F4C4C  # the advisory lock key the schema is created under
_SCHEMA = """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE service_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE engine (id int PRIMARY KEY CHECK (id = 1), state bytea NOT NULL);
CREATE TABLE rollouts (name text PRIMARY KEY, state bytea NOT NULL);
CREATE TABLE watches (name text PRIMARY KEY, state bytea NOT NULL);
CREATE TABLE revisions (flag text PRIMARY KEY, revision bigint NOT NULL);
CREATE TABLE offsets (topic text NOT NULL, part int NOT NULL, next bigint NOT NULL,
                      PRIMARY KEY (topic, part));
CREATE TABLE outbox (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, sink text NOT NULL,
                     key bytea, payload bytea NOT NULL, retain boolean NOT NULL);
CREATE TABLE leader (id int PRIMARY KEY CHECK (id = 1), holder text NOT NULL,
                     generation bigint NOT NULL, expires_at timestamptz NOT NULL);
INSERT INTO leader VALUES (1, '', 0, '-infinity');
INSERT INTO meta VALUES ('epoch', (extract(epoch FROM clock_timestamp()) * 1000)::bigint::text)
"""
# version -> the statements that take a store of that version to the next one
_MIGRATIONS: dict[int, str] = {}
_UPSERT = "INSERT INTO {table} VALUES (%s, %s) ON CONFLICT ({key}) DO UPDATE SET {set}"
_STATEMENTS = {
    "engine": _UPSERT.format(table="engine", key="id", set="state = EXCLUDED.state"),
    "rollouts": _UPSERT.format(table="rollouts", key="name", set="state = EXCLUDED.state"),
    "revisions": _UPSERT.format(table="revisions", key="flag", set="revision = EXCLUDED.revision"),
    "service_meta": _UPSERT.format(table="service_meta", key="key", set="value = EXCLUDED.value"),
    "watches": _UPSERT.format(table="watches", key="name", set="state = EXCLUDED.state"),
    "offsets": "INSERT INTO offsets VALUES (%s, %s, %s) "
    "ON CONFLICT (topic, part) DO UPDATE SET next = EXCLUDED.next",
    "drop": "DELETE FROM rollouts WHERE name = %s",
    "done": "DELETE FROM outbox WHERE id = %s",
    "outbox": "INSERT INTO outbox (sink, key, payload, retain) VALUES (%s, %s, %s, %s) "
    "RETURNING id",
}
_T = TypeVar("_T")


def connect(url: str, *, timeout: float = 5.0, autocommit: bool = False) -> Conn:
    place = postgres_place(url)
    try:
        return psycopg.connect(
            url,
            autocommit=autocommit,
            connect_timeout=max(1, round(timeout)),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            application_name="rolloutd",
        )
    except psycopg.Error as exc:
        raise StoreError(
            f"state {place}: cannot connect ({_scrub(exc, url)})", transient=True
        ) from exc


def _scrub(exc: BaseException, url: str) -> str:
    """The error's text without the URL's password, should a driver ever echo it."""
    text = f"{type(exc).__name__}: {str(exc).strip()}"
    password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    return text.replace(str(password), "***") if password else text


class PgStore:
    """The daemon's state in PostgreSQL; see the module docstring for its guarantees."""

    def __init__(self, url: str, conn: Conn, lease: Lease) -> None:
        self._url = url
        self._conn = conn
        self.lease = lease
        self.path = postgres_place(url)
        self.created = False
        self.moved_aside: Path | None = None
        self.offsets: dict[tuple[str, int], int] = {}
        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        conn.commit()
        self.epoch = int(row[0]) if row else 0

    @property
    def generation(self) -> int | None:
        return self.lease.generation

    @property
    def revision_floor(self) -> int:
        return self.epoch * REVISIONS_PER_EPOCH

    @classmethod
    def open(cls, url: str, *, lease: float = 10.0, timeout: float = 5.0) -> PgStore:
        conn = connect(url, timeout=timeout)
        try:
            created = _prepare(conn, postgres_place(url))
        except BaseException:
            conn.close()
            raise
        leader = Lease(
            lambda: connect(url, timeout=timeout, autocommit=True), lease, postgres_place(url)
        )
        store = cls(url, conn, leader)
        store.created = created
        return store

    def load(self) -> Loaded:
        def read(cur: psycopg.Cursor[tuple[Any, ...]]) -> Loaded:
            engine = cur.execute("SELECT state FROM engine").fetchone()
            rows = cur.execute("SELECT id, sink, key, payload, retain FROM outbox ORDER BY id")
            outbox = [OutboxItem(i, Sink.parse(s), k, p, r) for i, s, k, p, r in rows.fetchall()]
            return Loaded(
                engine=engine[0] if engine else None,
                rollouts=dict(cur.execute("SELECT name, state FROM rollouts").fetchall()),
                revisions=dict(cur.execute("SELECT flag, revision FROM revisions").fetchall()),
                offsets={
                    (t, p): n
                    for t, p, n in cur.execute("SELECT topic, part, next FROM offsets").fetchall()
                },
                outbox=outbox,
                meta=dict(cur.execute("SELECT key, value FROM service_meta").fetchall()),
                watches=dict(cur.execute("SELECT name, state FROM watches").fetchall()),
            )

        loaded = self._transaction("load", read, snapshot=True)
        self.offsets = dict(loaded.offsets)
        return loaded

    def commit(self, batch: Batch) -> list[int]:
        if batch.empty():
            return []
        ids = self._transaction("commit", lambda cur: _write(cur, batch), fenced=True)
        self.offsets.update(batch.offsets)
        return ids

    def confirm(self, ids: Iterable[int]) -> None:
        rows = [(i,) for i in ids]
        if rows:
            self._transaction(
                "confirm", lambda cur: cur.executemany(_STATEMENTS["done"], rows), fenced=True
            )

    def stats(self) -> dict[str, int]:
        def count(cur: psycopg.Cursor[tuple[Any, ...]]) -> dict[str, int]:
            row = cur.execute(
                "SELECT (SELECT count(*) FROM rollouts), (SELECT count(*) FROM outbox)"
            ).fetchone()
            assert row is not None
            return {"rollouts": int(row[0]), "outbox": int(row[1])}

        return self._transaction("stats", count)

    def compact(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum keeps the tables."""

    def close(self) -> None:
        self._conn.close()
        self.lease.close()

    def __enter__(self) -> PgStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(
        self,
        what: str,
        body: Callable[[psycopg.Cursor[tuple[Any, ...]]], _T],
        *,
        fenced: bool = False,
        snapshot: bool = False,
    ) -> _T:
        conn = self._conn
        try:
            with conn.transaction(), conn.cursor() as cur:
                if snapshot:  # one consistent view across the tables
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                if fenced:
                    held = self.lease.generation is not None
                    if not held or cur.execute(FENCE, self.lease.fence_args()).fetchone() is None:
                        raise LeaseLost(f"state {self.path}: {what} refused: the lease is lost")
                return body(cur)
        except psycopg.Error as exc:
            raise StoreError(
                f"state {self.path}: {what} failed ({_scrub(exc, self._url)})"
            ) from exc


def _write(cur: psycopg.Cursor[tuple[Any, ...]], batch: Batch) -> list[int]:
    engine = [(1, batch.engine)] if batch.engine is not None else []
    statements: list[tuple[str, Iterable[Any]]] = [
        (_STATEMENTS["engine"], engine),
        (_STATEMENTS["rollouts"], batch.rollouts.items()),
        (_STATEMENTS["revisions"], batch.revisions.items()),
        (_STATEMENTS["service_meta"], batch.meta.items()),
        (_STATEMENTS["watches"], batch.watches.items()),
        (_STATEMENTS["offsets"], [(t, p, n) for (t, p), n in batch.offsets.items()]),
        (_STATEMENTS["drop"], [(name,) for name in batch.drop_rollouts]),
        (_STATEMENTS["done"], [(i,) for i in batch.done]),
    ]
    for sql, rows in statements:
        rows = list(rows)
        if rows:
            cur.executemany(sql, rows)
    added = []
    for sink, key, payload, retain in batch.outbox:
        row = cur.execute(_STATEMENTS["outbox"], (str(sink), key, payload, retain)).fetchone()
        assert row is not None
        added.append(int(row[0]))
    return added


def _prepare(conn: Conn, place: str) -> bool:
    """Create or migrate the schema; True when this call created it."""
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
            exists = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                for statement in _SCHEMA.strip().split(";\n"):
                    conn.execute(statement.encode())
                conn.execute(
                    "INSERT INTO meta VALUES ('schema_version', %s)", (str(SCHEMA_VERSION),)
                )
                return True
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            readable = {str(v) for v in (*_MIGRATIONS, SCHEMA_VERSION)}
            if row is None or row[0] not in readable:
                found = row[0] if row else "none"
                raise StoreError(
                    f"state {place} has schema version {found}; this rolloutd reads "
                    f"{SCHEMA_VERSION}"
                )
            version = int(row[0])
            while version < SCHEMA_VERSION:
                for statement in _MIGRATIONS[version].strip().split(";\n"):
                    conn.execute(statement.encode())
                version += 1
                conn.execute(
                    "UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(version),)
                )
            return False
    except psycopg.Error as exc:
        raise StoreError(
            f"state {place}: schema setup failed ({type(exc).__name__}: {exc})"
        ) from exc
