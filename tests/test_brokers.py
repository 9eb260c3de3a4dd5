"""The broker fixtures work end to end with the client libraries the daemon uses."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata

from brokers import Mosquitto, Tansu


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def produce(
    bootstrap: str, topic: str, value: bytes, key: bytes | None = None
) -> RecordMetadata:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await producer.start()
    try:
        return await asyncio.wait_for(producer.send_and_wait(topic, value, key=key), 10)
    finally:
        await producer.stop()


async def consume_one(bootstrap: str, tp: TopicPartition) -> tuple[bytes | None, bytes | None, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        consumer.assign([tp])  # no group join: that takes ~5 s on Tansu
        record = await asyncio.wait_for(consumer.getone(), 10)
        return record.key, record.value, record.offset
    finally:
        await consumer.stop()


async def test_kafka_produce_then_consume_assigned_partition(tansu: Tansu) -> None:
    topic = unique("flags")
    tansu.create_topics([topic], partitions=2)
    value = b'{"flag": "new_checkout", "percent": 25}\x00\xff'
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"new_checkout", partition=1)
    finally:
        await producer.stop()
    assert (meta.topic, meta.partition, meta.offset) == (topic, 1, 0)

    key, got, offset = await consume_one(tansu.bootstrap, TopicPartition(topic, 1))
    assert (key, got, offset) == (b"new_checkout", value, 0)


async def test_tansu_session_broker_auto_creates_topics(tansu_session: Tansu) -> None:
    topic = unique("auto")
    meta = await produce(tansu_session.bootstrap, topic, b"v", key=b"k")
    assert meta.offset == 0
    key, value, _ = await consume_one(tansu_session.bootstrap, meta.topic_partition)
    assert (key, value) == (b"k", b"v")


async def test_tansu_restart_same_port(tansu: Tansu) -> None:
    topic = unique("restart")
    port = tansu.port
    producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap, request_timeout_ms=5000)
    await producer.start()
    try:
        before = await producer.send_and_wait(topic, b"before", partition=0)
        assert before.offset == 0

        tansu.restart()
        assert tansu.port == port
        assert tansu.running

        # A fresh producer works at once (memory storage: the topic is new again).
        again = await produce(tansu.bootstrap, topic, b"fresh", key=b"k")
        assert again.offset == 0
        # The producer that lived through the restart reconnects by itself.
        after = await asyncio.wait_for(producer.send_and_wait(topic, b"after", partition=0), 15)
        assert after.topic == topic
    finally:
        await producer.stop()


async def test_mqtt_retained_qos1_reaches_a_new_subscriber(mosquitto: Mosquitto) -> None:
    topic = f"rollouts/flags/{unique('flag')}"
    payload = b'{"flag": "new_checkout", "percent": 5, "revision": 1}'
    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=unique("pub")) as pub:
        await pub.publish(topic, payload, qos=1, retain=True)

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=unique("sub")) as sub:
        await sub.subscribe(topic, qos=1)
        message = await asyncio.wait_for(anext(aiter(sub.messages)), 5)
    assert message.topic.value == topic
    assert message.payload == payload
    assert message.retain
    assert message.qos == 1


async def test_mosquitto_restart_same_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    async with aiomqtt.Client(mosquitto.host, port, identifier=unique("pub")) as pub:
        await pub.publish("t/before", b"x", qos=1, retain=True)

    mosquitto.restart()
    assert mosquitto.port == port
    assert mosquitto.url == f"mqtt://127.0.0.1:{port}"

    topic = f"t/{unique('after')}"
    async with aiomqtt.Client(mosquitto.host, port, identifier=unique("both")) as client:
        await client.subscribe(topic, qos=1)
        await client.publish(topic, b"after restart", qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 5)
    assert message.payload == b"after restart"
    assert not message.retain
