"""The daemon: one TaskGroup owning the sources, the ticker, the publisher and the signals.

Rules:
* One supervisor. Every task belongs to the TaskGroup in `run`; if one dies, its siblings
  are cancelled and `run` returns non-zero with the reason logged.
* The clock lives here. Sources and the ticker read it and hand `now` to the pipeline; the
  ticker wakes at every bucket boundary so holds, bakes and sliding windows act on time even
  when no event arrives.
* SIGTERM / SIGINT: stop fetching, publish what is still in the outbox within the grace
  period (what does not make it stays in the store and goes out after the next start),
  close the store, return 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from rolloutd import __version__
from rolloutd.adapters import connections
from rolloutd.adapters.delivery import build_delivery
from rolloutd.adapters.http import AdminContext, build_app
from rolloutd.adapters.kafka import (
    Fetched,
    KafkaConsumerLoop,
    KafkaPublisher,
    Origins,
    instance_id,
)
from rolloutd.adapters.known_series import known_series
from rolloutd.adapters.metrics import DaemonState, build_registry
from rolloutd.adapters.mqtt import MqttLink
from rolloutd.adapters.notify import AlertDispatcher, daemon_alert
from rolloutd.adapters.store import Store, StoreError
from rolloutd.adapters.systemd import SystemdNotifier
from rolloutd.app import gc_tuning, logs, logthrottle
from rolloutd.app.cdc import CdcRouter
from rolloutd.app.messages import Sinks
from rolloutd.app.pipeline import FlagTableWatch, Pipeline
from rolloutd.app.publisher import Fanout, Publisher
from rolloutd.app.state_notice import fresh_state_notice
from rolloutd.config import Config, ConfigError, load_config
from rolloutd.core.decisions import Decision
from rolloutd.core.events import CommandName
from rolloutd.core.flagwatch import FlagWatch
from rolloutd.core.triggers import INSUFFICIENT
from rolloutd.engine_build import engine_kind

log = logging.getLogger("rolloutd.service")

Clock = Callable[[], float]
DEFAULT_GRACE = 10.0
RELOAD_POLL = 2.0  # seconds between looks at the config file's modification time
HEALTH_EVERY = 5.0  # seconds between checks for daemon-level alerts
PUBLISH_ALERT_AFTER = 60.0  # publishing failing this long pages
STALL_AFTER = 600.0  # a rollout this far past its hold (or one hold, if longer) is stalled
COMPACT_EVERY = 300.0  # seconds between WAL checkpoints of the state store


class ListenError(Exception):
    """http.listen cannot be bound (in use, no permission): a plain error, not our bug."""


class _Stop(Exception):
    """A shutdown signal arrived."""


@dataclass(slots=True)
class Health:
    """What readiness is made of."""

    started: bool = False
    sources: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # why a source is not up

    @property
    def ready(self) -> bool:
        return self.started and all(self.sources.values())


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


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


class Service:
    def __init__(
        self,
        config: Config,
        *,
        fresh: bool = False,
        clock: Clock = time.time,
        grace: float = DEFAULT_GRACE,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # for reloads; None: no reload
        self.systemd = SystemdNotifier()
        self.reload_requested = asyncio.Event()
        self.http_up = asyncio.Event()
        self.clock = clock
        self.grace = grace
        self.health = Health()
        self.store = Store.open(config.state.path, fresh=fresh)
        self.fresh = fresh
        self.state = DaemonState(
            ready=lambda: self.health.ready,
            known=known_series(config),
            sources=lambda: self.health.sources,
        )
        self.registry, latency, confirm_delay = build_registry(lambda: self.pipeline, self.state)
        cdc = CdcRouter(tuple(m.wiring() for m in config.migrations)) if config.migrations else None
        flags = None
        if config.flag_table is not None:
            flags = FlagTableWatch(
                config.flag_table,
                FlagWatch(config.flag_table.grace),
                rollout_of={r.flag: r.name for r in config.rollouts},
                policy={r.name: r.drift for r in config.rollouts},
            )
        # Flag delivery (flagd document, Unleash client API): fed after each commit.
        self.delivery = build_delivery(config.delivery, self.registry, clock, self._on_unleash)
        self.pipeline = Pipeline(
            config.to_spec(),
            self.store,
            sinks_of(config),
            latency.observe,
            config.alerts,
            cdc,
            flags,
            checkpoint=config.state.checkpoint,
            max_future_skew=config.sources.max_future_skew,
            on_flags=self.delivery.board.publish if self.delivery is not None else None,
            confirm_delay=confirm_delay.observe,
        )
        if self.delivery is not None:  # the state at start, before any decision of this run
            self.delivery.board.seed(self.pipeline.engine.rollouts, self.pipeline.revisions)
        if cdc is not None:
            self.state.migrations = cdc.metrics
        self.alerts = AlertDispatcher(config.alerts, self.pipeline.confirm)
        self.state.alerts_sent = self.alerts.sent
        self.bucket = config.engine.bucket
        kafka_source = config.sources.kafka
        self.kafka_out = None
        if kafka_source is not None and config.sinks.kafka is not None:
            self.kafka_out = KafkaPublisher(kafka_source)
        self.mqtt: MqttLink | None = None
        if config.sources.mqtt is not None:
            self.mqtt = MqttLink(config.sources.mqtt, self._on_mqtt, self._state("mqtt"))
        self.kafka_in = self._kafka_loop() if config.sources.kafka is not None else None
        if config.sources.kafka is not None:
            logthrottle.CLIENT_LOGS.interval = config.sources.kafka.client_log_interval
        if self.kafka_in is not None:
            self.state.consumer_lag = self.kafka_in.lag
        self.publisher = Publisher(self.pipeline, self.kafka_out, self.mqtt)
        self.outbox = Fanout(self.publisher, self.alerts)
        self.state.outbox_pending = lambda: len(self.publisher.pending)
        self.state.breakers = lambda: {n: b.state for n, b in self.pipeline.engine.breakers.items()}
        self.stopping = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}

    # -- wiring -------------------------------------------------------------------------
    def _state(self, name: str) -> Callable[[bool, str], None]:
        self.health.sources[name] = False
        self.health.reasons[name] = "not connected yet"

        def update(connected: bool, reason: str = "") -> None:
            self.health.sources[name] = connected
            self.health.reasons[name] = "" if connected else reason or "not connected"

        return update

    def _on_unleash(self, payloads: list[bytes]) -> None:
        self.outbox.add(self.pipeline.ingest("unleash", payloads, self.clock()))

    def _on_mqtt(self, topic: str, payload: bytes) -> None:
        self.outbox.add(self.pipeline.ingest("mqtt", [payload], self.clock(), topic=topic))

    async def _on_kafka(
        self, batch: Fetched, offsets: dict[tuple[str, int], int], origins: Origins
    ) -> None:
        items = self.pipeline.ingest_topics(batch, self.clock(), offsets, origins)
        self.outbox.add(items)

    async def _ticker(self) -> None:
        bucket = self.bucket
        while True:
            now = self.clock()
            boundary = (now // bucket + 1) * bucket
            await asyncio.sleep(max(0.0, boundary - now))
            self.outbox.add(self.pipeline.tick(self.clock()))

    async def _signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.stopping.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        self.systemd.stopping()
        raise _Stop

    # -- alerts about the daemon itself ---------------------------------------------------
    async def _health_alerts(self) -> None:
        """Page on terminal paths that no trigger sees: publishing failing for a while, and
        rollouts stalled well past their hold (the gate stays shut: no data, or a trigger)."""
        raised: set[str] = set()
        while True:
            await asyncio.sleep(HEALTH_EVERY)
            now = self.clock()
            for what, problem in self._problems(now).items():
                if (problem is not None) == (what in raised):
                    continue
                status = "firing" if problem is not None else "resolved"
                summary = problem or f"{what}: recovered"
                severity = "critical" if what == "publish-failed" else "warning"
                record = daemon_alert(what, status, summary, now, severity=severity)
                self.outbox.add(self.pipeline.daemon_alert(record))
                (raised.add if problem is not None else raised.discard)(what)

    def _problems(self, now: float) -> dict[str, str | None]:
        problems: dict[str, str | None] = {"publish-failed": None}
        since = self.publisher.failing_since
        if since is not None and time.monotonic() - since > PUBLISH_ALERT_AFTER:
            problems["publish-failed"] = (
                f"publishing flag state has failed for {time.monotonic() - since:.0f}s; "
                f"{len(self.publisher.pending)} messages wait in the outbox"
            )
        for rollout in self.pipeline.engine.rollouts:
            key = f"stalled/{rollout.spec.name}"
            problems[key] = None
            if rollout.phase != "progressing":
                continue
            hold = rollout.spec.steps[rollout.step].hold
            overdue = now - (rollout.step_started + hold)
            if overdue > max(hold, STALL_AFTER):
                blocking = [
                    f"{t.spec.name} ({'no data' if t.outcome == INSUFFICIENT else t.state})"
                    for t in rollout.triggers
                    if t.blocks
                ]
                problems[key] = (
                    f"{rollout.spec.name} has waited {overdue:.0f}s past its hold at "
                    f"{rollout.percent:g}%; blocked by {', '.join(blocking) or 'its window'}"
                )
        return problems

    # -- systemd and reload -------------------------------------------------------------
    async def _lifecycle(self) -> None:
        """READY once serving, then the watchdog at half its interval while tasks live."""
        await self.http_up.wait()
        self.systemd.ready(f"{len(self.pipeline.spec.rollouts)} rollouts")
        interval = self.systemd.watchdog_interval
        if interval is None:
            await asyncio.Event().wait()  # nothing more to do, but stay a live task
            return
        while True:
            if all(not t.done() for name, t in self.tasks.items() if name != "lifecycle"):
                self.systemd.watchdog()
            await asyncio.sleep(interval)

    async def _reloader(self) -> None:
        """Reload on SIGHUP or when the config file changes (polled)."""
        path = self.config_path
        assert path is not None
        seen = _mtime(path)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.reload_requested.wait(), RELOAD_POLL)
            current = _mtime(path)
            if not self.reload_requested.is_set() and current == seen:
                continue
            self.reload_requested.clear()
            seen = current
            self.reload(path)

    def reload(self, path: Path) -> bool:
        """Validate the file fully; apply it, or keep the running config and say why."""
        self.systemd.reloading()
        try:
            config = load_config(path)
            items = self.pipeline.reconfigure(config.to_spec(), self.clock())
        except (ConfigError, ValueError) as exc:
            errors = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            log.error("config reload rejected, the running config stays: %s", "; ".join(errors))
            self.state.reload_success = False
            self.outbox.add(
                self.pipeline.daemon_alert(
                    daemon_alert(
                        "config-reload",
                        "firing",
                        f"config reload rejected: {len(errors)} errors",
                        self.clock(),
                        severity="warning",
                        details={"errors": "; ".join(errors)[:500]},
                    )
                )
            )
            self.systemd.ready("config reload rejected")
            return False
        logs.set_secrets([*logs.secrets_of(self.config), *logs.secrets_of(config)])
        for section in ("sources", "sinks", "state", "http", "delivery"):
            if getattr(config, section) != getattr(self.config, section):
                log.warning("config reload: %s changed; that takes effect after a restart", section)
        self.outbox.add(items)
        if not self.state.reload_success:
            self.outbox.add(
                self.pipeline.daemon_alert(
                    daemon_alert(
                        "config-reload",
                        "resolved",
                        "config reloaded",
                        self.clock(),
                        severity="warning",
                    )
                )
            )
        self.state.reload_success = True
        self.state.known = known_series(config)
        if self.delivery is not None:  # a removed rollout's flag leaves the documents
            self.delivery.board.retain({r.flag for r in config.rollouts})
        self.pipeline.notify(config.alerts)
        self.alerts.reconfigure(config.alerts)
        log.info("config reloaded: %d rollouts", len(config.rollouts))
        self.systemd.ready(f"{len(config.rollouts)} rollouts")
        return True

    # -- wall-clock jobs -----------------------------------------------------------------
    def _scheduler(self) -> AsyncIOScheduler:
        """Jobs on the wall clock: store compaction and advance-window openings.

        The ticker already evaluates every bucket boundary (so steps advance at an opening
        on their own); the opening job evaluates at the exact moment and says so in the log.
        """
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(
            self.store.compact,
            IntervalTrigger(seconds=COMPACT_EVERY),
            id="compact",
            coalesce=True,
            max_instances=1,
        )
        for rollout in self.pipeline.spec.rollouts:
            if rollout.advance_window is not None:
                self._schedule_opening(scheduler, rollout.name)
        return scheduler

    def _schedule_opening(self, scheduler: AsyncIOScheduler, name: str) -> None:
        window = next(r.advance_window for r in self.pipeline.spec.rollouts if r.name == name)
        assert window is not None
        now = self.clock()
        opening = window.next_opening(now if not window.contains(now) else now + 60.0)
        if opening is None:
            return

        def opened() -> None:
            log.info("advance window of %s is open (%s)", name, window.expression)
            self.outbox.add(self.pipeline.tick(self.clock()))
            self._schedule_opening(scheduler, name)

        at = datetime.fromtimestamp(opening, tz=UTC)
        scheduler.add_job(
            opened, DateTrigger(run_date=at), id=f"open:{name}", replace_existing=True
        )

    # -- HTTP ---------------------------------------------------------------------------
    async def _http(self) -> None:
        token = self.config.http.token
        ctx = AdminContext(
            pipeline=lambda: self.pipeline,
            registry=self.registry,
            token=token.get_secret_value() if token is not None else None,
            run_command=self._command,
            healthy=lambda: {name: not task.done() for name, task in self.tasks.items()},
            ready=self._readiness,
            not_ready=lambda: {n: r for n, r in self.health.reasons.items() if r},
            run_breaker_command=self._breaker_command,
            delivery=self.delivery,
        )
        http = self.config.http
        runner = web.AppRunner(build_app(ctx), access_log=None, keepalive_timeout=http.idle_timeout)
        await runner.setup()
        host, port = http.address
        budget = connections.plan(http.max_connections, http.fd_reserve)
        try:
            try:
                server, _ = await connections.serve(runner, host, port, budget, http.header_timeout)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                raise ListenError(f"http.listen {self.config.http.listen}: {reason}") from None
            try:
                log.info("http on %s:%d", host, port)
                self.http_up.set()
                await asyncio.Event().wait()  # serve until cancelled
            finally:
                server.close()
        finally:
            await runner.cleanup()

    async def _command(
        self, rollout: str, command: CommandName, actor: str, percent: float | None, full: bool
    ) -> list[Decision]:
        decisions, items = self.pipeline.command(
            rollout, command, self.clock(), actor=actor, percent=percent, full=full
        )
        self.outbox.add(items)
        return decisions

    async def _breaker_command(self, name: str, command: str) -> list[Decision]:
        decisions, items = self.pipeline.breaker_command(name, command, self.clock())
        self.outbox.add(items)
        return decisions

    def _readiness(self) -> dict[str, bool]:
        return {
            "state restored": self.health.started,
            **{f"{name} connected": up for name, up in self.health.sources.items()},
        }

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self) -> int:
        engine = engine_kind()
        log.info(
            "rolloutd %s starting (%s engine)",
            __version__,
            engine,
            extra={"version": __version__, "engine": engine},
        )
        gc_tuning.tune()
        self.outbox.add(self.pipeline.unpublished)  # what a previous run did not send
        self.outbox.add(self.pipeline.start(self.clock()))
        notice = fresh_state_notice(self.store, self.pipeline.restored, self.fresh, self.clock())
        if notice is not None:  # a restart at step 1 must never be silent
            self.outbox.add(self.pipeline.daemon_alert(notice))
        self.health.started = True
        scheduler = self._scheduler()
        scheduler.start()
        code = 0
        try:
            async with asyncio.TaskGroup() as group:
                jobs = {
                    "signals": self._signals(),
                    "publisher": self.publisher.run(),
                    "alerts": self.alerts.run(),
                    "health-alerts": self._health_alerts(),
                    "ticker": self._ticker(),
                    "http": self._http(),
                    "lifecycle": self._lifecycle(),
                }
                if self.config_path is not None:
                    jobs["reloader"] = self._reloader()
                if self.mqtt is not None:
                    jobs["mqtt"] = self.mqtt.run()
                if self.kafka_in is not None:
                    jobs["kafka"] = self.kafka_in.run()
                for name, job in jobs.items():
                    self.tasks[name] = group.create_task(job, name=name)
        except* _Stop:
            log.info("stopping: publishing what is left (grace %.1fs)", self.grace)
        except* Exception as failures:
            for exc in failures.exceptions:
                trace = None if isinstance(exc, ListenError) else exc  # a traceback helps bugs only
                log.error("task failed: %s: %s", type(exc).__name__, exc, exc_info=trace)
                what = "store-error" if isinstance(exc, StoreError) else "task-failed"
                # The store may be what failed: tell the notifiers directly, best effort.
                self.alerts.notify(
                    daemon_alert(
                        what, "firing", f"exiting: {type(exc).__name__}: {exc}", self.clock()
                    )
                )
            code = 1
        finally:
            scheduler.shutdown(wait=False)
            await self._shutdown()
        return code

    def _kafka_loop(self) -> KafkaConsumerLoop:
        source = self.config.sources.kafka
        assert source is not None
        topics = list(source.topics.metrics)
        if source.topics.commands:
            topics.append(source.topics.commands)
        if self.pipeline.cdc is not None:
            topics += [t for t in self.pipeline.cdc.topics if t not in topics]
        if self.pipeline.flags is not None and self.pipeline.flags.config.topic not in topics:
            topics.append(self.pipeline.flags.config.topic)
        # A partition the store does not know is read from when the store was last written:
        # the start, for a new store; after a crash, what the lost run read but never
        # persisted is read again.
        written = self.pipeline.engine.now if self.pipeline.restored else None
        member = instance_id(source, self.config.state.path)
        if member is not None:
            log.info("kafka: static group member %s", member)
        return KafkaConsumerLoop(
            source,
            topics,
            self.pipeline.positions,
            self._on_kafka,
            self._state("kafka"),
            started_at=written if written is not None else self.clock(),
            member=member,
        )

    async def _shutdown(self) -> None:
        try:
            self.outbox.add(self.pipeline.flush())
        except StoreError as exc:  # the next start re-reads those events from Kafka
            log.error("could not write the last checkpoint: %s", exc)
        log.info("processed %s", self.pipeline.summary())
        flushed = await self.publisher.flush(self.grace)
        await self.alerts.flush(self.grace)
        if not flushed:
            left = len(self.publisher.pending)
            log.warning("%d messages stay in the outbox for the next start", left)
        if self.kafka_out is not None:
            await self.kafka_out.close()
        self.store.close()
