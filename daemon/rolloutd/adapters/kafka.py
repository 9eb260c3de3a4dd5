"""Kafka in and out: a consumer that feeds the pipeline, a producer that publishes.

Rules: adapters translate, never decide. The consumer hands each fetched batch to the
pipeline, which decodes, decides and persists state *and offsets* in one transaction; only
then are offsets committed to Kafka (informational: on start the consumer seeks to the
offsets in the state store, so nothing is processed twice or skipped; see kafka_positions for
partitions the store does not know). The source is up only once its partitions are assigned
and their positions known, and while the broker answers: with no records arriving it is
asked for the partitions' ends every third of `down_after`, and a broker silent for
`down_after` makes the source down (readiness 503, with the reason) until it answers again.
A broker that is down is retried with backoff, forever; the daemon keeps running.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from rolloutd.adapters.backoff import Backoff
from rolloutd.adapters.kafka_positions import drop_before_start, seek_assigned
from rolloutd.config import KafkaSecurity, KafkaSource

log = logging.getLogger("rolloutd.kafka")

FETCH_WAIT_MS = 20  # a fetch returns at once when data arrives; this caps an idle fetch
MAX_RECORDS = 5000


# A fetched batch: per topic, the message keys and values (in offset order per partition).
Fetched = list[tuple[str, list[bytes | None], list[bytes | None]]]
# Per entry of a batch, its partition and the offsets of its messages (for log lines).
Origins = list[tuple[int, list[int]]]
# (batch, next offset per partition, origins) -> None, once the batch is persisted
BatchHandler = Callable[[Fetched, dict[tuple[str, int], int], Origins], Awaitable[None]]
# (up, why not) -> None
StateHandler = Callable[[bool, str], None]
WAITING = "waiting for partition assignment"


def client_options(source: KafkaSource) -> dict[str, Any]:
    """aiokafka keyword arguments shared by the consumer and the producer."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(source.bootstrap_servers),
        "client_id": source.client_id,
        "security_protocol": source.security.protocol,
    }
    security = source.security
    if security.protocol.endswith("SSL"):
        options["ssl_context"] = _ssl_context(security)
    if security.protocol.startswith("SASL_"):
        assert security.password is not None
        options["sasl_mechanism"] = security.sasl_mechanism
        options["sasl_plain_username"] = security.username
        options["sasl_plain_password"] = security.password.get_secret_value()
    return options


def instance_id(source: KafkaSource, state_path: str) -> str | None:
    """The static group member's id (None: a dynamic member), stable across restarts."""
    if source.group_id is None or not source.static_membership:
        return None
    if source.group_instance_id is not None:
        return source.group_instance_id
    # The state path tells apart two daemons of one group on one host.
    where = hashlib.sha256(str(Path(state_path).resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{source.group_id}-{where}"


def _ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=security.ca_file)
    if security.cert_file is not None:
        context.load_cert_chain(security.cert_file, security.key_file)
    return context


class KafkaConsumerLoop:
    """Fetch batches, hand them to the pipeline, commit after they are persisted."""

    def __init__(
        self,
        source: KafkaSource,
        topics: Sequence[str],
        positions: Callable[[], Mapping[tuple[str, int], int]],
        handle: BatchHandler,
        on_state: StateHandler,
        started_at: float = 0.0,
        member: str | None = None,  # group_instance_id
    ) -> None:
        self.source = source
        self.member = member
        self.topics = list(topics)
        # The next offset to read per partition, as the state holds it (the store's record,
        # and what waits for its checkpoint): where an assigned partition is sought.
        self.positions = positions
        self.handle = handle
        self.report = on_state
        self.waiting: str | None = WAITING  # why not consuming, besides a silent broker
        self.last_answer = time.monotonic()
        self.silent = False  # the broker has not answered for `down_after`
        self.next_probe = 0.0
        self.started_ms = int(started_at * 1000)  # where partitions the store lacks begin
        self.floors: dict[tuple[str, int], int] = {}  # see kafka_positions
        self.positioning_failed: KafkaError | None = None
        self.backoff = Backoff()
        self.lag: dict[tuple[str, int], int] = {}  # messages behind each partition's end

    async def run(self) -> None:
        while True:
            consumer = self._consumer()
            try:
                await consumer.start()
                await self._assign(consumer)
                await self._fetch_loop(consumer)
            except KafkaError as exc:
                delay = self.backoff.next()
                log.warning("kafka consumer: %s; retrying in %.1fs", _describe(exc), delay)
                self.on_state(f"broker unavailable: {_describe(exc)}")
                await asyncio.sleep(delay)
            finally:
                if self.waiting is None:
                    self.on_state(WAITING)
                await _quietly(consumer.stop())

    def on_state(self, waiting: str | None) -> None:
        """Consuming (None) or why not; reported with the broker's silence."""
        self.waiting = waiting
        if self.silent:
            self.report(False, f"no answer from the broker for {self.source.down_after:g}s")
        else:
            self.report(waiting is None, waiting or "")

    def _consumer(self) -> AIOKafkaConsumer:
        session_ms = int(self.source.session_timeout * 1000)
        return AIOKafkaConsumer(
            group_id=self.source.group_id,
            group_instance_id=self.member,
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(1, min(3000, session_ms // 3)),
            enable_auto_commit=False,
            auto_offset_reset=self.source.auto_offset_reset,
            fetch_max_wait_ms=FETCH_WAIT_MS,
            **client_options(self.source),
        )

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        if self.source.group_id is not None:
            consumer.subscribe(self.topics, listener=_SeekOnAssign(consumer, self))
            return
        partitions: list[TopicPartition] = []
        for topic in self.topics:
            ids = consumer.partitions_for_topic(topic)
            if not ids:
                await consumer.topics()  # refresh metadata once
                ids = consumer.partitions_for_topic(topic) or set()
            partitions.extend(TopicPartition(topic, p) for p in sorted(ids))
        if not partitions:
            raise _NoPartitions(f"no partitions found for topics {self.topics}")
        consumer.assign(partitions)
        await self.positioned(consumer, partitions)

    async def positioned(
        self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]
    ) -> None:
        """Seek newly assigned partitions; up once every position is known."""
        self.on_state(WAITING)
        try:
            floors = await seek_assigned(
                consumer,
                partitions,
                self.positions(),
                self.source.auto_offset_reset,
                self.started_ms,
            )
        except KafkaError as exc:  # reading from an unknown position could skip events
            self.positioning_failed = exc
            return
        self.floors.update(floors)
        self.answered()
        self.on_state(None)
        self.backoff.reset()

    async def _fetch_loop(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            fetched = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            failed, self.positioning_failed = self.positioning_failed, None
            if failed is not None:
                raise failed
            if fetched:
                self.answered()
            elif time.monotonic() >= self.next_probe:
                await self._probe(consumer)
            if not fetched:
                continue
            batch, positions, origins = self._unpack(fetched)
            await self.handle(batch, positions, origins)
            await self._done(consumer, fetched, positions)

    def _unpack(
        self, fetched: dict[TopicPartition, list[Any]]
    ) -> tuple[Fetched, dict[tuple[str, int], int], Origins]:
        """One fetch as the pipeline takes it, with the position after each partition's part."""
        batch: Fetched = []
        positions: dict[tuple[str, int], int] = {}
        origins: Origins = []
        for tp, messages in fetched.items():
            positions[(tp.topic, tp.partition)] = messages[-1].offset + 1
            messages = self._after_start(tp, messages)
            if messages:
                keys = [message.key for message in messages]
                batch.append((tp.topic, keys, [message.value for message in messages]))
                origins.append((tp.partition, [message.offset for message in messages]))
        return batch, positions, origins

    async def _done(
        self,
        consumer: AIOKafkaConsumer,
        fetched: dict[TopicPartition, list[Any]],
        positions: dict[tuple[str, int], int],
    ) -> None:
        """A handled fetch: its lag, and its offsets committed to the group (if any)."""
        for tp in fetched:
            end = consumer.highwater(tp)
            if end is not None:
                self.lag[(tp.topic, tp.partition)] = max(
                    0, end - positions[(tp.topic, tp.partition)]
                )
        if self.source.group_id is not None:
            commit = {TopicPartition(t, p): o for (t, p), o in positions.items()}
            await _quietly(consumer.commit(commit))

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the partitions' leaders for their ends (or any broker for metadata)."""
        every = self.source.down_after / 3
        self.next_probe = time.monotonic() + every
        partitions = sorted(consumer.assignment())
        try:
            async with asyncio.timeout(every):
                ends = await consumer.end_offsets(partitions) if partitions else {}
                if not partitions:
                    await consumer.topics()
        except (TimeoutError, KafkaError, OSError):
            if not self.silent and time.monotonic() - self.last_answer >= self.source.down_after:
                log.warning("kafka: no answer from the broker for %gs", self.source.down_after)
                self.silent = True
                self.on_state(self.waiting)
            return
        self.answered()
        read = self.positions()
        for tp, end in ends.items():
            done = read.get((tp.topic, tp.partition))
            if done is not None:
                self.lag[(tp.topic, tp.partition)] = max(0, end - done)

    def answered(self) -> None:
        self.last_answer = time.monotonic()
        if self.silent:
            log.info("kafka: the broker answers again")
            self.silent = False
            self.on_state(self.waiting)

    def _after_start(self, tp: TopicPartition, messages: list[Any]) -> list[Any]:
        floor = self.floors.get((tp.topic, tp.partition))
        if floor is None:
            return messages
        older, reached = drop_before_start(messages, floor)
        if reached:
            del self.floors[(tp.topic, tp.partition)]
        return messages[older:]


class _NoPartitions(KafkaError):  # type: ignore[misc]
    pass


class _SeekOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    """Group mode: continue from the persisted offsets, not the group's committed ones."""

    def __init__(self, consumer: AIOKafkaConsumer, loop: KafkaConsumerLoop) -> None:
        self.consumer = consumer
        self.loop = loop

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.loop.on_state(WAITING)  # until the next assignment is positioned

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.loop.positioned(self.consumer, sorted(assigned))


class KafkaPublisher:
    """A producer that is (re)started on demand and publishes (topic, key, value) triples."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source
        self.producer: AIOKafkaProducer | None = None

    async def publish(self, messages: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """Send every message and wait for the broker's acknowledgements; raises on failure."""
        producer = await self._producer()
        try:
            futures = [await producer.send(t, value=v, key=k) for t, k, v in messages]
            await asyncio.gather(*futures)
        except KafkaError:
            await self.close()
            raise

    async def _producer(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(
                linger_ms=0,
                acks=1,
                request_timeout_ms=10_000,
                max_request_size=16 << 20,
                **client_options(self.source),
            )
            try:
                await producer.start()
            except BaseException:
                await _quietly(producer.stop())
                raise
            self.producer = producer
        return self.producer

    async def close(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            await _quietly(producer.stop())


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except (TimeoutError, KafkaError, OSError) as exc:
        log.debug("kafka: ignored during cleanup: %s", _describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
