"""The leader lease: one row in PostgreSQL names the daemon that may act, and a generation.

Rules:
* Time is the database's: a lease is taken only once `expires_at` has passed by the
  database clock, and renewed by its holder only while the row still names it (holder and
  generation). Every acquisition increments `generation`, a fencing token: the store's
  commits check it in their own transaction, and every message the leader sends carries it.
* The lease is polled and renewed on a connection of its own (autocommit), so a long commit
  never delays a renewal and a renewal never waits for a commit's transaction. A call that
  fails raises `StoreError` (never the driver's error) and the next call connects again.
* The local view: `valid(monotonic)` holds only while less than `lease - margin` has passed
  since a renewal was sent (the send time, not the answer, so the view never outlives the
  row). A process stopped (SIGSTOP) past its lease finds its monotonic clock moved on and
  stops publishing before it has even reached the database again.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from rolloutd.adapters.store import StoreError

ACQUIRE = """UPDATE leader SET holder = %(me)s, generation = generation + 1,
    expires_at = clock_timestamp() + %(lease)s * interval '1 second'
    WHERE id = 1 AND expires_at < clock_timestamp() RETURNING generation"""
RENEW = """UPDATE leader SET expires_at = clock_timestamp() + %(lease)s * interval '1 second'
    WHERE id = 1 AND holder = %(me)s AND generation = %(gen)s"""
RELEASE = """UPDATE leader SET expires_at = '-infinity'
    WHERE id = 1 AND holder = %(me)s AND generation = %(gen)s"""
HOLDER = "SELECT holder, generation, expires_at > clock_timestamp() FROM leader WHERE id = 1"
# In a commit's transaction: the row stays locked (FOR SHARE) until the commit ends, so no
# other daemon acquires it between this check and the writes.
FENCE = """SELECT 1 FROM leader WHERE id = 1 AND holder = %(me)s AND generation = %(gen)s
    AND expires_at > clock_timestamp() FOR SHARE"""


Conn = psycopg.Connection[tuple[Any, ...]]


class LeaseLost(StoreError):
    """This daemon no longer holds the leader lease: it must not write or publish again."""


def holder_id() -> str:
    """host:pid:random, unique per process start (a restarted daemon is a new holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """This daemon's view of the lease row, on connections `connect` makes (autocommit)."""

    def __init__(self, connect: Callable[[], Conn], seconds: float, place: str = "") -> None:
        self._connect = connect
        self._conn: Conn | None = None
        self.place = place  # host/db, for messages
        self.seconds = seconds
        self.margin = seconds / 5  # renewal round trip and clock rate differences
        self.me = holder_id()
        self.generation: int | None = None  # None: not leading
        self.renewed_at = float("-inf")  # monotonic send time of the last renewal that held

    def _args(self) -> dict[str, object]:
        return {"me": self.me, "lease": self.seconds, "gen": self.generation}

    def _execute(self, sql: str, args: dict[str, object] | None = None) -> psycopg.Cursor[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = self._connect()
        try:
            return self._conn.execute(sql, args)
        except psycopg.Error as exc:
            self.close()  # connect again on the next call
            raise StoreError(f"state {self.place}: lease: {type(exc).__name__}") from exc

    def try_acquire(self, monotonic: float) -> bool:
        """Take the lease if it has expired; True when this daemon now leads."""
        row = self._execute(ACQUIRE, self._args()).fetchone()
        if row is None:
            return False
        self.generation, self.renewed_at = int(str(row[0])), monotonic
        return True

    def renew(self, monotonic: float) -> bool:
        """Extend the lease; False (and not leading any more) when it was lost."""
        if self.generation is None:
            return False
        if self._execute(RENEW, self._args()).rowcount != 1:
            self.generation = None
            return False
        self.renewed_at = monotonic
        return True

    def valid(self, monotonic: float) -> bool:
        """Whether this daemon may still act (publish) by its own clock."""
        ahead = self.renewed_at + self.seconds - self.margin
        return self.generation is not None and monotonic < ahead

    def holder(self) -> tuple[str, int, bool]:
        """(holder, generation, unexpired) as the row says now."""
        row = self._execute(HOLDER).fetchone()
        assert row is not None  # the row is made with the schema
        return str(row[0]), int(str(row[1])), bool(row[2])

    def release(self) -> None:
        """Let a standby take over at once (a clean stop)."""
        if self.generation is not None:
            self._execute(RELEASE, self._args())
            self.generation = None

    def fence_args(self) -> dict[str, object]:
        return self._args()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
