"""In-process stand-ins for the brokers, so the whole daemon runs inside a test.

Rules: a `MemoryBroker` takes the place of every Kafka and MQTT connection the config names
(`Service(config, memory=broker)`): what a test `put`s is fed to the pipeline exactly as the
real consumers feed it (Kafka messages with increasing offsets, committed with the state;
MQTT messages one by one), and what the daemon publishes is kept in `kafka` and `mqtt`, in
order. Nothing touches the network. With `Service.run(until_drained=True)` the daemon stops
by itself once everything put has been taken and everything to publish has gone out.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

    from rolloutd.adapters.store import OutboxItem
    from rolloutd.app.pipeline import Pipeline

Source = Literal["kafka", "mqtt"]


@dataclass(slots=True)
class MemoryBroker:
    inbox: deque[tuple[Source, str, list[bytes]]] = field(default_factory=deque)
    kafka: list[tuple[str, bytes | None, bytes]] = field(default_factory=list)  # topic, key, value
    mqtt: list[tuple[str, bytes, bool]] = field(default_factory=list)  # topic, payload, retain
    offsets: dict[str, int] = field(default_factory=dict)  # next offset per topic (partition 0)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, source: Source, topic: str, payloads: Sequence[bytes]) -> None:
        """Messages arriving on `topic` of `source`, as one fetch."""
        self.inbox.append((source, topic, list(payloads)))
        self.arrived.set()

    @property
    def drained(self) -> bool:
        return not self.inbox

    def feed(self, pipeline: Pipeline, now: Callable[[], float]) -> list[OutboxItem]:
        """Hand everything put so far to `pipeline` as the real consumers would: Kafka
        messages with increasing offsets (partition 0), MQTT messages one by one."""
        items: list[OutboxItem] = []
        while self.inbox:
            source, topic, payloads = self.inbox.popleft()
            at = now()
            if source == "mqtt":
                for payload in payloads:
                    items += pipeline.ingest("mqtt", [payload], at, topic=topic)
                continue
            first = self.offsets.get(topic, 0)
            self.offsets[topic] = last = first + len(payloads)
            keys: list[bytes | None] = [None] * len(payloads)
            values: list[bytes | None] = list(payloads)
            origins = [(0, list(range(first, last)))]
            batch = [(topic, keys, values)]
            items += pipeline.ingest_topics(batch, at, {(topic, 0): last}, origins)
        return items

    def kafka_out(self) -> MemoryKafka:
        return MemoryKafka(self)

    def mqtt_out(self) -> MemoryMqtt:
        return MemoryMqtt(self)

    def flags(self, topic: str) -> list[bytes]:
        """The payloads published to a Kafka topic, in order."""
        return [value for t, _, value in self.kafka if t == topic]


class MemoryKafka:
    """Where the publisher's Kafka messages go instead of a producer."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def publish(self, messages: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        self.broker.kafka.extend(messages)

    async def close(self) -> None:
        return None


class MemoryMqtt:
    """Where the publisher's MQTT messages go instead of a client."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker

    async def publish(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        self.broker.mqtt.extend(messages)
