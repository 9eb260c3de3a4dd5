"""Every part of the daemon, built from the config in one place.

Rules: `build` makes each part once, in dependency order, and hands each what it needs when
it is made; nothing is patched on afterwards. Where two parts call each other at run time
(a source feeds the pipeline, whose messages go to the publisher that shares the source's
connection), the later one is reached through a closure over this function's names. With a
`MemoryBroker` every Kafka and MQTT connection the config names is replaced by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from rolloutd.adapters.delivery import DeliveryRoutes, build_delivery
from rolloutd.adapters.kafka import KafkaPublisher
from rolloutd.adapters.known_series import known_series
from rolloutd.adapters.metrics import DaemonState, build_registry
from rolloutd.adapters.mqtt import MqttLink
from rolloutd.adapters.notify import AlertDispatcher
from rolloutd.adapters.state import StateStore
from rolloutd.adapters.store import Store, StoreError
from rolloutd.app.cdc import CdcRouter
from rolloutd.app.clock import Clock
from rolloutd.app.health import Health
from rolloutd.app.memory import MemoryBroker
from rolloutd.app.messages import Sinks
from rolloutd.app.pipeline import FlagTableWatch, Pipeline
from rolloutd.app.publisher import Fanout, KafkaOut, MqttOut, Publisher
from rolloutd.config import Config, State
from rolloutd.core.flagwatch import FlagWatch


def sinks_of(config: Config) -> Sinks:
    kafka, mqtt = config.sinks.kafka, config.sinks.mqtt
    return Sinks(
        flags_topic=kafka.flags_topic if kafka else None,
        decisions_topic=kafka.decisions_topic if kafka else None,
        mqtt_flags_prefix=mqtt.flags_prefix if mqtt else None,
        mqtt_breakers_prefix=_sibling(mqtt.flags_prefix, "breakers") if mqtt else None,
    )


def _sibling(prefix: str, name: str) -> str:
    """rollouts/flags -> rollouts/breakers."""
    parent, _, _ = prefix.rstrip("/").rpartition("/")
    return f"{parent}/{name}" if parent else name


def flag_table_watch(config: Config) -> FlagTableWatch | None:
    table = config.flag_table
    if table is None:
        return None
    return FlagTableWatch(
        table,
        FlagWatch(table.grace),
        rollout_of={r.flag: r.name for r in config.rollouts},
        policy={r.name: r.drift for r in config.rollouts},
    )


def open_store(state: State, *, fresh: bool = False) -> StateStore:
    """The state store the config names: the SQLite file, or PostgreSQL (with its lease,
    not yet taken)."""
    if state.url is None:
        return Store.open(state.path, fresh=fresh)
    if fresh:
        raise StoreError(
            f"--fresh moves a state file aside; state {state.where()} is a database: "
            "drop its tables to start from an empty state"
        )
    from rolloutd.adapters.pgstore import PgStore  # psycopg only where it is used

    return PgStore.open(state.url.get_secret_value(), lease=state.lease)


@dataclass(slots=True)
class Parts:
    store: StateStore
    health: Health
    state: DaemonState
    registry: CollectorRegistry
    pipeline: Pipeline
    delivery: DeliveryRoutes | None
    alerts: AlertDispatcher
    kafka_out: KafkaOut | None  # the producer (closed at shutdown)
    mqtt: MqttLink | None  # the MQTT connection, in and out (None with a memory broker)
    publisher: Publisher
    outbox: Fanout


def build(
    config: Config,
    clock: Clock,
    *,
    fresh: bool = False,
    memory: MemoryBroker | None = None,
    store: StateStore | None = None,
) -> Parts:
    """The daemon's parts for `config` (on `store`, or the one the config names); the
    Kafka consumer loop is made by the service, which owns its positions and callbacks."""
    now = clock.now
    if store is None:
        store = open_store(config.state, fresh=fresh)
    lease = store.lease
    health = Health(leased=lease is not None)
    cdc = CdcRouter(tuple(m.wiring() for m in config.migrations)) if config.migrations else None
    state = DaemonState(
        ready=lambda: health.ready,
        known=known_series(config),
        sources=lambda: health.sources,
        migrations=cdc.metrics if cdc is not None else dict,
        outbox_pending=lambda: len(publisher.pending),
        breakers=lambda: {n: b.state for n, b in pipeline.engine.breakers.items()},
        leader=lambda: health.standby is None,
    )
    registry, latency, confirm_delay = build_registry(lambda: pipeline, state)

    def unleash(payloads: list[bytes]) -> None:  # the Unleash SDKs' metrics, as events
        outbox.add(pipeline.ingest("unleash", payloads, now()))

    delivery = build_delivery(config.delivery, registry, now, unleash)
    pipeline = Pipeline(
        config.to_spec(),
        store,
        sinks_of(config),
        latency.observe,
        config.alerts,
        cdc,
        flag_table_watch(config),
        checkpoint=config.state.checkpoint,
        max_future_skew=config.sources.max_future_skew,
        on_flags=delivery.board.publish if delivery is not None else None,
        confirm_delay=confirm_delay.observe,
    )
    if delivery is not None:  # the state at start, before any decision of this run
        delivery.board.seed(pipeline.engine.rollouts, pipeline.revisions)
    # A daemon that is not (or no longer) the leader by its own clock sends nothing.
    leading = (lambda: lease.valid(clock.monotonic())) if lease is not None else _always
    alerts = AlertDispatcher(config.alerts, pipeline.confirm, may_send=leading)
    state.alerts_sent = alerts.sent

    def from_mqtt(topic: str, payload: bytes) -> None:
        outbox.add(pipeline.ingest("mqtt", [payload], now(), topic=topic))

    kafka_out: KafkaOut | None = None
    mqtt_out: MqttOut | None = None
    mqtt = None
    if memory is not None:
        kafka_out = memory.kafka_out() if config.sinks.kafka is not None else None
        mqtt_out = memory.mqtt_out() if config.sinks.mqtt is not None else None
        for name in _sources(config):
            health.source(name)(True, "")
    else:
        if config.sources.kafka is not None and config.sinks.kafka is not None:
            kafka_out = KafkaPublisher(config.sources.kafka)
        if config.sources.mqtt is not None:
            mqtt = mqtt_out = MqttLink(config.sources.mqtt, from_mqtt, health.source("mqtt"))
    publisher = Publisher(pipeline.confirm, kafka_out, mqtt_out, clock.monotonic, leading)
    outbox = Fanout(publisher, alerts)
    return Parts(
        store,
        health,
        state,
        registry,
        pipeline,
        delivery,
        alerts,
        kafka_out,
        mqtt,
        publisher,
        outbox,
    )


def _always() -> bool:
    return True


def _sources(config: Config) -> Sequence[str]:
    return [name for name in ("kafka", "mqtt") if getattr(config.sources, name) is not None]
