"""Publishing what the outbox holds: flag state and decisions to Kafka and MQTT.

Rules: items go out in order; a sink that fails keeps its items (and everything after
them) for the next try, with backoff; an item leaves the store's outbox only once its broker
acknowledged it. Alert rows are not ours: the alert dispatcher delivers those. With a
leader lease, nothing is sent unless `may_publish` holds just before the send: a daemon
whose lease lapsed by its own clock (stopped past it, say) sends nothing again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from rolloutd.adapters.backoff import Backoff
from rolloutd.adapters.cancel import honour_cancel
from rolloutd.adapters.mqtt import MqttUnavailable
from rolloutd.adapters.notify import AlertDispatcher
from rolloutd.adapters.store import OutboxItem
from rolloutd.core.outbound import SinkKind

log = logging.getLogger("rolloutd.publisher")

CHUNK = 500
WARN_EVERY = 30.0  # seconds between log lines while publishing keeps failing


class KafkaOut(Protocol):
    """A producer (adapters/kafka.KafkaPublisher, or app/memory's)."""

    async def publish(self, messages: Sequence[tuple[str, bytes | None, bytes]]) -> None: ...

    async def close(self) -> None: ...


class MqttOut(Protocol):
    """An MQTT client (adapters/mqtt.MqttLink, or app/memory's)."""

    async def publish(self, messages: Sequence[tuple[str, bytes, bool]]) -> None: ...


class Publisher:
    """Sends outbox items in order, confirms them in the store, retries what failed."""

    def __init__(
        self,
        confirm: Callable[[Iterable[int]], None],
        kafka: KafkaOut | None,
        mqtt: MqttOut | None,
        monotonic: Callable[[], float] = time.monotonic,
        may_publish: Callable[[], bool] = lambda: True,
    ) -> None:
        self.confirm = confirm  # in the store: these rows left
        # Asked before every send (the leader lease, by the local clock).
        self.may_publish = may_publish
        self.kafka = kafka
        self.mqtt = mqtt
        self.monotonic = monotonic
        self.pending: deque[OutboxItem] = deque()
        self.wake = asyncio.Event()
        self.backoff = Backoff(first=0.05, cap=5.0)
        self.published = 0
        self.failing_since: float | None = None
        self._warned = 0.0  # monotonic time of the last warning

    @property
    def failing_for(self) -> float | None:
        """Seconds since publishing started failing; None while it works."""
        since = self.failing_since
        return None if since is None else self.monotonic() - since

    def add(self, items: list[OutboxItem]) -> None:
        mine = [i for i in items if i.sink.kind is not SinkKind.ALERT]  # alerts: the dispatcher
        if mine:
            self.pending.extend(mine)
            self.wake.set()

    async def run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                sent = await self.send_some()
                honour_cancel()  # a client's wait_for may have lost it (adapters/cancel.py)
                if not sent:
                    if self.failing_since is None:
                        self.failing_since = self.monotonic()
                    await asyncio.sleep(self.backoff.next())
                else:
                    self.failing_since = None
                    self.backoff.reset()

    async def send_some(self) -> bool:
        """Publish up to CHUNK items; True if all of them went out."""
        if not self.may_publish():
            return False  # not the leader (any more): the rows stay for whoever leads
        chunk = [self.pending[i] for i in range(min(CHUNK, len(self.pending)))]
        kafka = [i for i in chunk if i.sink.kind is SinkKind.KAFKA]
        mqtt = [i for i in chunk if i.sink.kind is SinkKind.MQTT]
        done: set[int] = set()
        for items, send in ((kafka, self._send_kafka), (mqtt, self._send_mqtt)):
            if not items:
                continue
            try:
                await send(items)
            except Exception as exc:
                self._warn(items[0].sink.kind, exc)
                break  # keep order: later items wait for the failed ones
            done.update(i.id for i in items)
        if done:
            self.confirm(sorted(done))
            self.published += len(done)
            self.pending = deque(i for i in self.pending if i.id not in done)
        return len(done) == len(chunk)

    def _warn(self, sink: str, exc: Exception) -> None:
        """The first failure of a streak, then one line every WARN_EVERY seconds."""
        now = self.monotonic()
        if self.failing_since is None or now - self._warned >= WARN_EVERY:
            self._warned = now
            waiting = len(self.pending)
            log.warning("publish to %s failed (%d waiting): %s", sink, waiting, exc)

    async def _send_kafka(self, items: list[OutboxItem]) -> None:
        if self.kafka is None:
            raise MqttUnavailable("no kafka connection configured")
        await self.kafka.publish([(i.sink.target, i.key, i.payload) for i in items])

    async def _send_mqtt(self, items: list[OutboxItem]) -> None:
        if self.mqtt is None:
            raise MqttUnavailable("no mqtt connection configured")
        await self.mqtt.publish([(i.sink.target, i.payload, i.retain) for i in items])

    async def flush(self, grace: float) -> bool:
        """Try to empty the outbox within `grace` seconds."""
        deadline = self.monotonic() + grace
        while self.pending and self.monotonic() < deadline:
            if not self.may_publish():
                break
            try:
                async with asyncio.timeout(deadline - self.monotonic()):
                    sent = await self.send_some()
            except TimeoutError:
                break
            if not sent:
                await asyncio.sleep(min(0.1, max(0.0, deadline - self.monotonic())))
        return not self.pending


class Fanout:
    """New outbox items go to whoever delivers them: brokers, or notifiers."""

    def __init__(self, publisher: Publisher, alerts: AlertDispatcher) -> None:
        self.publisher = publisher
        self.alerts = alerts

    def add(self, items: list[OutboxItem]) -> None:
        if items:
            self.publisher.add(items)
            self.alerts.add(items)
