"""The daemon end to end: a real `rolloutd run` process against real Tansu and mosquitto.

These tests run on the wall clock (the daemon is a real process), so their rollouts hold
steps for a second or two; they wait for conditions with deadlines, never for fixed times.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from brokers import Mosquitto, Tansu, free_port
from helpers import until
from rolloutd.adapters.store import REVISIONS_PER_EPOCH, Store
from rolloutd.app.service import Service
from rolloutd.config import parse_config

TOPICS = ["rollout.metrics", "rollout.commands", "rollout.flags", "rollout.decisions"]
DEADLINE = 30.0

pytestmark = pytest.mark.timeout(120)


def config_text(
    kafka: str,
    state: Path,
    rollout: str,
    mqtt: str | None = None,
    http: str = '{listen: "127.0.0.1:0"}',  # any free port: daemons never collide on 9108
) -> str:
    mqtt_part = (
        f'  mqtt: {{url: "{mqtt}", topics: ["telemetry/+/events"], client_id: rolloutd-test}}\n'
        if mqtt
        else ""
    )
    sinks = "sinks:\n  kafka: {}\n" + ("  mqtt: {}\n" if mqtt else "")
    return (
        rollout
        + "sources:\n"
        + f'  kafka: {{bootstrap_servers: "{kafka}", group_id: null,'
        + " auto_offset_reset: earliest}\n"
        + mqtt_part
        + sinks
        + f'state: {{path: "{state}"}}\n'
        + f"http: {http}\n"
    )


WALKING = """
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 10, hold: 1s}, {percent: 100}]
    bake: 1s
"""

GUARDED = """
triggers:
  errors:
    metric: error_rate
    window: 30s
    op: ">"
    threshold: 0.1
    for: 0s
    min_samples: 10
rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 10, hold: 600s}, {percent: 100}]
    triggers: [errors]
"""


class Daemon:
    """`rolloutd run` as a child process with its log in a file."""

    def __init__(self, tmp: Path, config: str) -> None:
        self.config = tmp / "rolloutd.yaml"
        self.config.write_text(config)
        self.log = tmp / "rolloutd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rolloutd",
                    "run",
                    "--config",
                    str(self.config),
                    "--grace",
                    "5",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=20)

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Any:
    made: list[Daemon] = []

    def make(config: str) -> Daemon:
        daemon = Daemon(tmp_path, config)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


class Kafka:
    """A producer and a reader of the daemon's output topics."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.seen: dict[str, list[dict[str, Any]]] = {"rollout.flags": [], "rollout.decisions": []}

    async def __aenter__(self) -> Kafka:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, max_request_size=16 << 20
        )
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.producer.start()
        await self.consumer.start()
        # Every partition: a topic auto-created by a client's metadata request (Tansu makes 4)
        # spreads keys over all of them.
        await self.consumer.topics()
        parts = [
            TopicPartition(t, p)
            for t in self.seen
            for p in sorted(self.consumer.partitions_for_topic(t) or {0})
        ]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.consumer.stop()

    async def send(self, *events: dict[str, Any] | bytes, topic: str = "rollout.metrics") -> None:
        for event in events:
            value = event if isinstance(event, bytes) else json.dumps(event).encode()
            await self.producer.send_and_wait(topic, value)

    async def wait_for(
        self, topic: str, check: Callable[[list[dict[str, Any]]], bool], deadline: float = DEADLINE
    ) -> list[dict[str, Any]]:
        end = time.monotonic() + deadline
        while not check(self.seen[topic]):
            if time.monotonic() > end:
                raise AssertionError(f"timed out; {topic} has {self.seen[topic]}")
            fetched = await self.consumer.getmany(timeout_ms=200)
            for tp, messages in fetched.items():
                self.seen[tp.topic].extend(json.loads(m.value) for m in messages)
        return self.seen[topic]

    async def settle(self, seconds: float = 1.0) -> None:
        """Read whatever else arrives within `seconds` (to show nothing more came)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            fetched = await self.consumer.getmany(timeout_ms=100)
            for tp, messages in fetched.items():
                self.seen[tp.topic].extend(json.loads(m.value) for m in messages)


def requests(cohort: str, count: int, errors: int) -> dict[str, Any]:
    return {
        "ts": time.time(),
        "type": "requests",
        "rollout": "co",
        "cohort": cohort,
        "count": count,
        "errors": errors,
    }


def nth(revision: int) -> int:
    """Which revision of its state store this is (1: the first the store handed out)."""
    return revision % REVISIONS_PER_EPOCH


def phases(flags: list[dict[str, Any]]) -> list[tuple[Any, str, int]]:
    return [(f["percent"], f["phase"], nth(f["revision"])) for f in flags]


async def test_flag_state_reaches_kafka_and_retained_mqtt(
    tansu: Tansu, mosquitto: Mosquitto, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", WALKING, mosquitto.url))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        flags = await kafka.wait_for("rollout.flags", lambda f: len(f) >= 3)
    assert phases(flags) == [(10, "progressing", 1), (100, "promoted", 2), (100, "completed", 3)]
    assert all(f["flag"] == "new_co" and f["rollout"] == "co" for f in flags)
    # A client that subscribes afterwards gets the retained latest state at once.
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="reader") as client:
        await client.subscribe("rollouts/flags/#", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
    assert str(message.topic) == "rollouts/flags/new_co"
    assert message.retain
    assert json.loads(message.payload)["revision"] == flags[-1]["revision"]
    assert daemon.signal(signal.SIGTERM) == 0


async def test_canary_spike_rolls_back_and_decisions_explain_it(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        await kafka.send(requests("canary", 100, 1), requests("canary", 50, 25))
        flags = await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
        decisions = await kafka.wait_for(
            "rollout.decisions", lambda d: any(x["kind"] == "alert" for x in d)
        )
    assert flags[-1]["percent"] == 0
    firing = next(d for d in decisions if d["kind"] == "trigger")
    assert firing["state"] == "firing"
    assert firing["value"] == pytest.approx(26 / 150)
    assert firing["threshold"] == 0.1
    assert firing["samples"] == 150
    assert daemon.signal(signal.SIGTERM) == 0


async def test_events_over_mqtt_drive_the_engine(
    tansu: Tansu, mosquitto: Mosquitto, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED, mosquitto.url))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        batch = json.dumps([requests("canary", 20, 0), requests("canary", 20, 20)]).encode()
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="device-7") as client:
            await client.publish("telemetry/device-7/events", batch, qos=1)
        flags = await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
    assert flags[-1]["percent"] == 0


async def test_sigkill_mid_rollout_continues_without_duplicates(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    rollout = GUARDED.replace("for: 0s", "for: 600s")  # a breach stays pending
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", rollout))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        await kafka.send(requests("canary", 20, 10))
        await kafka.wait_for(
            "rollout.decisions", lambda d: any(x.get("state") == "pending" for x in d)
        )
        assert daemon.signal(signal.SIGKILL) == -signal.SIGKILL
        daemon.start()
        # Still breaching: a daemon that had lost its state would decide "pending" again.
        await kafka.send(requests("canary", 20, 10))
        await kafka.send(
            {
                "ts": time.time(),
                "type": "command",
                "rollout": "co",
                "command": "promote",
                "actor": "tester",
            },
            topic="rollout.commands",
        )
        flags = await kafka.wait_for("rollout.flags", lambda f: f[-1]["percent"] == 100)
        await kafka.settle()
    assert phases(kafka.seen["rollout.flags"]) == [(10, "progressing", 1), (100, "promoted", 2)]
    states = [d["state"] for d in kafka.seen["rollout.decisions"] if d["kind"] == "trigger"]
    assert states == ["pending"]
    starts = [d for d in kafka.seen["rollout.decisions"] if d.get("reason") == "start"]
    assert len(starts) == 2  # percent and phase, once: the restart did not start it again
    promote = [d for d in kafka.seen["rollout.decisions"] if d.get("actor") == "tester"]
    assert [d["kind"] for d in promote] == ["percent", "phase"]
    assert flags[-1]["revision"] == flags[0]["revision"] + 1  # the kept state's counter went on
    assert daemon.output().count("starting without state") == 1  # the first start only


async def test_hostile_payloads_are_counted_and_skipped(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        await kafka.send(
            b"{not json",
            b"[" * 100_000,
            b'{"ts": 1, "type": "requests", "count": "many", "errors": 0}',
            b'{"ts": 1, "type": "requests", "count": 5, "errors": 9}',
            b"x" * (10 << 20),
            b"\xff\xfe\x00",
            requests("canary", 50, 25),
        )
        flags = await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
    assert flags[-1]["percent"] == 0
    assert daemon.signal(signal.SIGTERM) == 0
    log = daemon.output()
    for reason in ("bad_json", "wrong_type", "errors_exceed_count", "too_large"):
        assert reason in log, reason
    assert "Traceback" not in log


async def test_broker_outage_is_survived_without_false_decisions(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    rollout = GUARDED.replace("hold: 600s", "hold: 2s")
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", rollout))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
    tansu.stop()
    # The outage itself lasts longer than the hold (a real process runs on the wall clock).
    await asyncio.sleep(3)
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    tansu.start()
    tansu.create_topics(TOPICS)  # memory storage: the restart lost them
    async with Kafka(tansu.bootstrap) as kafka:
        # No data during the outage was not health: the rollout did not advance.
        await kafka.settle(2.0)
        assert kafka.seen["rollout.flags"] == []
        await kafka.send(requests("canary", 50, 0))
        flags = await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
    # One message for the instant: promoted and, with no bake, completed at once.
    assert (flags[-1]["percent"], flags[-1]["phase"]) == (100, "completed")
    assert nth(flags[-1]["revision"]) == 2
    assert daemon.signal(signal.SIGTERM) == 0


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path, daemon_factory: Any) -> None:
    state = tmp_path / "s.db"
    state.write_bytes(b"this is not sqlite" * 100)
    daemon = daemon_factory(config_text("127.0.0.1:1", state, WALKING))
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=20) == 2
    assert "not a rolloutd state store" in daemon.output()
    assert "--fresh" in daemon.output()


async def test_sigterm_exits_zero_within_grace_even_with_the_broker_gone(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    tansu.create_topics(TOPICS)
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", WALKING))
    daemon.start()
    async with Kafka(tansu.bootstrap) as kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
    tansu.stop()  # the flags still to come cannot be published now
    started = time.monotonic()
    assert daemon.signal(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5 + 3  # the grace period, and a little
    assert "stay in the outbox" in daemon.output() or "processed" in daemon.output()


async def test_broker_down_at_start_is_waited_for_and_reported_not_ready(
    tansu: Tansu, daemon_factory: Any, tmp_path: Path
) -> None:
    port = free_port()
    http = f'{{listen: "127.0.0.1:{port}"}}'
    tansu.stop()  # the daemon starts first
    daemon = daemon_factory(config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED, http=http))
    daemon.start()
    status, ready = await asyncio.to_thread(_readyz, port)
    assert status == 503
    assert ready["checks"]["kafka connected"] is False
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    tansu.start()
    tansu.create_topics(TOPICS)
    async with Kafka(tansu.bootstrap) as kafka:
        # What was decided while the broker was away waited in the outbox.
        flags = await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        assert (flags[0]["percent"], nth(flags[0]["revision"])) == (10, 1)
        await kafka.send(requests("canary", 50, 25))
        await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
    status, ready = await asyncio.to_thread(_readyz, port)
    assert (status, ready["ready"]) == (200, True)
    assert daemon.signal(signal.SIGTERM) == 0


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


MQTT_ONLY = """
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 5, hold: 1h}}, {{percent: 100}}]
sources:
  mqtt: {{url: "{mqtt}", topics: ["telemetry/+/events"], client_id: rolloutd-test,
          clean_session: false}}
sinks:
  mqtt: {{}}
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:0"}}
"""


async def test_stop_publishes_what_waits_for_mqtt_over_a_connection_of_its_own(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """At stop the MQTT loop is already cancelled: the drain borrows a connection (another
    client id, so the loop's persistent session is left alone), the retained flag state
    still goes out and the outbox is empty."""
    state = tmp_path / "s.db"
    config = parse_config(MQTT_ONLY.format(mqtt=mosquitto.url, state=state))
    service = Service(config, handle_signals=False, grace=5.0)
    service.stop()  # before the loop ever connects: the start's flag state waits
    assert await service.run() == 0

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="reader") as client:
        await client.subscribe("rollouts/flags/new_co", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
    assert isinstance(message.payload, bytes)
    assert message.retain
    assert (json.loads(message.payload)["percent"], json.loads(message.payload)["phase"]) == (
        5,
        "progressing",
    )
    with Store.open(state) as store:
        assert store.stats()["outbox"] == 0


async def test_stop_with_the_mqtt_broker_gone_keeps_the_flag_state_for_the_next_start(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    state = tmp_path / "s.db"
    config = parse_config(MQTT_ONLY.format(mqtt=mosquitto.url, state=state))
    mosquitto.stop()
    service = Service(config, handle_signals=False, grace=0.5)
    service.stop()
    assert await service.run() == 0  # the borrowed connection is refused: nothing lost
    with Store.open(state) as store:
        assert [item.sink.target for item in store.load().outbox] == ["rollouts/flags/new_co"]


async def test_the_drain_leaves_the_subscriptions_persistent_session_alone(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """With `clean_session: false` the broker queues what devices send while the daemon is
    down; the drain's own connection takes none of it, and the next start reads it."""
    config = parse_config(MQTT_ONLY.format(mqtt=mosquitto.url, state=tmp_path / "s.db"))
    first = Service(config, handle_signals=False, grace=5.0)
    running = asyncio.create_task(first.run())
    await until(lambda: first.health.sources.get("mqtt") is True, DEADLINE)  # subscribed
    _, paused = first.pipeline.command("co", "pause", first.clock(), actor="test")
    first.outbox.add(paused)  # a flag state to publish as the daemon stops: the drain's
    first.stop()
    assert await running == 0
    sent = {"ts": time.time(), "type": "requests", "rollout": "co", "cohort": "canary"}
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="device-7") as device:
        body = json.dumps({**sent, "count": 3, "errors": 0})
        await device.publish("telemetry/7/events", body, qos=1)

    second = Service(config, handle_signals=False, grace=5.0)
    running = asyncio.create_task(second.run())
    await until(lambda: second.pipeline.stats.events["mqtt"] == 1, DEADLINE)
    second.stop()
    assert await running == 0
