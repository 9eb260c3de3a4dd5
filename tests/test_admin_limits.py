"""Bounded admin HTTP: the connection cap under the open-file limit, displacement of idle
clients, the header deadline, and a daemon that keeps consuming while its admin port is
flooded (real process, real Tansu, a low RLIMIT_NOFILE); nested JSON bodies are a 400."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from brokers import Tansu, free_port
from helpers import until
from rolloutd.adapters.connections import ConnectionBudget, ConnectionLimiter, serve
from rolloutd.config import Http
from test_daemon import TOPICS, Kafka, config_text, requests
from test_deploy import UNIT, unit_directives
from test_http import TOKEN, start_daemon

# -- the limiter, in process ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def admin(cap: int, header_timeout: float) -> AsyncIterator[tuple[int, ConnectionLimiter]]:
    """A real aiohttp app behind the limiter on a loopback port; /hold waits for /release."""
    release = asyncio.Event()

    async def hold(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="held")

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/hold", hold)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    server, limiter = await serve(
        runner, "127.0.0.1", port, ConnectionBudget(cap, 0, 0), header_timeout
    )
    try:
        yield port, limiter
    finally:
        release.set()
        server.close()
        await runner.cleanup()


async def get(port: int, path: str = "/ok") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def test_at_the_cap_a_request_displaces_the_oldest_idle_connection() -> None:
    async with admin(cap=3, header_timeout=60) as (port, limiter):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await until(lambda: len(limiter.open) == 3)
        assert (await get(port)).endswith(b"ok")
        assert limiter.displaced == 1
        assert await closed_by_server(idle[0][0])  # the oldest went
        idle[1][1].write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # the others still serve
        assert b"200 OK" in await asyncio.wait_for(idle[1][0].readuntil(b"ok"), 5)
        for _, writer in idle:
            writer.close()


async def test_at_the_cap_with_every_connection_in_a_request_a_new_one_is_closed() -> None:
    async with admin(cap=2, header_timeout=60) as (port, limiter):
        busy = [asyncio.create_task(get(port, "/hold")) for _ in range(2)]
        await until(lambda: len(limiter.open) == 2 and not limiter.waiting)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_by_server(reader)
        writer.close()
        assert limiter.refused == 1
        for task in busy:
            task.cancel()


async def test_a_client_that_sends_no_complete_head_in_time_is_closed() -> None:
    async with admin(cap=10, header_timeout=0.3) as (port, limiter):
        silent = await asyncio.open_connection("127.0.0.1", port)
        slow = await asyncio.open_connection("127.0.0.1", port)
        slow[1].write(b"GET /ok HTTP/1.1\r\nHost:")
        assert await closed_by_server(silent[0])
        assert await closed_by_server(slow[0])
        assert limiter.timed_out == 2
        assert not limiter.open
        assert (await get(port)).endswith(b"ok")  # a prompt client is unaffected
        silent[1].close()
        slow[1].close()


def plan_in_child(soft: int, hard: int, max_connections: int, reserve: int) -> str:
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stdout, format='%(message)s');"
        "logging.getLogger().setLevel('INFO');"
        "from rolloutd.adapters.connections import plan;"
        f"print(plan({max_connections}, {reserve}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_the_cap_is_sized_under_the_open_file_limit_and_logged() -> None:
    tight = plan_in_child(300, 300, 256, 128)
    assert "ConnectionBudget(cap=172, open_files=300, reserve=128)" in tight
    assert "raise LimitNOFILE" in tight
    # A soft limit below the hard one is raised first: then the configured cap fits.
    raised = plan_in_child(300, 4096, 256, 128)
    assert "ConnectionBudget(cap=256, open_files=4096, reserve=128)" in raised
    assert "at most 256 connections" in raised


# -- the daemon ------------------------------------------------------------------------------


def test_a_deeply_nested_body_is_refused_with_400(tmp_path: Path) -> None:
    proc, api, log = start_daemon(tmp_path, TOKEN)
    try:
        request = urllib.request.Request(
            api.base + "/api/v1/rollouts/co/pause", method="POST", data=b"[" * 60_000
        )
        request.add_header("Authorization", f"Bearer {TOKEN}")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
        assert refused.value.code == 400
        assert "nested too deeply" in json.loads(refused.value.read())["error"]
        assert api.call("/healthz")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert "Traceback" not in log.read_text()


OPEN_FILES = 320  # the child's RLIMIT_NOFILE: a cap of 192 admin connections, 128 kept
FLOOD = 1100
ROLLOUT = """
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 10, hold: 600s}, {percent: 100}]
"""


def events_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^rolloutd_events_total\{[^}]*\} (\S+)$", text, re.M))


def flood(port: int, count: int) -> list[socket.socket]:
    """Connections that never send a byte (connect() completes later for some)."""
    sockets = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    return sockets


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def poll_events(port: int, want: float, deadline: float = 60.0) -> float:
    end, seen = time.monotonic() + deadline, -1.0
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            seen = await asyncio.to_thread(events_total, port)
            if seen >= want:
                return seen
        await asyncio.sleep(0.2)
    raise AssertionError(f"rolloutd_events_total reached {seen}, not {want}")


def start_with_open_files(config: Path, log: Path, limit: int) -> subprocess.Popen[bytes]:
    """`rolloutd run` as a child whose RLIMIT_NOFILE (soft and hard) is `limit`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "rolloutd", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)),
        )


async def test_events_keep_flowing_while_the_admin_port_is_flooded(
    tansu: Tansu, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    port = free_port()
    http = f'{{listen: "127.0.0.1:{port}", header_timeout: 60s}}'
    config = tmp_path / "rolloutd.yaml"
    config.write_text(config_text(tansu.bootstrap, tmp_path / "s.db", ROLLOUT, http=http))
    log = tmp_path / "rolloutd.log"
    proc = start_with_open_files(config, log, OPEN_FILES)
    flooding: list[socket.socket] = []
    try:
        async with Kafka(tansu.bootstrap) as kafka:
            await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)  # consuming
            await kafka.send(*(requests("canary", 10, 0) for _ in range(10)))
            before = await poll_events(port, 10)
            flooding = flood(port, FLOOD)
            await until(lambda: open_files(proc.pid) >= 192, within=30)  # the cap is full
            await kafka.send(*(requests("canary", 10, 0) for _ in range(50)))
            assert await poll_events(port, before + 50) == before + 50
            assert open_files(proc.pid) < OPEN_FILES - 64  # the reserve stayed free
        assert proc.poll() is None
    finally:
        for s in flooding:
            s.close()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Too many open files" not in text
    assert "out of system resource" not in text  # asyncio's accept() on EMFILE
    assert "at most 192 connections" not in text  # the cap was lowered, with a warning:
    assert "leaves 192 admin connections" in text


def test_the_unit_gives_the_default_cap_room_above_the_reserve() -> None:
    (limit,) = unit_directives(UNIT.read_text())["Service"]["LimitNOFILE"]
    defaults = Http()
    assert int(limit) - defaults.fd_reserve >= 2 * defaults.max_connections
