"""The admin HTTP listener with bounded resources: file descriptors stay for the broker.

Rules:
* Open files are one budget for the whole daemon. `plan` reads RLIMIT_NOFILE at start
  (raising the soft limit towards the hard one, as Go's runtime does), keeps `reserve`
  descriptors for the Kafka and MQTT clients, the state store and the notifiers, and caps
  admin connections at min(max_connections, limit - reserve). A flood of clients can then
  never make accept(), the broker's sockets or SQLite fail with EMFILE.
* At the cap, a new connection displaces the oldest one that has not yet sent a complete
  request head (a half-open or slow client); when every connection is inside a request,
  the new one is closed at once. A scraper sends its head within milliseconds, so it gets
  through a flood of idle sockets.
* A connection must send its first request head within `header_timeout`; idle keep-alive
  connections close after aiohttp's keepalive timeout (the runner's `keepalive_timeout`).
* Accepts per loop pass are few (`BACKLOG`): a displaced socket closes on the next pass,
  so at most that many descriptors are ever over the cap.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("rolloutd.http")

BACKLOG = 32
_RAISE_TO = 1 << 16  # a soft limit above this buys nothing an admin port needs
_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ConnectionBudget:
    cap: int  # admin connections open at once
    open_files: int  # the soft RLIMIT_NOFILE in force
    reserve: int  # descriptors kept for everything else


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE, raised towards the hard limit where that is allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    wanted = _RAISE_TO if hard == infinite else min(hard, _RAISE_TO)
    if soft != infinite and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # keep the limit we were given
    return _RAISE_TO if soft == infinite else soft


def plan(max_connections: int, reserve: int) -> ConnectionBudget:
    """Size the admin connection cap under the open-file limit, and say what was chosen."""
    limit = open_file_limit()
    cap = max(1, min(max_connections, limit - reserve))
    budget = ConnectionBudget(cap=cap, open_files=limit, reserve=reserve)
    fields = {"max_connections": cap, "open_files": limit, "fd_reserve": reserve}
    if cap < max_connections:
        log.warning(
            "open-file limit %d leaves %d admin connections (of http.max_connections %d) "
            "after %d kept in reserve: raise LimitNOFILE",
            limit,
            cap,
            max_connections,
            reserve,
            extra=fields,
        )
    else:
        log.info("admin http: at most %d connections (open-file limit %d)", cap, limit,
                 extra=fields)  # fmt: skip
    return budget


class ConnectionLimiter:
    """A protocol factory around aiohttp's that enforces the cap and the header deadline."""

    def __init__(
        self, factory: Callable[[], asyncio.Protocol], cap: int, header_timeout: float
    ) -> None:
        self.factory = factory
        self.cap = cap
        self.header_timeout = header_timeout
        self.open: set[_Limited] = set()
        self.waiting: dict[_Limited, None] = {}  # no request head yet, oldest first
        self.displaced = 0
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) >= self.cap:
            if not self.waiting:
                self.refused += 1
                return _Refused()
            self.displaced += 1
            next(iter(self.waiting)).abort()
        return _Limited(self, self.factory())


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _Limited(asyncio.Protocol):
    """Passes everything to aiohttp's handler; watches for the end of the first head."""

    def __init__(self, limiter: ConnectionLimiter, inner: asyncio.Protocol) -> None:
        self.limiter = limiter
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.limiter.open.add(self)
        self.limiter.waiting[self] = None
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.limiter.header_timeout, self._expire)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.timer is not None:
            seen = self.tail + data
            if _HEAD_END in seen:
                self._stop_waiting()
            else:
                self.tail = seen[-(len(_HEAD_END) - 1) :]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        self.inner.connection_lost(exc)

    def abort(self) -> None:
        self._forget()
        if self.transport is not None:
            self.transport.abort()

    def _expire(self) -> None:
        self.timer = None
        self.limiter.timed_out += 1
        self.abort()

    def _stop_waiting(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.limiter.waiting.pop(self, None)

    def _forget(self) -> None:
        self._stop_waiting()
        self.limiter.open.discard(self)


async def serve(
    runner: web.AppRunner, host: str, port: int, budget: ConnectionBudget, header_timeout: float
) -> tuple[asyncio.Server, ConnectionLimiter]:
    """Listen on host:port with `runner`'s handlers behind the limiter (close the server,
    then clean the runner up)."""
    assert runner.server is not None, "runner.setup() first"
    limiter = ConnectionLimiter(runner.server, budget.cap, header_timeout)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(limiter, host, port, backlog=BACKLOG, reuse_address=True)
    return server, limiter
