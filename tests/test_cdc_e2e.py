"""Migrations watched through CDC, end to end: Debezium events on real Tansu into the daemon."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers import Tansu, free_port
from test_daemon import TOPICS, Daemon, Kafka, config_text

SOURCE, TARGET = "pg.public.customers", "pg.public.customers_v2"
ROLLOUT = """
triggers:
  validation: {metric: "counter:data_validation_failures", window: 60s, op: ">", threshold: 0}
  stalled:
    metric: "gauge:migration_progress"
    window: 3s
    op: unchanged
    action: alert
    severity: warning
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 10, hold: 600s}, {percent: 100}]
    triggers: [TRIGGERS]
"""
MIGRATION = f"""
migrations:
  - name: customers-v2
    rollout: co
    source: {{topic: {SOURCE}, table: public.customers}}
    target: {{topic: {TARGET}, table: public.customers_v2}}
    key: [id]
    columns: {{id: id, email: "lower(email)"}}
    grace: 2s
"""
_lsn = itertools.count(1000)


def change(table: str, op: str, row: dict[str, Any]) -> bytes:
    now_ms = int(time.time() * 1000)
    return json.dumps(
        {
            "before": {"id": row["id"]} if op == "u" else None,
            "after": row,
            "source": {
                "db": "postgres",
                "schema": "public",
                "table": table,
                "ts_ms": now_ms,
                "snapshot": "true" if op == "r" else "false",
                "lsn": next(_lsn),
            },
            "op": op,
            "ts_ms": now_ms + 5,
        }
    ).encode()


def start(tansu: Tansu, tmp_path: Path, triggers: str, port: int = 0) -> Daemon:
    tansu.create_topics([*TOPICS, SOURCE, TARGET])
    rollout = ROLLOUT.replace("TRIGGERS", triggers)
    http = f'{{listen: "127.0.0.1:{port}"}}'
    config = config_text(tansu.bootstrap, tmp_path / "s.db", rollout, http=http)
    daemon = Daemon(tmp_path, config + MIGRATION)
    _started.append(daemon)
    daemon.start()
    return daemon


_started: list[Daemon] = []


@pytest.fixture(autouse=True)
def _stop_daemons() -> Iterator[None]:
    """A failed assertion must not leave a daemon running."""
    yield
    while _started:
        _started.pop().stop()


async def test_dual_write_that_drops_one_percent_of_updates_rolls_back(
    tansu: Tansu, tmp_path: Path
) -> None:
    port = free_port()
    daemon = start(tansu, tmp_path, "validation", port)
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        for i in range(200):
            email = f"User{i}@Example.com"
            row = {"id": i, "email": email}
            await kafka.send(change("customers", "c", row), topic=SOURCE)
            await kafka.send(
                change("customers_v2", "c", {**row, "email": email.lower()}), topic=TARGET
            )
        await kafka.settle(2.5)
        assert kafka.seen["rollout.flags"][-1]["phase"] == "progressing"  # all matched
        for i in range(200):
            email = f"New{i}@Example.com"
            row = {"id": i, "email": email}
            await kafka.send(change("customers", "u", row), topic=SOURCE)
            if i % 100 != 7:  # the target silently drops 1% of the updates
                target_row = {**row, "email": email.lower()}
                await kafka.send(change("customers_v2", "u", target_row), topic=TARGET)
        flags = await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
        decisions = await kafka.wait_for(
            "rollout.decisions", lambda d: any(x.get("state") == "firing" for x in d)
        )
    assert flags[-1]["percent"] == 0
    firing = next(d for d in decisions if d.get("state") == "firing")
    assert firing["trigger"] == "validation"
    # It fires on the first failure judged; the second dropped key may be judged with it or
    # a moment later, depending on where the grace deadlines fall.
    assert firing["value"] in (1.0, 2.0)
    # The admin API and the CLI show the migration and its offending keys.
    migration, status = await asyncio.to_thread(_api_and_cli, port)
    assert migration["failures"]["mismatch"] == 2
    assert sorted(k["key"] for k in migration["sample_keys"]) == [[7], [107]]
    assert migration["progress"]["ratio"] == 1.0
    assert "customers-v2" in status
    assert "mismatch 2" in status
    assert daemon.signal(signal.SIGTERM) == 0


async def test_a_stalled_backfill_raises_the_stall_alert(tansu: Tansu, tmp_path: Path) -> None:
    daemon = start(tansu, tmp_path, "stalled")
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        for i in range(100):
            await kafka.send(change("customers", "r", {"id": i, "email": f"u{i}@x"}), topic=SOURCE)
        for i in range(50):  # the backfill copies half, then stops
            await kafka.send(
                change("customers_v2", "c", {"id": i, "email": f"u{i}@x"}), topic=TARGET
            )
        decisions = await kafka.wait_for(
            "rollout.decisions", lambda d: any(x["kind"] == "alert" for x in d)
        )
    alert = next(d for d in decisions if d["kind"] == "alert")
    assert (alert["trigger"], alert["severity"], alert["status"]) == (
        "stalled",
        "warning",
        "firing",
    )
    stalled = next(d for d in decisions if d["kind"] == "trigger")
    assert stalled["value"] == 0.5
    assert daemon.signal(signal.SIGTERM) == 0


def _api_and_cli(port: int) -> tuple[dict[str, Any], str]:
    deadline = time.monotonic() + 10
    while True:  # until both dropped updates were judged (their grace ends)
        url = f"http://127.0.0.1:{port}/api/v1/migrations"
        with urllib.request.urlopen(url, timeout=5) as r:
            (migration,) = json.loads(r.read())["migrations"]
        if migration["failures"].get("mismatch") == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    status = subprocess.run(
        [sys.executable, "-m", "rolloutd", "status", "--url", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return migration, status.stdout
