"""A SIGKILL in consumer-group mode, on a real Tansu: the restarted daemon consumes again well
before the dead member's session would have expired (static membership, KIP-345).

The gap is measured from the kill to the restarted daemon counting an event produced right
after the kill. Tansu pauses every static member's JoinGroup for max(3 s, session / 2) and
its SyncGroup for 3 s, so the gap here is about that plus the process start; a dynamic
member must first wait out the old session (about session + session / 2 on Tansu).

`ROLLOUTD_GAP_SESSION` (seconds) and `ROLLOUTD_GAP_STATIC=0` change the setup for
measuring (BENCHMARKS.md); with `ROLLOUTD_GAP_STATIC=0` (a dynamic member, as before static
membership) the assertion fails, and below a session of about 10 s Tansu's fixed pauses
alone exceed it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from brokers import Tansu, free_port
from rolloutd.adapters.kafka import instance_id
from rolloutd.config import ConfigError, KafkaSource, parse_config
from test_daemon import GUARDED, TOPICS, Kafka, config_text, daemon_factory, requests
from test_kafka_start import until_events, until_ready

__all__ = ["daemon_factory"]  # the fixture, shared with test_daemon

SESSION = float(os.environ.get("ROLLOUTD_GAP_SESSION", "20"))
STATIC = os.environ.get("ROLLOUTD_GAP_STATIC", "1") != "0"

pytestmark = pytest.mark.timeout(60 + 4 * SESSION)


async def test_a_killed_daemon_consumes_again_within_the_session_timeout(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    port = free_port()
    group = f"restart-{uuid.uuid4().hex[:8]}"
    config = config_text(
        tansu.bootstrap, tmp_path / "s.db", GUARDED, http=f'{{listen: "127.0.0.1:{port}"}}'
    ).replace(
        "group_id: null, auto_offset_reset: earliest",
        f"group_id: {group}, auto_offset_reset: latest, session_timeout: {SESSION:g}s, "
        f"static_membership: {str(STATIC).lower()}",
    )
    daemon = daemon_factory(config)
    daemon.start()
    await until_ready(port, deadline=SESSION * 2)
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.send(requests("canary", 10, 0))
        assert await until_events(port, 1) == 1

        assert daemon.signal(signal.SIGKILL) == -signal.SIGKILL
        killed = time.monotonic()
        daemon.start()
        await kafka.send(requests("canary", 10, 0))
        # At least: the first event is read again if its offset was not persisted yet.
        assert await until_events(port, 1, deadline=SESSION * 3) >= 1
    gap = time.monotonic() - killed
    print(f"\nsession {SESSION:g}s, static {STATIC}: consuming again {gap:.1f}s after SIGKILL")
    assert gap < SESSION


def _kafka(**fields: Any) -> KafkaSource:
    return KafkaSource.model_validate({"bootstrap_servers": "127.0.0.1:9092", **fields})


def test_the_static_member_id_is_stable_per_host_and_state_path(tmp_path: Path) -> None:
    source = _kafka(group_id="rolloutd")
    first = instance_id(source, str(tmp_path / "a.db"))
    assert first is not None
    assert first.startswith(f"{socket.gethostname()}-rolloutd-")
    assert instance_id(source, str(tmp_path / "a.db")) == first  # the next start: the same
    assert instance_id(source, str(tmp_path / "b.db")) != first  # a second daemon: another
    assert instance_id(_kafka(group_instance_id="edge-1"), "x.db") == "edge-1"
    assert instance_id(_kafka(static_membership=False), "x.db") is None
    assert instance_id(_kafka(group_id=None), "x.db") is None


def test_an_instance_id_without_static_membership_is_an_error_at_its_path() -> None:
    text = (
        'sources:\n  kafka: {bootstrap_servers: "127.0.0.1:9092", static_membership: false,'
        " group_instance_id: edge-1}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={})
    assert [e.split(":")[0] for e in caught.value.errors] == ["sources.kafka.group_instance_id"]
