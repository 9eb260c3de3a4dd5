"""Poison and useless events against a real `rolloutd run` on real Tansu: the daemon stays
up, rejects or counts each, and goes on with the events after them."""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers import Tansu, free_port
from test_daemon import GUARDED, TOPICS, Daemon, Kafka, config_text, requests

pytestmark = pytest.mark.timeout(120)

HUGE = b"100000000000000000000000"


@pytest.fixture
def daemon_at(tmp_path: Path, tansu: Tansu) -> Any:
    """A daemon on the test's broker with its admin port, and that port."""
    made: list[Daemon] = []

    def make() -> tuple[Daemon, int]:
        port = free_port()
        http = f'{{listen: "127.0.0.1:{port}"}}'
        daemon = Daemon(
            tmp_path, config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED, None, http)
        )
        made.append(daemon)
        return daemon, port

    yield make
    for daemon in made:
        daemon.stop()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _metric(port: int, name: str, **labels: str) -> float | None:
    samples = await asyncio.to_thread(_scrape, port)
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_a_huge_count_is_rejected_and_the_daemon_goes_on(
    tansu: Tansu, daemon_at: Any
) -> None:
    tansu.create_topics(TOPICS)
    daemon, port = daemon_at()
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        now = str(time.time()).encode()
        huge = b'{"ts": %s, "type": "requests", "rollout": "co", "count": %s, "errors": 0}'
        await kafka.send(requests("canary", 5, 0), huge % (now, HUGE), requests("canary", 50, 25))
        flags = await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
        assert flags[-1]["percent"] == 0
        assert daemon.proc is not None
        assert daemon.proc.poll() is None
        invalid = await _metric(
            port, "rolloutd_events_invalid_total", source="kafka", reason="out_of_range"
        )
        assert invalid == 1.0
        assert await _metric(port, "rolloutd_events_total", source="kafka") == 2.0
        assert await _metric(port, "rolloutd_events_failed_total", source="kafka") == 0.0
        # After a restart it still runs, and still takes events.
        assert daemon.signal(signal.SIGKILL) == -signal.SIGKILL
        daemon.start()
        await kafka.send(requests("canary", 5, 0))
        deadline = time.monotonic() + 30
        while await _metric(port, "rolloutd_events_total", source="kafka") != 1.0:
            assert time.monotonic() < deadline, "the restarted daemon took no event"
            await asyncio.sleep(0.1)
    assert daemon.proc.poll() is None
    assert daemon.signal(signal.SIGTERM) == 0
    assert "int too large" not in daemon.output()


async def test_future_old_unrouted_and_ignored_events_are_counted(
    tansu: Tansu, daemon_at: Any
) -> None:
    tansu.create_topics(TOPICS)
    daemon, port = daemon_at()
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        # Known from the start, at 0.
        for reason in ("too_old", "unrouted", "ignored"):
            dropped = await _metric(
                port, "rolloutd_events_dropped_total", source="kafka", reason=reason
            )
            assert dropped == 0.0, reason
        future = {**requests("canary", 50, 50), "ts": "9999-12-31T00:00:00Z"}
        soon = {**requests("canary", 50, 50), "ts": time.time() + 600}
        old = {**requests("canary", 50, 50), "ts": time.time() - 3600}
        unrouted = {**requests("canary", 50, 50), "rollout": "nope"}
        ignored = requests("control", 50, 50)  # no trigger reads the control cohort
        await kafka.send(future, soon, old, unrouted, ignored)
        await kafka.send(requests("canary", 20, 0))

        async def count(name: str, **labels: str) -> float | None:
            return await _metric(port, name, source="kafka", **labels)

        deadline = time.monotonic() + 30
        while await count("rolloutd_events_total") != 4.0:  # old, unrouted, ignored, the last
            assert time.monotonic() < deadline, "the events were not all taken"
            await asyncio.sleep(0.1)
        assert await count("rolloutd_events_invalid_total", reason="future_timestamp") == 2.0
        for reason in ("too_old", "unrouted", "ignored"):
            assert await count("rolloutd_events_dropped_total", reason=reason) == 1.0, reason
        # Nothing of the breaching future and old events counted: the canary is not rolled back.
        await kafka.settle(1.0)
        assert all(f["phase"] == "progressing" for f in kafka.seen["rollout.flags"])
    assert daemon.signal(signal.SIGTERM) == 0
