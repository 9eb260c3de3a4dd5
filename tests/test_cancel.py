"""A cancellation that `asyncio.wait_for` loses (Python 3.11) still ends the daemon's loops.

The fakes below await as aiomqtt does (`asyncio.wait_for`) a future the test completes in
the same loop pass as it cancels the task: on 3.11 the library call returns normally and the
task would run on, waiting for work forever, and the stop would hang. The bound on each
wait below is how such a hang fails the test; a loop that honours the cancel ends at once.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rolloutd.adapters.mqtt import MqttLink
from rolloutd.adapters.store import OutboxItem
from rolloutd.app.publisher import Publisher
from rolloutd.config import MqttSource
from rolloutd.core.outbound import Sink, SinkKind

HANG = 5.0  # seconds: far more than a loop that honours the cancel needs


class Acknowledged:
    """Each call waits, as aiomqtt does, for an acknowledgement the test gives."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []
        self.called = asyncio.Event()

    async def wait(self) -> None:
        ack = asyncio.get_running_loop().create_future()
        self.pending.append(ack)
        self.called.set()
        await asyncio.wait_for(ack, 10)

    def ack_and_cancel(self, task: asyncio.Task[None]) -> None:
        self.pending[-1].set_result(None)  # ready in the same pass as the cancel
        task.cancel()


async def ended_by_cancel(task: asyncio.Task[None]) -> bool:
    done, _ = await asyncio.wait([task], timeout=HANG)
    return task in done and task.cancelled()


class SlowMqtt(Acknowledged):
    async def publish(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        await self.wait()


async def test_the_publisher_stops_when_an_acknowledged_publish_ate_the_cancel() -> None:
    out = SlowMqtt()
    confirmed: list[int] = []
    publisher = Publisher(confirmed.extend, None, out)
    publisher.add([OutboxItem(1, Sink(SinkKind.MQTT, "rollouts/flags/f"), None, b"{}", True)])
    task = asyncio.create_task(publisher.run())
    await out.called.wait()
    out.ack_and_cancel(task)
    assert await ended_by_cancel(task)


class FakeClient(Acknowledged):
    """aiomqtt.Client's surface that MqttLink.run uses; no message ever arrives."""

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def subscribe(self, topic: str, qos: int) -> None:
        await self.wait()

    @property
    async def messages(self) -> AsyncIterator[Any]:  # pragma: no cover - never yields
        await asyncio.Event().wait()
        yield None


async def test_the_mqtt_loop_stops_when_an_acknowledged_subscribe_ate_the_cancel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = FakeClient()
    source = MqttSource(url="mqtt://127.0.0.1:1883", topics=["a/#"])
    link = MqttLink(source, lambda topic, payload: None, lambda up, why: None)
    monkeypatch.setattr(link, "_client", lambda drain=None: client)
    task = asyncio.create_task(link.run())
    await client.called.wait()
    client.ack_and_cancel(task)
    assert await ended_by_cancel(task)


def test_the_daemon_itself_never_uses_wait_for() -> None:
    """The rule of adapters/cancel.py: rolloutd's own waits use asyncio.timeout."""
    package = Path(__file__).parent.parent / "daemon" / "rolloutd"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Attribute) and node.attr == "wait_for"
            imported = isinstance(node, ast.ImportFrom) and any(
                alias.name == "wait_for" for alias in node.names
            )
            if named or imported:
                offenders.append(f"{path.relative_to(package)}:{getattr(node, 'lineno', 0)}")
    assert offenders == []
