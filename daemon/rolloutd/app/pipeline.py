"""The daemon's synchronous heart: bytes in, decisions out, state persisted.

Rules:
* One writer. Sources and the ticker call `ingest` / `tick` from the event loop; each call
  decodes, runs the engine at the caller's `now`, and commits in ONE store transaction the
  engine state that changed, the offsets consumed, the new flag revisions and the messages
  to publish (the outbox). Only after that does anything leave the process, so a crash at
  any point loses nothing and repeats nothing.
* One way in, one way out. Payloads go through `core.intake.take` once, which returns the
  decisions and the rejections; `messages.py` builds every message from the decisions
  alone (flag state per change, breaker state, the audit, alerts); this module counts,
  logs and commits.
* Bad input is counted and skipped (`invalid`), never raised. An event dated more than
  `max_future_skew` after the caller's `now` is rejected (`future_timestamp`). An event whose
  handling raises anyway is counted (`failed`) and skipped (see faults.py); what the engine
  drops is counted per source (`dropped`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec
import structlog

from rolloutd.adapters.cdc.debezium import ChangeEvent, decode_change
from rolloutd.adapters.notify import AlertRecord
from rolloutd.adapters.state import StateStore
from rolloutd.adapters.store import Batch, OutboxItem
from rolloutd.app.cdc import CdcRouter
from rolloutd.app.faults import Origin, count_drops, drops, report_failure
from rolloutd.app.messages import FlagState, Messages, Positions, Revisions, Sinks
from rolloutd.config import Alert, FlagTable
from rolloutd.core import flagwatch, intake
from rolloutd.core.decisions import (
    ConfigDecision,
    Decision,
    FlagDecision,
    rolled_back_by,
    to_dict,
)
from rolloutd.core.engine import Engine
from rolloutd.core.events import Command, CommandName, Rejection
from rolloutd.core.flagwatch import CONFIRMED, FlagWatch, Observation
from rolloutd.core.spec import EngineSpec

log = logging.getLogger("rolloutd.pipeline")
decision_log = structlog.get_logger("rolloutd.decisions")

MAX_PAYLOAD_BYTES = 1 << 20


@dataclass(slots=True)
class PipelineStats:
    events: Counter[str] = field(default_factory=Counter)  # by source
    invalid: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, reason)
    decisions: Counter[str] = field(default_factory=Counter)  # by kind
    rollbacks: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rollout, trigger)
    flag_drift: Counter[str] = field(default_factory=Counter)  # by rollout
    flag_confirmed: int = 0
    batches: int = 0  # commits
    deferred: int = 0  # Kafka batches left to the next commit
    failed: Counter[str] = field(default_factory=Counter)  # by source: handling raised
    dropped: Counter[tuple[str, str]] = field(default_factory=Counter)  # (source, reason)


RECENT = 50  # decisions kept per rollout for the admin API
CDC_STATE = "cdc"  # the migration checkers' state: its row in the store's watches
FLAGS_STATE = "flag_table"  # the flag table watch's state, likewise


@dataclass(slots=True)
class FlagTableWatch:
    """The flag table's topic and columns, the watch, and each rollout's drift policy."""

    config: FlagTable
    watch: FlagWatch
    rollout_of: dict[str, str]  # flag -> rollout
    policy: dict[str, str]  # rollout -> alert | revert | adopt

    def row(self, topic: str, key: bytes | None, value: bytes | None) -> tuple[str, float] | None:
        """(flag, percent) from one change of the table, or None if it carries none."""
        change = decode_change(topic, key, value)
        if not isinstance(change, ChangeEvent) or change.after is None:
            return None
        flag = change.after.get(self.config.key_column)
        percent = change.after.get(self.config.percent_column)
        if not isinstance(flag, str) or isinstance(percent, bool):
            return None
        if not isinstance(percent, int | float) or not 0 <= percent <= 100:
            return None
        return flag, float(percent)


def _config(now: float, rollout: str, change: str, reason: str) -> ConfigDecision:
    return ConfigDecision(ts=now, kind="config", rollout=rollout, change=change, reason=reason)


class Pipeline:
    def __init__(
        self,
        spec: EngineSpec,
        store: StateStore,
        sinks: Sinks,
        latency: Callable[[float], None] | None = None,
        alerts: Sequence[Alert] = (),
        cdc: CdcRouter | None = None,
        flags: FlagTableWatch | None = None,
        checkpoint: float = 0.0,
        max_future_skew: float = 300.0,
        on_flags: Callable[[list[FlagState]], None] | None = None,
        confirm_delay: Callable[[float], None] | None = None,
    ) -> None:
        self.spec = spec
        self.max_future_skew = max_future_skew  # events dated later than now + this: rejected
        # Kafka batches that decide nothing wait up to this long (engine time) to be
        # written; their offsets wait with them, so state and offsets always match.
        self.checkpoint = checkpoint
        self._pending: dict[tuple[str, int], int] = {}
        self._written_at = -math.inf
        self.cdc = cdc  # migrations watched through CDC topics
        self.flags = flags  # the flag table, watched through its CDC topic
        self.store = store
        self.latency = latency  # observes event time -> decision, in seconds
        self.confirm_delay = confirm_delay  # observes decision -> flag table, in seconds
        self.on_flags = on_flags  # flag delivery: the flag states of each commit, after it
        self.stats = PipelineStats()
        self.recent: dict[str, deque[Decision]] = {}
        self._sinks = sinks
        self._alerts = alerts
        self.reload_state()

    def reload_state(self) -> None:
        """Take up the state the store holds: at start, and on a standby, as the leader last
        committed it (for the read APIs, and where it starts from once it leads: after taking
        the lease, so nothing commits behind it)."""
        store, spec = self.store, self.spec
        loaded = store.load()
        self.engine = Engine.restore_parts(spec, loaded.engine, loaded.rollouts)
        self._revisions = Revisions(loaded.revisions, store.revision_floor)
        self.messages = Messages(
            self._sinks, self._alerts, spec, Positions(self.engine.rollouts), self._revisions
        )
        self.messages.generation = store.generation
        self.unpublished: list[OutboxItem] = list(loaded.outbox)
        self.restored = loaded.engine is not None
        if self.cdc is not None and CDC_STATE in loaded.watches:
            self.cdc.load(msgspec.json.decode(loaded.watches[CDC_STATE]))
        if self.flags is not None and FLAGS_STATE in loaded.watches:
            self.flags.watch.load(msgspec.json.decode(loaded.watches[FLAGS_STATE]))
        self._cdc_changed = False
        self._flags_changed = False

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read per (topic, partition): what the store holds, and what the
        engine has taken but waits for a checkpoint."""
        return {**self.store.offsets, **self._pending}

    @property
    def revisions(self) -> dict[str, int]:
        """Each flag's and breaker's latest revision."""
        return self._revisions.current

    # -- entry points -------------------------------------------------------------------
    def start(self, now: float) -> list[OutboxItem]:
        """Begin (a new store) or start what the stored state did not know."""
        engine = self.engine
        decisions = engine.start_new(now) if self.restored else engine.begin(now)
        self._decided(decisions)
        return self._commit({})

    def ingest_topics(
        self,
        batch: Sequence[tuple[str, Sequence[bytes | None], Sequence[bytes | None]]],
        now: float,
        offsets: dict[tuple[str, int], int],
        origins: Sequence[tuple[int, Sequence[int]]] | None = None,
    ) -> list[OutboxItem]:
        """A Kafka batch: event topics and CDC topics, one commit for all of it. `origins`:
        per entry of `batch`, its partition and its messages' offsets (for log lines)."""
        now = self._monotonic(now)
        cdc = self.cdc
        for i, (topic, keys, values) in enumerate(batch):
            origin = Origin(topic) if origins is None else Origin(topic, *origins[i])
            if self.flags is not None and topic == self.flags.config.topic:
                self._ingest_flag_table(topic, keys, values, now)
            elif cdc is not None and topic in cdc.by_topic:
                self._ingest_cdc(topic, keys, values, now, origin)
            else:
                self._ingest_events("kafka", values, now, origin)
        if not self.messages.out.rows and now - self._written_at < self.checkpoint:
            self._pending.update(offsets)  # replayable from Kafka: written with the next
            self.stats.deferred += 1
            return []
        return self._commit(offsets)

    def flush(self) -> list[OutboxItem]:
        """Write what waits for a checkpoint (at shutdown)."""
        return self._commit({}) if self._pending else []

    def ingest(
        self,
        source: str,
        payloads: Sequence[bytes | None],
        now: float,
        offsets: dict[tuple[str, int], int] | None = None,
        topic: str | None = None,
    ) -> list[OutboxItem]:
        now = self._monotonic(now)
        self._ingest_events(source, payloads, now, Origin(topic))
        return self._commit(offsets or {})

    def command(
        self,
        rollout: str,
        command: CommandName,
        now: float,
        actor: str | None = None,
        percent: float | None = None,
        full: bool = False,
    ) -> tuple[list[Decision], list[OutboxItem]]:
        """An operator's command (admin API): its decisions, and the messages to publish."""
        now = self._monotonic(now)
        event = Command(
            ts=now, rollout=rollout, command=command, actor=actor, percent=percent, full=full
        )
        decisions = self.engine.handle(event, now)
        self._decided(decisions)
        return decisions, self._commit({})

    def breaker_command(
        self, name: str, command: str, now: float
    ) -> tuple[list[Decision], list[OutboxItem]]:
        decisions = self.engine.breaker_command(name, command, self._monotonic(now))
        self._decided(decisions)
        return decisions, self._commit({})

    def reconfigure(self, spec: EngineSpec, now: float) -> list[OutboxItem]:
        """Apply a new config: unchanged rollouts keep their state; changed ones keep their
        phase, step and the windows their triggers still read; removed ones stop (their flag
        is left as it is); new ones start. Each change is a `config` decision."""
        if spec.bucket != self.spec.bucket:
            raise ValueError("engine.bucket cannot change on reload: restart the daemon")
        now = self._monotonic(now)
        old = self.engine
        decisions: list[Decision] = old.advance(now)
        self._decided(decisions)  # what was due under the old config, with its messages
        parts = {r.spec.name: old.snapshot_rollout(r.spec.name) for r in old.rollouts}
        engine = Engine.restore_parts(spec, old.snapshot_global(), parts)
        before = {r.name: r for r in self.spec.rollouts}
        after = {r.name: r for r in spec.rollouts}
        changes: list[Decision] = [
            _config(now, name, "removed", "no longer in the config; its flag is left as it is")
            for name in before.keys() - after.keys()
        ]
        for name in [r.name for r in spec.rollouts]:
            if name not in before:
                changes.append(_config(now, name, "added", "new in the config"))
            elif before[name] != after[name]:
                changes.append(_config(now, name, "changed", "its definition changed"))
        self.engine, self.spec = engine, spec
        messages = self.messages
        messages.positions = Positions(engine.rollouts)
        messages.reconfigure(spec, messages.alerts)
        self._decided(changes + engine.start_new(now))
        removed = before.keys() - after.keys()
        return self._commit({}, rewrite_all=True, drop=removed)

    def tick(self, now: float) -> list[OutboxItem]:
        now = self._monotonic(now)
        decisions = self.engine.advance(now)
        if self.cdc is not None:
            before = drops(self.engine.stats)
            for event in self.cdc.tick(now):
                decisions += self.engine.handle(event, now)
            count_drops(self.stats.dropped, "cdc", before, self.engine.stats)
            self._cdc_changed = True
        if decisions:
            self._decided(decisions)
        if self.flags is not None:
            for seen in self.flags.watch.advance(now):
                self._flag_observed(seen, now)
            self._flags_changed = True
        return self._commit({})

    def notify(self, alerts: Sequence[Alert]) -> None:
        """The notifiers alerts go to from now on (after a reload)."""
        self._alerts = alerts
        self.messages.reconfigure(self.spec, alerts)

    def daemon_alert(self, record: AlertRecord) -> list[OutboxItem]:
        """An alert about the daemon itself (a rejected reload, say), through the outbox."""
        self.messages.alert(record)
        return self._commit({})

    def confirm(self, ids: Iterable[int]) -> None:
        self.store.confirm(ids)

    def summary(self) -> str:
        stats = self.stats
        events = ", ".join(f"{src} {n}" for src, n in sorted(stats.events.items())) or "none"
        invalid = ", ".join(f"{src}/{why} {n}" for (src, why), n in sorted(stats.invalid.items()))
        decided = ", ".join(f"{kind} {n}" for kind, n in sorted(stats.decisions.items()))
        return f"events: {events}; invalid: {invalid or 'none'}; decisions: {decided or 'none'}"

    # -- the sources --------------------------------------------------------------------
    def _ingest_events(
        self, source: str, payloads: Sequence[bytes | None], now: float, origin: Origin
    ) -> None:
        before = drops(self.engine.stats)
        taken = intake.take(self.engine, payloads, now, MAX_PAYLOAD_BYTES, self.max_future_skew)
        count_drops(self.stats.dropped, source, before, self.engine.stats)
        self.stats.events[source] += taken.events
        for _, rejection in taken.rejected:
            self._reject(source, rejection.reason, rejection.detail)
        for index, exc in taken.failed:
            report_failure(self.stats.failed, source, origin.describe(index), exc)
        latency = self.latency
        for ts, decisions in taken.decided:
            if latency is not None:
                latency(max(0.0, now - ts))
            self._decided(decisions)

    def _ingest_cdc(
        self,
        topic: str,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        now: float,
        origin: Origin,
    ) -> None:
        assert self.cdc is not None
        before = drops(self.engine.stats)
        for index, (key, value) in enumerate(zip(keys, values, strict=True)):
            # One change must not stop the intake: what handling it raises is counted and
            # skipped (only the checker's and the engine's work, not our publishing).
            try:
                events = self.cdc.handle(topic, key, value, now)
            except Exception as exc:
                report_failure(self.stats.failed, "cdc", origin.describe(index), exc)
                continue
            if isinstance(events, Rejection):
                self._reject("cdc", events.reason, events.detail)
                continue
            self.stats.events["cdc"] += 1
            for event in events:
                try:
                    decisions = self.engine.handle(event, now)
                except Exception as exc:
                    report_failure(self.stats.failed, "cdc", origin.describe(index), exc)
                    continue
                if decisions:
                    self._decided(decisions)
        count_drops(self.stats.dropped, "cdc", before, self.engine.stats)
        self._cdc_changed = True

    def _ingest_flag_table(
        self, topic: str, keys: Sequence[bytes | None], values: Sequence[bytes | None], now: float
    ) -> None:
        assert self.flags is not None
        for key, value in zip(keys, values, strict=True):
            observed = self.flags.row(topic, key, value)
            if observed is None:
                continue
            seen = self.flags.watch.observe(observed[0], observed[1], now)
            if seen is not None:
                self._flag_observed(seen, now)
        self._flags_changed = True

    def _flag_observed(self, seen: Observation, now: float) -> None:
        """What the table holds, as a decision with the rollout's drift policy."""
        assert self.flags is not None
        name = self.flags.rollout_of[seen.flag]
        decision, adopt = flagwatch.decide(seen, name, self.flags.policy[name], now)
        decisions: list[Decision] = [decision]
        if adopt is not None:
            decisions += self.engine.handle(adopt, now)
        self._decided(decisions)

    # -- decisions ----------------------------------------------------------------------
    def _decided(self, decisions: list[Decision]) -> None:
        """One call's decisions: recorded, counted, logged, and their messages built."""
        stats = self.stats
        for decision in decisions:
            stats.decisions[decision.kind] += 1
            decision_log.info("decision", **to_dict(decision))
            if not decision.rollout:
                continue  # a breaker's
            recent = self.recent.get(decision.rollout)
            if recent is None:
                recent = self.recent[decision.rollout] = deque(maxlen=RECENT)
            recent.append(decision)
            trigger = rolled_back_by(decision)
            if trigger is not None:
                stats.rollbacks[(decision.rollout, trigger)] += 1
            elif isinstance(decision, FlagDecision):
                self._flag_checked(decision)
        self.messages.decided(decisions)
        if self.flags is not None and self.messages.out.expected:
            for flag, percent, ts in self.messages.out.expected:
                self.flags.watch.expect(flag, percent, ts)
            self.messages.out.expected.clear()
            self._flags_changed = True

    def _flag_checked(self, decision: FlagDecision) -> None:
        if decision.status == CONFIRMED:
            self.stats.flag_confirmed += 1
            if self.confirm_delay is not None and decision.delay is not None:
                self.confirm_delay(decision.delay)
        else:
            self.stats.flag_drift[decision.rollout] += 1

    def _reject(self, source: str, reason: str, detail: str) -> None:
        count = self.stats.invalid[(source, reason)] + 1
        self.stats.invalid[(source, reason)] = count
        if count <= 10 or count % 1000 == 0:  # the first few of each kind, then a sample
            log.warning("invalid event from %s (%s, #%d): %s", source, reason, count, detail)

    def _monotonic(self, now: float) -> float:
        # The engine's time never goes back, even if the wall clock does.
        current = self.engine.now
        return now if current is None or now > current else current

    # -- the one transaction ------------------------------------------------------------
    def _commit(
        self,
        offsets: dict[tuple[str, int], int],
        rewrite_all: bool = False,
        drop: set[str] | None = None,
    ) -> list[OutboxItem]:
        engine = self.engine
        if self._pending:
            offsets = {**self._pending, **offsets}
            self._pending = {}
        if engine.now is not None:
            self._written_at = engine.now
        changed = engine.take_changed()
        if rewrite_all:
            changed = {r.spec.name for r in engine.rollouts}
        parts = {name: engine.snapshot_rollout(name) for name in changed}
        watches: dict[str, bytes] = {}
        if self.cdc is not None and self._cdc_changed:
            watches[CDC_STATE] = msgspec.json.encode(self.cdc.dump())
            self._cdc_changed = False
        if self.flags is not None and self._flags_changed:
            watches[FLAGS_STATE] = msgspec.json.encode(self.flags.watch.dump())
            self._flags_changed = False
        out = self.messages.take()
        batch = Batch(
            engine=engine.snapshot_global(),
            rollouts=parts,
            drop_rollouts=drop or set(),
            revisions=self._revisions.take_new(),
            offsets=offsets,
            outbox=out.rows,
            watches=watches,
        )
        ids = self.store.commit(batch)
        items = [
            OutboxItem(id=i, sink=sink, key=key, payload=payload, retain=retain)
            for i, (sink, key, payload, retain) in zip(ids, out.rows, strict=True)
        ]
        self.stats.batches += 1
        if self.on_flags is not None:  # flag delivery sees only what the store holds
            self.on_flags(out.flag_states)
        return items
