"""Two `rolloutd run` on one PostgreSQL state and a real Tansu: failover and split brain.

One daemon leads a rollout mid-step under traffic while the other stands by (not ready,
`rolloutd_leader 0`, reads served, mutations refused). SIGKILL the leader: the standby takes
over from the stored state and offsets and walks on. The killed one, restarted, stands by.
Then SIGSTOP the second leader for longer than its lease: the first takes over, a regression
arrives and is rolled back once; resumed, the stopped one must not publish anything and
exits 1 (its lease is gone). Across all of it the flag messages carry strictly increasing
revisions (a message redelivered from the outbox repeats its revision and is dropped by
revision, as consumers do), no step is repeated or skipped, and the webhook got the alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from brokers import Tansu, free_port
from test_daemon import GUARDED, TOPICS, Daemon, Kafka, config_text, requests
from test_kafka_start import get, until_ready

LEASE = 2.0
TOKEN = "failover-token"
STEPS = """steps:
      - {percent: 10, hold: 2s}
      - {percent: 25, hold: 3s}
      - {percent: 50, hold: 600s}
      - {percent: 100}"""
ROLLOUT = GUARDED.replace("steps: [{percent: 10, hold: 600s}, {percent: 100}]", STEPS)

pytestmark = pytest.mark.timeout(240)


def config(tansu: Tansu, url: str, port: int, hook: int) -> str:
    text = config_text(tansu.bootstrap, Path("unused.db"), ROLLOUT)
    text = text.replace('state: {path: "unused.db"}', f'state: {{url: "{url}", lease: {LEASE}s}}')
    text = text.replace("http: {", f'http: {{token: "{TOKEN}", ')
    text = text.replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"')
    return text + (
        "alerts:\n  - {name: hook, type: webhook, severities: [critical],"
        f' url: "http://127.0.0.1:{hook}/hook"}}\n'
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[list[Daemon]]:
    made: list[Daemon] = []
    yield made
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGCONT)
        daemon.stop()


@contextlib.asynccontextmanager
async def webhook() -> AsyncIterator[tuple[int, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1], received
    finally:
        await runner.cleanup()


def post(port: int, path: str) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def until_standby(port: int, deadline: float = 30.0) -> dict[str, Any]:
    """Poll /readyz until it answers as a standby; its body."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(OSError):
            status, text = await asyncio.to_thread(get, port, "/readyz")
            body = json.loads(text)
            if status == 503 and "standby" in body.get("reasons", {}).get("leader", ""):
                return dict(body)
        await asyncio.sleep(0.05)
    raise AssertionError("never a standby")


async def traffic(kafka: Kafka, stop: asyncio.Event) -> None:
    """A healthy canary, four times a second, until `stop`."""
    while not stop.is_set():
        await kafka.send(requests("canary", 20, 0))
        await asyncio.sleep(0.25)


def distinct(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each revision once: a redelivery from the outbox repeats its message exactly."""
    seen: dict[int, dict[str, Any]] = {}
    for message in messages:
        earlier = seen.setdefault(message["revision"], message)
        assert earlier == message, "one revision, two different messages"
    return list(seen.values())


async def test_failover_on_sigkill_and_no_publishing_after_sigstop(
    tansu: Tansu, pg_url: str, pair: list[Daemon], tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    ports = free_port(), free_port()
    async with webhook() as (hook, received), Kafka(tansu.bootstrap) as kafka:
        for name, port in zip("ab", ports, strict=True):
            (tmp_path / name).mkdir()
            pair.append(Daemon(tmp_path / name, config(tansu, pg_url, port, hook)))
        first, second = pair
        first.start()
        await until_ready(ports[0])
        second.start()
        standby = await until_standby(ports[1])
        assert standby["checks"]["leading"] is False
        assert standby["checks"]["state restored"] is True
        status, text = await asyncio.to_thread(get, ports[1], "/metrics")
        assert "\nrolloutd_leader 0.0\n" in text
        status, text = await asyncio.to_thread(get, ports[1], "/api/v1/rollouts/co")
        assert status == 200
        assert json.loads(text)["percent"] == 10
        assert await asyncio.to_thread(post, ports[1], "/api/v1/rollouts/co/pause") == 503

        quiet = asyncio.Event()
        sending = asyncio.create_task(traffic(kafka, quiet))
        await kafka.wait_for("rollout.flags", lambda f: bool(f) and f[-1]["percent"] == 25)
        assert first.signal(signal.SIGKILL) == -signal.SIGKILL  # mid-step, under traffic
        killed = time.monotonic()
        await until_ready(ports[1])
        assert (await asyncio.to_thread(get, ports[1], "/healthz"))[0] == 200
        print(f"\nthe standby leads {time.monotonic() - killed:.2f}s after the SIGKILL")
        await kafka.wait_for("rollout.flags", lambda f: f[-1]["percent"] == 50, deadline=30)
        quiet.set()
        await sending

        first.start()  # back, as a standby of the second
        await until_standby(ports[0])
        assert second.proc is not None
        second.proc.send_signal(signal.SIGSTOP)  # longer than its lease: the first leads
        await until_ready(ports[0])
        await kafka.settle(1.0)
        old = [m for t in kafka.seen.values() for m in t if m.get("generation") == 2]
        await kafka.send(requests("canary", 5000, 2500))  # 50%, whatever healthy traffic is left
        await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
        second.proc.send_signal(signal.SIGCONT)  # it reads the regression too, and must not act
        assert second.proc.wait(timeout=30) == 1
        await kafka.wait_for("rollout.flags", lambda f: bool(received), deadline=30)
        await kafka.settle(2.0)

    said = second.output()
    assert "another daemon took over the lease" in said or "the lease is lost" in said
    after = [m for t in kafka.seen.values() for m in t if m.get("generation") == 2]
    assert after == old  # nothing of the stopped leader's generation after it resumed
    flags = distinct(kafka.seen["rollout.flags"])
    assert [(f["percent"], f["phase"], f["generation"]) for f in flags] == [
        (10, "progressing", 1),
        (25, "progressing", 1),
        (50, "progressing", 2),
        (0, "rolled_back", 3),
    ]
    revisions = [f["revision"] for f in flags]
    assert revisions == sorted(set(revisions))
    rollbacks = {
        json.dumps(d, sort_keys=True)
        for d in kafka.seen["rollout.decisions"]
        if d.get("reason") == "rollback: errors"
    }
    assert len(rollbacks) == 1  # rolled back once, by the third generation
    firing = [r for r in received if r["status"] == "firing" and r["key"] == "co/errors"]
    assert firing
    assert firing[0]["action"] == "rollback"


async def test_failover_in_a_consumer_group_waits_for_the_dead_members_session(
    tansu: Tansu, pg_url: str, pair: list[Daemon], tmp_path: Path
) -> None:
    """With `group_id` the new leader joins the group and gets the partitions once the killed
    member's session expired (a dynamic member: with a lease that is the default); then it
    decides on what was produced while nobody led."""
    tansu.create_topics(TOPICS)
    ports = free_port(), free_port()
    group = f"ha-{tmp_path.name[-8:]}"
    async with webhook() as (hook, _), Kafka(tansu.bootstrap) as kafka:
        for name, port in zip("ab", ports, strict=True):
            (tmp_path / name).mkdir()
            text = (
                config(tansu, pg_url, port, hook)
                .replace(
                    "group_id: null,",
                    f"group_id: {group}, session_timeout: 6s,",  # a dynamic member, with a lease
                )
                .replace("{percent: 10, hold: 2s}", "{percent: 10, hold: 600s}")
            )
            pair.append(Daemon(tmp_path / name, text))
        first, second = pair
        first.start()
        await until_ready(ports[0])
        second.start()
        await until_standby(ports[1])
        await kafka.send(requests("canary", 20, 0))
        await kafka.wait_for("rollout.flags", lambda f: bool(f))
        assert first.signal(signal.SIGKILL) == -signal.SIGKILL
        killed = time.monotonic()
        await kafka.send(requests("canary", 5000, 2500))  # produced while nobody leads
        flags = await kafka.wait_for(
            "rollout.flags", lambda f: f[-1]["phase"] == "rolled_back", deadline=60
        )
        print(f"\nrolled back by the new leader {time.monotonic() - killed:.2f}s after the kill")
        await kafka.settle(1.0)
    assert [(f["percent"], f["generation"]) for f in distinct(flags)] == [(10, 1), (0, 2)]
