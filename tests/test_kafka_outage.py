"""A broker outage against the real daemon on a real Tansu: readiness and
`rolloutd_source_up` follow the broker, and the client library's repeated errors stay few."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest

from brokers import Tansu, free_port
from rolloutd.app.logthrottle import RepeatThrottle
from test_daemon import GUARDED, TOPICS, Kafka, config_text, daemon_factory, requests
from test_kafka_start import get, until_events, until_ready

__all__ = ["daemon_factory"]  # the fixture, shared with test_daemon

pytestmark = pytest.mark.timeout(120)
DOWN_AFTER = 1.0
LOG_INTERVAL = 2.0
OUTAGE = 6.0


def source_up(port: int) -> float | None:
    _, text = get(port, "/metrics")
    found = re.search(r'^rolloutd_source_up\{source="kafka"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


async def until_status(port: int, status: int, deadline: float) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        code, body = await asyncio.to_thread(get, port, "/readyz")
        if code == status:
            return time.monotonic() - started, json.loads(body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz did not answer {status} within {deadline}s")


def client_lines(log: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return [line for line in lines if str(line.get("logger", "")).startswith("aiokafka")]


async def test_readiness_and_source_up_follow_a_broker_outage(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    port = free_port()
    config = config_text(
        tansu.bootstrap, tmp_path / "s.db", GUARDED, http=f'{{listen: "127.0.0.1:{port}"}}'
    ).replace(
        "auto_offset_reset: earliest}",
        f"auto_offset_reset: earliest, down_after: {DOWN_AFTER}s,"
        f" client_log_interval: {LOG_INTERVAL}s}}",
    )
    daemon = daemon_factory(config)
    daemon.start()
    await until_ready(port)
    assert await asyncio.to_thread(source_up, port) == 1.0

    tansu.stop()
    lines_before = len(client_lines(daemon.output()))
    took, body = await until_status(port, 503, deadline=DOWN_AFTER + 4)
    assert body["checks"]["kafka connected"] is False
    assert "kafka" in body["reasons"]
    assert await asyncio.to_thread(source_up, port) == 0.0
    await asyncio.sleep(OUTAGE - took)  # the outage goes on: the library keeps failing
    code, _ = await asyncio.to_thread(get, port, "/readyz")
    assert code == 503
    during = client_lines(daemon.output())[lines_before:]

    tansu.start()  # the same port; memory storage lost the topics
    tansu.create_topics(TOPICS)
    await until_status(port, 200, deadline=20)
    assert await asyncio.to_thread(source_up, port) == 1.0
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.send(requests("canary", 10, 0))
    assert await until_events(port, 1) == 1  # and it consumes again

    # Each kind of repeated line at most once per interval (plus the first of each).
    kinds = {(line["logger"], line["level"], re.sub(r"\d+", "N", line["event"])) for line in during}
    print(f"503 after {took:.2f}s; {len(during)} client lines of {len(kinds)} kinds in {OUTAGE}s")
    assert len(during) <= len(kinds) * (OUTAGE / LOG_INTERVAL + 2), during
    assert daemon.proc is not None
    assert daemon.proc.poll() is None


def _record(msg: str, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("x",), None)


def test_repeated_client_lines_are_held_back_and_counted() -> None:
    now = [0.0]
    throttle = RepeatThrottle(("aiokafka",), interval=10.0, clock=lambda: now[0])
    assert throttle.filter(_record("Unable to connect: %s"))
    held = 0
    for _ in range(50):
        now[0] += 0.1
        held += not throttle.filter(_record("Unable to connect: %s"))
    assert held == 50
    assert throttle.filter(_record("Other failure: %s"))  # another kind has its own budget
    assert throttle.filter(_record("Ours: %s", name="rolloutd.kafka"))  # never held back
    assert not throttle.filter(_record("Unable to connect: %s", name="aiokafka.conn"))
    now[0] = 10.0
    record = _record("Unable to connect: %s")
    assert throttle.filter(record)
    assert record.repeated == 51  # type: ignore[attr-defined]
    assert "51 more like this" in record.getMessage()
