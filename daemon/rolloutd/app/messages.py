"""Every message the daemon sends, built from the decisions alone: flag state, breaker state,
the decision audit and alerts.

Rules:
* Pure: no I/O, no clock, and no look at the engine. What a message says comes from the
  decisions and from what the decisions before them left: `Positions` (each rollout's
  flag, percent and phase, seeded from the state at start and moved by every `percent` and
  `phase` decision) and `Revisions` (each flag's and breaker's revision). A batch of
  decisions decided by several events in a row therefore publishes each event's own state,
  in order, however late the caller hands them over.
* One flag message per rollout whose percent or phase moved, per call (one call: the
  decisions of one event, one tick or one command); one breaker state per breaker change;
  one audit row per decision when there is a decisions topic; one row per notifier that
  wants an alert (trigger alerts carry the trigger's definition, its measurement of the same
  instant, and the rollout's position after that instant).
* Flag-table decisions act by their `action` (core/flagwatch.py decides it): `revert`
  publishes the rollout's position again (a new revision), `alert` an alert about the
  drift. Each decided flag state is also expected back from the flag table.
* Revisions only grow, across restarts, and across a lost state file: a new store's
  revisions start above its epoch's floor (see adapters/store.py).
* With a leader lease (PostgreSQL state) every flag, breaker and audit message carries the
  leader's `generation`; without one the field is absent and the bytes are as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from rolloutd.adapters.notify import AlertRecord, daemon_alert, route, trigger_alert
from rolloutd.config import Alert
from rolloutd.core.decisions import (
    AlertDecision,
    BreakerDecision,
    Decision,
    FlagDecision,
    PercentDecision,
    PhaseDecision,
    TriggerDecision,
    encode,
    whole,
)
from rolloutd.core.flagwatch import ALERT, REVERT
from rolloutd.core.outbound import Sink
from rolloutd.core.rollout import RolloutRuntime
from rolloutd.core.spec import EngineSpec, TriggerSpec

Row = tuple[Sink, bytes | None, bytes, bool]  # (sink, key, payload, retain): one outbox row


class BreakerState(msgspec.Struct, frozen=True, omit_defaults=True):
    breaker: str
    state: str
    revision: int
    ts: float
    generation: int | None = None  # the leader's, with a PostgreSQL state; absent otherwise


class FlagState(msgspec.Struct, frozen=True, omit_defaults=True):
    flag: str
    percent: float | int
    rollout: str
    phase: str
    revision: int
    ts: float
    generation: int | None = None  # the leader's, with a PostgreSQL state; absent otherwise


@dataclass(frozen=True, slots=True)
class Sinks:
    """Where messages go; None: not published there."""

    flags_topic: str | None = None  # flag state, and breaker state keyed "breaker:<name>"
    decisions_topic: str | None = None
    mqtt_flags_prefix: str | None = None
    mqtt_breakers_prefix: str | None = None


@dataclass(slots=True)
class Position:
    flag: str
    percent: float
    phase: str


class Positions:
    """Each rollout's flag, percent and phase as its decisions left them."""

    def __init__(self, rollouts: Iterable[RolloutRuntime]) -> None:
        self.of = {r.spec.name: Position(r.spec.flag, r.percent, r.phase) for r in rollouts}

    def apply(self, decision: Decision) -> bool:
        """Move by one decision; True if it moved a percent or a phase."""
        if isinstance(decision, PercentDecision):
            self.of[decision.rollout].percent = decision.percent
            return True
        if isinstance(decision, PhaseDecision):
            self.of[decision.rollout].phase = decision.phase
            return True
        return False


class Revisions:
    """Each flag's and breaker's latest revision, and those not yet committed."""

    def __init__(self, stored: Mapping[str, int], floor: int) -> None:
        self.current = dict(stored)
        self.floor = floor  # a new store's epoch: revisions start above it
        self.new: dict[str, int] = {}

    def next(self, key: str) -> int:
        revision = max(self.current.get(key, 0), self.floor) + 1
        self.current[key] = self.new[key] = revision
        return revision

    def take_new(self) -> dict[str, int]:
        new, self.new = self.new, {}
        return new


@dataclass(slots=True)
class Outgoing:
    """The messages built since the last commit."""

    rows: list[Row] = field(default_factory=list)
    flag_states: list[FlagState] = field(default_factory=list)  # for flag delivery
    expected: list[tuple[str, float, float]] = field(default_factory=list)  # flag, percent, ts


class Messages:
    """Builds the messages of each call's decisions into `out`."""

    def __init__(
        self,
        sinks: Sinks,
        alerts: Sequence[Alert],
        spec: EngineSpec,
        positions: Positions,
        revisions: Revisions,
    ) -> None:
        self.sinks = sinks
        self.alerts = alerts  # notifiers: every alert becomes rows for those that want it
        self.positions = positions
        self.revisions = revisions
        self.out = Outgoing()
        self.triggers: dict[tuple[str, str], TriggerSpec] = {}
        # The leader's fencing generation, stamped on every flag, breaker and audit message
        # (None: one daemon on a SQLite file, and the messages as they always were).
        self.generation: int | None = None
        self.reconfigure(spec, alerts)

    def reconfigure(self, spec: EngineSpec, alerts: Sequence[Alert]) -> None:
        self.alerts = alerts
        self.triggers = {(r.name, t.name): t for r in spec.rollouts for t in r.triggers}

    def take(self) -> Outgoing:
        """What was built, for one commit; the next starts empty."""
        out, self.out = self.out, Outgoing()
        return out

    def decided(self, decisions: Sequence[Decision]) -> None:
        """The messages of one call's decisions, in order."""
        moved: dict[str, float] = {}
        measured: dict[tuple[str, str, float], TriggerDecision] = {}
        alerts: list[AlertDecision] = []
        for decision in decisions:
            if isinstance(decision, BreakerDecision):
                self._breaker(decision)
                continue
            self._audit(decision)
            if self.positions.apply(decision):
                moved[decision.rollout] = decision.ts
            elif isinstance(decision, TriggerDecision):
                measured[(decision.rollout, decision.trigger, decision.ts)] = decision
            elif isinstance(decision, AlertDecision):
                alerts.append(decision)
            elif isinstance(decision, FlagDecision):
                self._flag_table(decision)
        for name, ts in moved.items():
            self.flag_state(name, ts)
        for alert in alerts:
            self._alert(alert, measured.get((alert.rollout, alert.trigger, alert.ts)))

    def flag_state(self, rollout: str, ts: float) -> None:
        """The rollout's position as its flag's next state."""
        position = self.positions.of[rollout]
        flag = position.flag
        revision = self.revisions.next(flag)
        percent = whole(position.percent)
        state = FlagState(flag, percent, rollout, position.phase, revision, ts, self.generation)
        self.out.flag_states.append(state)
        self.out.expected.append((flag, position.percent, ts))
        payload = msgspec.json.encode(state)
        sinks = self.sinks
        if sinks.flags_topic is not None:
            self.out.rows.append((Sink.kafka(sinks.flags_topic), flag.encode(), payload, False))
        if sinks.mqtt_flags_prefix is not None:
            topic = Sink.mqtt(f"{sinks.mqtt_flags_prefix}/{flag}")
            self.out.rows.append((topic, None, payload, True))

    def alert(self, record: AlertRecord) -> None:
        """An alert about the daemon itself (a rejected reload, say)."""
        self.out.rows.extend(route(self.alerts, record))

    def _audit(self, decision: Decision) -> None:
        if self.sinks.decisions_topic is not None:
            topic = Sink.kafka(self.sinks.decisions_topic)
            payload = self._stamped(encode(decision))
            self.out.rows.append((topic, decision.rollout.encode(), payload, False))

    def _stamped(self, audit: bytes) -> bytes:
        """A decision's JSON object with the leader's generation as its last field."""
        if self.generation is None:
            return audit
        return b'%s,"generation":%d}' % (audit[:-1], self.generation)

    def _alert(self, alert: AlertDecision, measured: TriggerDecision | None) -> None:
        if not self.alerts:
            return
        position = self.positions.of[alert.rollout]
        record = trigger_alert(
            alert,
            spec=self.triggers.get((alert.rollout, alert.trigger)),
            measured=measured,
            percent=position.percent,
            phase=position.phase,
        )
        self.out.rows.extend(route(self.alerts, record))

    def _flag_table(self, decision: FlagDecision) -> None:
        if decision.action == REVERT:
            self.flag_state(decision.rollout, decision.ts)
        elif decision.action == ALERT:
            record = daemon_alert(
                f"drift/{decision.flag}",
                "firing",
                f"flag {decision.flag} of {decision.rollout}: table holds {decision.observed}, "
                f"decided {decision.percent} ({decision.status})",
                decision.ts,
                severity="warning",
            )
            self.out.rows.extend(route(self.alerts, record))

    def _breaker(self, decision: BreakerDecision) -> None:
        """Audit it, and publish the breaker's state for the services to obey."""
        key = f"breaker:{decision.breaker}"
        sinks = self.sinks
        if sinks.decisions_topic is not None:
            topic = Sink.kafka(sinks.decisions_topic)
            self.out.rows.append((topic, key.encode(), self._stamped(encode(decision)), False))
        revision = self.revisions.next(key)
        state = msgspec.json.encode(
            BreakerState(decision.breaker, decision.state, revision, decision.ts, self.generation)
        )
        if sinks.flags_topic is not None:
            self.out.rows.append((Sink.kafka(sinks.flags_topic), key.encode(), state, False))
        if sinks.mqtt_breakers_prefix is not None:
            topic = Sink.mqtt(f"{sinks.mqtt_breakers_prefix}/{decision.breaker}")
            self.out.rows.append((topic, None, state, True))
