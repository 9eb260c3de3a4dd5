"""The whole daemon in-process: memory broker in place of Kafka and MQTT, a fake clock, no
signal handlers, run until drained."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec

from brokers import free_port
from rolloutd.app.clock import FakeClock
from rolloutd.app.memory import MemoryBroker
from rolloutd.app.service import HTTP_STOP_WAIT, Service
from rolloutd.config import parse_config

CONFIG = """
triggers:
  errors:
    metric: error_rate
    window: 1m
    op: ">"
    threshold: 0.1
    min_samples: 10
    for: 0s
    action: rollback
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 5, hold: 1h}}, {{percent: 100}}]
    triggers: [errors]
sources:
  kafka: {{bootstrap_servers: "127.0.0.1:9", group_id: null}}
  mqtt: {{url: "mqtt://127.0.0.1:9"}}
sinks:
  kafka: {{}}
  mqtt: {{}}
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:0"}}
"""
T0 = 1_763_719_200.0


def _requests(ts: float, cohort: str, count: int, errors: int) -> bytes:
    event = {"ts": ts, "type": "requests", "rollout": "co", "cohort": cohort}
    return msgspec.json.encode({**event, "count": count, "errors": errors})


def _run(tmp_path: Path, broker: MemoryBroker) -> int:
    config = parse_config(CONFIG.format(state=tmp_path / "s.db"))
    clock = FakeClock(T0 + 1)
    service = Service(config, clock=clock.clock(), handle_signals=False, memory=broker)
    return asyncio.run(service.run(until_drained=True))


def test_a_regression_is_rolled_back_and_published_in_process(tmp_path: Path) -> None:
    broker = MemoryBroker()
    broker.put("kafka", "rollout.metrics", [_requests(T0, "control", 100, 1), b"{not json"])
    broker.put("mqtt", "rollouts/metrics/co", [_requests(T0 + 0.5, "canary", 20, 10)])

    assert _run(tmp_path, broker) == 0

    flags = [json.loads(p) for p in broker.flags("rollout.flags")]
    assert [(f["percent"], f["phase"]) for f in flags] == [(5, "progressing"), (0, "rolled_back")]
    assert [f["revision"] for f in flags] == sorted({f["revision"] for f in flags})
    retained = [(t, json.loads(p)["percent"], r) for t, p, r in broker.mqtt]
    assert retained == [("rollouts/flags/new_co", 5, True), ("rollouts/flags/new_co", 0, True)]
    decisions = [json.loads(p) for p in broker.flags("rollout.decisions")]
    assert {"kind": "percent", "reason": "rollback: errors"}.items() <= decisions[-3].items()


def test_the_offsets_taken_are_stored_and_a_restart_continues(tmp_path: Path) -> None:
    broker = MemoryBroker()
    broker.put("kafka", "rollout.metrics", [_requests(T0, "control", 5, 0)] * 3)
    assert _run(tmp_path, broker) == 0
    again = MemoryBroker()
    assert _run(tmp_path, again) == 0
    config = parse_config(CONFIG.format(state=tmp_path / "s.db"))
    service = Service(config, handle_signals=False, memory=MemoryBroker())
    try:
        assert service.pipeline.positions() == {("rollout.metrics", 0): 3}
        assert service.pipeline.restored
    finally:
        service.store.close()
    assert again.flags("rollout.flags") == []  # restored at 5%: nothing new to publish


async def test_a_client_stuck_in_its_request_body_does_not_hold_up_the_stop(
    tmp_path: Path,
) -> None:
    """A request whose body never finishes is given up at stop after a short wait
    (HTTP_STOP_WAIT), not aiohttp's default minute, which outlasts systemd's stop timeout."""
    port = free_port()
    text = CONFIG.format(state=tmp_path / "s.db").replace(
        'http: {listen: "127.0.0.1:0"}', f'http: {{listen: "127.0.0.1:{port}", token: "t"}}'
    )
    service = Service(parse_config(text), handle_signals=False, memory=MemoryBroker())
    running = asyncio.create_task(service.run())
    await service.http_up.wait()
    _, stuck = await asyncio.open_connection("127.0.0.1", port)
    stuck.write(
        b"POST /api/v1/rollouts/co/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    )
    await stuck.drain()
    # A later request answered: the server has taken the stuck one's head by now.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 200")
    writer.close()
    service.stop()
    done, _ = await asyncio.wait([running], timeout=HTTP_STOP_WAIT + 10)
    assert running in done
    assert running.result() == 0
    stuck.close()
