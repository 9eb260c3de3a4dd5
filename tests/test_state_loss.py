"""A lost state file is not silent, and flag revisions never repeat: a real daemon on real
Tansu, alerting a real local webhook."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from brokers import Tansu
from helpers import T0, rollout
from rolloutd.adapters.store import REVISIONS_PER_EPOCH, Batch, OutboxItem, Store, StoreError
from rolloutd.app.messages import Sinks
from rolloutd.app.pipeline import Pipeline
from rolloutd.core.spec import EngineSpec
from test_daemon import TOPICS, WALKING, Daemon, Kafka, config_text

pytestmark = pytest.mark.timeout(180)
WARNING = "starting without state"


SPEC = EngineSpec(rollouts=(rollout(),))
SINKS = Sinks(flags_topic="rollout.flags")


def revisions(items: list[OutboxItem]) -> list[int]:
    return [
        json.loads(i.payload)["revision"] for i in items if str(i.sink) == "kafka:rollout.flags"
    ]


# -- the store's epoch ----------------------------------------------------------------------


def test_a_new_store_takes_its_epoch_from_the_clock_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    before = time.time_ns() // 1_000_000
    with Store.open(path) as store:
        assert before <= store.epoch <= time.time_ns() // 1_000_000
        assert store.created
        assert store.revision_floor == store.epoch * REVISIONS_PER_EPOCH
        epoch = store.epoch
    with Store.open(path) as store:
        assert (store.epoch, store.created) == (epoch, False)


def test_revisions_start_above_the_floor_and_continue_when_the_state_is_kept(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as store:
        first = revisions(Pipeline(SPEC, store, SINKS).start(T0))
        floor = store.revision_floor
    assert first == [floor + 1]
    with Store.open(path) as store:
        pipeline = Pipeline(SPEC, store, SINKS)
        assert pipeline.restored
        _, items = pipeline.command("co", "promote", T0 + 1)
    assert revisions(items) == [floor + 2]


def test_a_store_from_before_epochs_continues_its_own_revisions(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store.open(path) as store:
        store.commit(Batch(revisions={"new_co": 7}))
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'epoch'")
    conn.close()
    with Store.open(path) as store:
        assert (store.epoch, store.revision_floor) == (0, 0)
        assert revisions(Pipeline(SPEC, store, SINKS).start(T0)) == [8]


def test_a_corrupt_epoch_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    Store.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 'soon' WHERE key = 'epoch'")
    conn.close()
    with pytest.raises(StoreError, match="epoch"):
        Store.open(path)


# -- the real daemon --------------------------------------------------------------------------


class Hook:
    """A webhook receiver on a free loopback port that records every alert it gets."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.alerts.append(await request.json())
        return web.Response(status=200)

    def keyed(self, key: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["key"] == key]

    async def wait_for(self, key: str, count: int) -> list[dict[str, Any]]:
        for _ in range(300):
            if len(self.keyed(key)) >= count:
                return self.keyed(key)
            await asyncio.sleep(0.1)
        raise AssertionError(f"{count} x {key} not delivered; got {self.alerts}")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def daemon(tmp_path: Path, tansu: Tansu, hook: Hook) -> Daemon:
    config = config_text(tansu.bootstrap, tmp_path / "s.db", WALKING)
    config += f'alerts:\n  - {{name: hook, type: webhook, url: "{hook.url}"}}\n'
    return Daemon(tmp_path, config)


def delete_state(tmp_path: Path) -> None:
    for name in ("s.db", "s.db-wal", "s.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)


def backups(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("s.db.*.bak"))


async def run_until(proc: Daemon, kafka: Kafka, flags: int) -> list[dict[str, Any]]:
    """Start, wait until the flags topic holds `flags` messages, stop (SIGTERM, exit 0)."""
    proc.start()
    try:
        seen = await kafka.wait_for("rollout.flags", lambda f: len(f) >= flags)
        await kafka.settle(0.5)
    finally:
        assert proc.signal(signal.SIGTERM) == 0
    return list(seen)


async def test_a_deleted_state_file_warns_alerts_and_publishes_higher_revisions(
    tansu: Tansu, hook: Hook, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    proc = daemon(tmp_path, tansu, hook)
    try:
        async with Kafka(tansu.bootstrap) as kafka:
            first = await run_until(proc, kafka, 3)  # 10% -> 100% promoted -> completed
            assert proc.output().count(WARNING) == 1  # the first start has no state either
            await hook.wait_for("rolloutd/state-lost", 1)
            delete_state(tmp_path)
            both = await run_until(proc, kafka, len(first) + 3)
    finally:
        proc.stop()
    second = both[len(first) :]
    assert [f["percent"] for f in second] == [10, 100, 100]  # it started over at step 1
    assert min(f["revision"] for f in second) > max(f["revision"] for f in first)
    assert [f["revision"] for f in second] == sorted({f["revision"] for f in second})
    assert proc.output().count(WARNING) == 2
    lost = await hook.wait_for("rolloutd/state-lost", 2)
    assert (lost[-1]["status"], lost[-1]["severity"]) == ("firing", "warning")
    assert lost[-1]["details"]["state_path"] == str(tmp_path / "s.db")
    assert lost[-1]["details"]["requested"] == "no"


async def test_fresh_says_it_was_requested_and_a_kept_state_says_nothing(
    tansu: Tansu, hook: Hook, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    proc = daemon(tmp_path, tansu, hook)
    try:
        async with Kafka(tansu.bootstrap) as kafka:
            first = await run_until(proc, kafka, 3)
            await hook.wait_for("rolloutd/state-lost", 1)
            # State kept: no warning, no alert, and nothing is published again.
            proc.start()
            await kafka.settle(3.0)
            assert proc.signal(signal.SIGTERM) == 0
            assert kafka.seen["rollout.flags"] == first
            assert proc.output().count(WARNING) == 1
            proc.start("--fresh")
            both = await kafka.wait_for("rollout.flags", lambda f: len(f) >= len(first) + 1)
            fresh = await hook.wait_for("rolloutd/state-fresh", 1)
            assert proc.signal(signal.SIGTERM) == 0
    finally:
        proc.stop()
    assert both[len(first)]["revision"] > max(f["revision"] for f in first)
    assert fresh[0]["details"]["requested"] == "yes"
    assert "as requested (--fresh)" in fresh[0]["summary"]
    assert len(hook.keyed("rolloutd/state-lost")) == 1
    assert backups(tmp_path)  # the old state was moved aside, not deleted
