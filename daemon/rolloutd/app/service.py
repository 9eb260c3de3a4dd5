"""The daemon: one TaskGroup owning the sources, the ticker, the publisher and the signals.

Rules:
* One supervisor. Every task belongs to the TaskGroup in `run`; if one dies, its siblings
  are cancelled and `run` returns non-zero with the reason logged.
* The clock lives here, injected (`app/clock.py`). Sources and the ticker read it and hand
  `now` to the pipeline; the ticker wakes at every bucket boundary so holds, bakes and
  sliding windows act on time even when no event arrives.
* The parts come from `wiring.build`; readiness and daemon-level alerts from `health.py`;
  reloads from `reload.py`.
* SIGTERM / SIGINT (or `stop()`, with `handle_signals=False`): stop fetching, publish what
  is still in the outbox within the grace period (what does not make it stays in the store
  and goes out after the next start), close the store, return 0. `run(until_drained=True)`
  with a `MemoryBroker` stops the same way once everything put was taken and published.
* With a leader lease (PostgreSQL state) a daemon first stands by (HTTP, signals and the
  lease's poll, see leadership.py), then joins the sources and leads, renewing the lease.
  A leader that finds the lease lost stops at once and exits 1 (`LeaseLost`): systemd or
  compose starts it again, as a standby. A clean stop releases the lease so a standby
  leads at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from rolloutd import __version__
from rolloutd.adapters import connections
from rolloutd.adapters.http import AdminContext, build_app
from rolloutd.adapters.kafka import (
    Fetched,
    KafkaConsumerLoop,
    Origins,
    instance_id,
)
from rolloutd.adapters.lease import LeaseLost
from rolloutd.adapters.notify import daemon_alert
from rolloutd.adapters.state import StateStore
from rolloutd.adapters.store import StoreError
from rolloutd.adapters.systemd import SystemdNotifier
from rolloutd.app import gc_tuning, logthrottle
from rolloutd.app.clock import SYSTEM, Clock
from rolloutd.app.health import HEALTH_EVERY, HealthAlerts, problems
from rolloutd.app.jobs import wall_clock_jobs
from rolloutd.app.leadership import Leadership
from rolloutd.app.memory import MemoryBroker
from rolloutd.app.reload import Reloader
from rolloutd.app.state_notice import fresh_state_notice
from rolloutd.app.wiring import build
from rolloutd.config import Config
from rolloutd.core.decisions import Decision
from rolloutd.core.events import CommandName
from rolloutd.core.outbound import SinkKind
from rolloutd.engine_build import engine_kind

log = logging.getLogger("rolloutd.service")

# At stop, how long requests still in the admin server may take (aiohttp's default is a
# minute, longer than the unit's TimeoutStopSec; a client stuck mid-body must not hold it).
HTTP_STOP_WAIT = 2.0

DEFAULT_GRACE = 10.0
DRAINED_POLL = 0.01  # seconds between looks at a memory broker's inbox and the outbox


class ListenError(Exception):
    """http.listen cannot be bound (in use, no permission): a plain error, not our bug."""


class _Stop(Exception):
    """A shutdown signal arrived."""


class Service:
    def __init__(
        self,
        config: Config,
        *,
        fresh: bool = False,
        clock: Clock = SYSTEM,
        grace: float = DEFAULT_GRACE,
        config_path: Path | None = None,
        handle_signals: bool = True,
        memory: MemoryBroker | None = None,
        store: StateStore | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path  # for reloads; None: no reload
        self.handle_signals = handle_signals  # False: stop with stop(), SIGHUP is not ours
        self.memory = memory  # in place of every broker connection (tests)
        self.systemd = SystemdNotifier()
        self.http_up = asyncio.Event()
        self.clock = clock.now
        self.monotonic = clock.monotonic
        self.grace = grace
        self.fresh = fresh
        parts = self.parts = build(config, clock, fresh=fresh, memory=memory, store=store)
        self.store, self.health, self.state = parts.store, parts.health, parts.state
        self.registry, self.pipeline, self.delivery = parts.registry, parts.pipeline, parts.delivery
        self.alerts, self.kafka_out, self.mqtt = parts.alerts, parts.kafka_out, parts.mqtt
        self.publisher, self.outbox = parts.publisher, parts.outbox
        self.reloader = Reloader(parts, config, self.systemd, self.clock)
        self.health_alerts = HealthAlerts()
        self.bucket = config.engine.bucket
        self.lease = self.store.lease  # None: one daemon on a SQLite file, always leading
        self.leadership = (
            Leadership(
                self.lease,
                self.pipeline,
                self.health,
                self.delivery,
                self.monotonic,
                self.store.path,
            )
            if self.lease is not None
            else None
        )
        self.kafka_in: KafkaConsumerLoop | None = None
        if config.sources.kafka is not None and memory is None:
            logthrottle.CLIENT_LOGS.interval = config.sources.kafka.client_log_interval
        self.stopping = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.scheduler: AsyncIOScheduler | None = None
        self.until_drained = False

    @property
    def reload_requested(self) -> asyncio.Event:
        return self.reloader.requested

    def stop(self) -> None:
        """Stop as SIGTERM would."""
        self.stopping.set()

    def reload(self, path: Path) -> bool:
        return self.reloader.reload(path)

    # -- wiring -------------------------------------------------------------------------
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
        watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) if self.handle_signals else ()
        if self.handle_signals:
            loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
        try:
            await self.stopping.wait()
        finally:
            for sig in watched:
                loop.remove_signal_handler(sig)
        self.systemd.stopping()
        raise _Stop

    async def _memory(self, until_drained: bool) -> None:
        """Feed what is put into the memory broker; with `until_drained`, stop once it and
        the outbox are empty."""
        broker = self.memory
        assert broker is not None
        while True:
            self.outbox.add(broker.feed(self.pipeline, self.clock))
            broker.arrived.clear()
            if until_drained and not self.publisher.pending:
                self.stop()
                return
            if until_drained:
                await asyncio.sleep(DRAINED_POLL)
            else:
                await broker.arrived.wait()

    # -- alerts about the daemon itself ---------------------------------------------------
    async def _health_alerts(self) -> None:
        """Page on terminal paths that no trigger sees (see health.py)."""
        while True:
            await asyncio.sleep(HEALTH_EVERY)
            now = self.clock()
            for record in self.health_alerts.check(now, self._problems(now)):
                self.outbox.add(self.pipeline.daemon_alert(record))

    def _problems(self, now: float) -> dict[str, str | None]:
        publisher = self.publisher
        return problems(
            now, publisher.failing_for, len(publisher.pending), self.pipeline.engine.rollouts
        )

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

    # -- HTTP ---------------------------------------------------------------------------
    async def _http(self) -> None:
        token = self.config.http.token
        ctx = AdminContext(
            pipeline=lambda: self.pipeline,
            registry=self.registry,
            token=token.get_secret_value() if token is not None else None,
            run_command=self._command,
            healthy=lambda: {name: not task.done() for name, task in self.tasks.items()},
            ready=self.health.readiness,
            not_ready=lambda: {n: r for n, r in self.health.reasons.items() if r},
            run_breaker_command=self._breaker_command,
            delivery=self.delivery,
            standby=lambda: self.health.standby,
        )
        http = self.config.http
        runner = web.AppRunner(
            build_app(ctx),
            access_log=None,
            keepalive_timeout=http.idle_timeout,
            shutdown_timeout=HTTP_STOP_WAIT,
        )
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

    # -- lifecycle ----------------------------------------------------------------------
    async def run(self, until_drained: bool = False) -> int:
        engine = engine_kind()
        log.info(
            "rolloutd %s starting (%s engine)",
            __version__,
            engine,
            extra={"version": __version__, "engine": engine},
        )
        gc_tuning.tune()
        self.until_drained = until_drained
        code = 0
        try:
            async with asyncio.TaskGroup() as group:
                self._spawn(
                    group,
                    {
                        "signals": self._signals(),
                        "http": self._http(),
                        "lifecycle": self._lifecycle(),
                    },
                )
                if self.lease is None:
                    self._lead(group)
                else:
                    self.health.started = True  # the state as the leader left it
                    self._spawn(group, {"standby": self._stand_by(group)})
        except* _Stop:
            log.info("stopping: publishing what is left (grace %.1fs)", self.grace)
        except* LeaseLost as lost:
            for error in lost.exceptions:
                log.error("%s; exiting (a restart stands by)", error)
            code = 1
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
            if self.scheduler is not None:
                self.scheduler.shutdown(wait=False)
            await self._shutdown()
        return code

    def _spawn(self, group: asyncio.TaskGroup, jobs: dict[str, Coroutine[Any, Any, None]]) -> None:
        for name, job in jobs.items():
            self.tasks[name] = group.create_task(job, name=name)

    def _lead(self, group: asyncio.TaskGroup) -> None:
        """Begin from the state restored, and start everything that acts."""
        # When the state was last written: where Kafka partitions it has no offset for are
        # read from (taken before `start`, which moves the engine's time to now).
        written = self.pipeline.engine.now if self.pipeline.restored else None
        self.outbox.add(self.pipeline.unpublished)  # what a previous run did not send
        self.outbox.add(self.pipeline.start(self.clock()))
        notice = fresh_state_notice(self.store, self.pipeline.restored, self.fresh, self.clock())
        if notice is not None:  # a restart at step 1 must never be silent
            self.outbox.add(self.pipeline.daemon_alert(notice))
        self.health.started = True
        self.scheduler = wall_clock_jobs(
            self.store.compact,
            lambda: self.pipeline.spec,
            self.clock,
            lambda: self.outbox.add(self.pipeline.tick(self.clock())),
        )
        self.scheduler.start()
        jobs = {
            "publisher": self.publisher.run(),
            "alerts": self.alerts.run(),
            "health-alerts": self._health_alerts(),
            "ticker": self._ticker(),
        }
        if self.config_path is not None:
            jobs["reloader"] = self.reloader.watch(self.config_path)
        if self.mqtt is not None:
            jobs["mqtt"] = self.mqtt.run()
        if self.config.sources.kafka is not None and self.memory is None:
            self.kafka_in = self._kafka_loop(written)  # at the positions the state holds
            self.state.consumer_lag = self.kafka_in.lag
            jobs["kafka"] = self.kafka_in.run()
        if self.memory is not None:
            jobs["memory"] = self._memory(self.until_drained)
        if self.leadership is not None:
            jobs["lease"] = self.leadership.keep()
        self._spawn(group, jobs)

    async def _stand_by(self, group: asyncio.TaskGroup) -> None:
        """Stand by until the lease is ours (leadership.py), then lead."""
        assert self.leadership is not None
        await self.leadership.wait_to_lead()
        self._lead(group)
        del self.tasks["standby"]  # done: /healthz and the watchdog look at the rest

    def _kafka_loop(self, written: float | None) -> KafkaConsumerLoop:
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
        member = instance_id(source, self.config.state.path)
        if self.lease is not None and source.group_instance_id is None:
            # A takeover is always another member, for which a static one only waits longer
            # (its partitions stay with the dead member): dynamic, unless an id is given.
            member = None
        if member is not None:
            log.info("kafka: static group member %s", member)
        return KafkaConsumerLoop(
            source,
            topics,
            self.pipeline.positions,
            self._on_kafka,
            self.health.source("kafka"),
            started_at=written if written is not None else self.clock(),
            member=member,
        )

    async def _shutdown(self) -> None:
        try:
            self.outbox.add(self.pipeline.flush())
        except StoreError as exc:  # the next start re-reads those events from Kafka
            log.error("could not write the last checkpoint: %s", exc)
        log.info("processed %s", self.pipeline.summary())
        if self.lease is not None and not self.lease.valid(self.monotonic()):
            log.info("not leading: what waits in the outbox is left to the leader")
        else:
            await self._drain()
        if self.kafka_out is not None:
            await self.kafka_out.close()
        if self.lease is not None:
            try:  # a standby leads at once rather than after the lease
                self.lease.release()
            except StoreError as exc:
                log.warning("could not release the lease: %s", exc)
        self.store.close()

    async def _drain(self) -> None:
        """Publish and deliver what is left within one grace period: brokers and notifiers
        side by side; the MQTT loop is gone by now, so its link lends a connection."""
        flushed, _ = await asyncio.gather(self._publish_rest(), self.alerts.flush(self.grace))
        if not flushed:
            left = len(self.publisher.pending)
            log.warning("%d messages stay in the outbox for the next start", left)

    async def _publish_rest(self) -> bool:
        deadline = self.monotonic() + self.grace
        waiting = any(item.sink.kind is SinkKind.MQTT for item in self.publisher.pending)
        if self.mqtt is None or not waiting:
            return await self.publisher.flush(self.grace)
        async with self.mqtt.publishing(self.grace):
            return await self.publisher.flush(deadline - self.monotonic())
