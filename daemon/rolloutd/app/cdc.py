"""CDC in: Debezium change events -> migration checks -> gauge and counter events for a rollout.

Rules: this edge decodes (adapters/debezium.py), the pure checker judges
(core/migration.py), and what it measures enters the engine as ordinary `gauge` / `counter`
events of the guarded rollout: `counter:data_validation_failures`,
`gauge:migration_progress`, `gauge:cdc_lag_seconds`. So any trigger can watch a migration
(`data_validation_failures > 0` -> rollback; progress `unchanged` for 30m -> alert).
Progress is reported on every tick once rows were seen, so a stalled backfill shows as an
unchanged gauge rather than as silence. Malformed envelopes are counted and skipped.
"""

from __future__ import annotations

from typing import Any

from rolloutd.adapters.cdc.debezium import ChangeEvent, decode_change
from rolloutd.core.cdc.migration import MigrationChecker, MigrationWiring, Sample
from rolloutd.core.events import Counter as CounterEvent
from rolloutd.core.events import Event, Gauge, Rejection

# MigrationWiring lives in the core (plain data the config builds); re-exported here.
__all__ = ["CdcRouter", "MigrationWiring"]


class CdcRouter:
    def __init__(self, wirings: tuple[MigrationWiring, ...]) -> None:
        self.wirings = {w.spec.name: w for w in wirings}
        self.checkers = {w.spec.name: MigrationChecker(w.spec) for w in wirings}
        self.by_topic: dict[str, list[str]] = {}
        for w in wirings:
            for topic in {w.source_topic, w.target_topic}:
                self.by_topic.setdefault(topic, []).append(w.spec.name)

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    def handle(
        self, topic: str, key: bytes | None, value: bytes | None, now: float
    ) -> list[Event] | Rejection:
        """The samples one change produces, or why the change was rejected."""
        names = self.by_topic.get(topic)
        if not names:
            return []
        decoded = decode_change(topic, key, value)
        if isinstance(decoded, Rejection):
            return decoded
        if not isinstance(decoded, ChangeEvent):
            return []  # tombstones, transaction markers, heartbeats: nothing to compare
        events: list[Event] = []
        for name in names:
            samples = self.checkers[name].on_change(decoded, now)
            events += self._events(name, samples, now)
        return events

    def tick(self, now: float) -> list[Event]:
        events: list[Event] = []
        for name, checker in self.checkers.items():
            samples = checker.advance(now)
            progress = checker.progress()
            if progress.source_rows or progress.target_rows:
                samples = [*samples, Sample("gauge", "migration_progress", progress.ratio)]
            events += self._events(name, samples, now)
        return events

    def _events(self, name: str, samples: list[Sample], now: float) -> list[Event]:
        wiring = self.wirings[name]
        out: list[Event] = []
        for sample in samples:
            kind = Gauge if sample.kind == "gauge" else CounterEvent
            out.append(
                kind(
                    ts=now,
                    rollout=wiring.rollout,
                    cohort=wiring.cohort,
                    name=sample.name,
                    value=float(sample.value),
                )
            )
        return out

    def metrics(self) -> dict[str, dict[str, float]]:
        result: dict[str, dict[str, float]] = {}
        for name, checker in self.checkers.items():
            values: dict[str, float] = {"progress": checker.progress().ratio}
            lag = checker.last_lag()
            if lag is not None:
                values["cdc_lag_seconds"] = lag
            values.update({kind: float(n) for kind, n in checker.failures().items()})
            result[name] = values
        return result

    def dump(self) -> dict[str, Any]:
        return {name: checker.dump() for name, checker in self.checkers.items()}

    def load(self, data: dict[str, Any]) -> None:
        for name, state in data.items():
            if name in self.checkers:
                self.checkers[name].load(state)
