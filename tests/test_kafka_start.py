"""First start on a real Tansu: ready means consuming, and nothing produced after the start
is lost, while what came before it is not replayed (`auto_offset_reset: latest`)."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from brokers import Tansu, free_port
from rolloutd.adapters.kafka_positions import drop_before_start
from test_daemon import GUARDED, TOPICS, Kafka, config_text, daemon_factory, requests

__all__ = ["daemon_factory"]  # the fixture, shared with test_daemon

pytestmark = pytest.mark.timeout(120)
DEADLINE = 30.0


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def until_ready(port: int, deadline: float = DEADLINE) -> float:
    """Poll /readyz until 200; the time it answered 200."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            status, _ = await asyncio.to_thread(get, port, "/readyz")
        except (urllib.error.URLError, ConnectionError):
            status = 0
        if status == 200:
            return time.monotonic()
        await asyncio.sleep(0.02)
    raise AssertionError("never ready")


def kafka_events(port: int) -> int:
    """rolloutd_events_total{source="kafka"}; 0 while the daemon does not answer yet."""
    try:
        _, text = get(port, "/metrics")
    except (urllib.error.URLError, ConnectionError):
        return 0
    found = re.search(r'^rolloutd_events_total\{source="kafka"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


async def until_events(port: int, expected: int, deadline: float = DEADLINE) -> int:
    end = time.monotonic() + deadline
    seen = 0
    while time.monotonic() < end:
        seen = await asyncio.to_thread(kafka_events, port)
        if seen >= expected:
            return seen
        await asyncio.sleep(0.1)
    return seen


@pytest.mark.parametrize("group", [True, False], ids=["consumer-group", "no-group"])
async def test_a_spike_produced_as_soon_as_ready_is_counted_in_full(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path, group: bool
) -> None:
    tansu.create_topics(TOPICS)
    async with Kafka(tansu.bootstrap) as kafka:  # history from before the daemon started
        await kafka.send(*[requests("canary", 1, 0) for _ in range(7)])
    port = free_port()
    group_id = f"fresh-{uuid.uuid4().hex[:8]}" if group else "null"
    config = config_text(
        tansu.bootstrap, tmp_path / "s.db", GUARDED, http=f'{{listen: "127.0.0.1:{port}"}}'
    ).replace(
        "group_id: null, auto_offset_reset: earliest",
        f"group_id: {group_id}, auto_offset_reset: latest",
    )
    daemon = daemon_factory(config)
    daemon.start()
    await until_ready(port)
    spike = [requests("canary", 10, 0) for _ in range(40)]
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.send(*spike)
    assert await until_events(port, len(spike)) == len(spike)
    # Nothing more comes: the history before the start was not replayed.
    await asyncio.sleep(1.0)
    assert await asyncio.to_thread(kafka_events, port) == len(spike)


class _Record:
    def __init__(self, timestamp: int) -> None:
        self.timestamp = timestamp


@pytest.mark.parametrize(
    ("stamps", "expected"),
    [
        ([], (0, False)),
        ([5, 9], (2, False)),  # all older than the start: dropped, still looking
        ([5, 10, 3], (1, True)),  # from the first at or after the start on, all is kept
        ([10, 3], (0, True)),
    ],
)
def test_records_older_than_the_start_are_dropped_up_to_the_first_newer_one(
    stamps: list[int], expected: tuple[int, bool]
) -> None:
    assert drop_before_start([_Record(s) for s in stamps], 10) == expected
