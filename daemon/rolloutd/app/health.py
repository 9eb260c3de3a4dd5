"""What the daemon knows of its own health: readiness, and the problems no trigger sees.

Rules:
* Ready once the state is restored and every source is up; each source reports its state
  through the updater `Health.source` hands out, with the reason it is down. With a leader
  lease, a standby is never ready (`/readyz` names the leader) until it leads.
* Daemon-level alerts (`HealthAlerts`): publishing failing for `PUBLISH_ALERT_AFTER` seconds
  (critical), and a progressing rollout waiting well past its hold (`STALL_AFTER`, or one
  hold if longer: the gate stays shut for lack of data or a trigger; warning). Each fires
  once when it appears and resolves once when it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from rolloutd.adapters.notify import AlertRecord, daemon_alert
from rolloutd.core.rollout import RolloutRuntime
from rolloutd.core.triggers import INSUFFICIENT

HEALTH_EVERY = 5.0  # seconds between checks for daemon-level alerts
PUBLISH_ALERT_AFTER = 60.0  # publishing failing this long pages
STALL_AFTER = 600.0  # a rollout this far past its hold (or one hold, if longer) is stalled


@dataclass(slots=True)
class Health:
    """What readiness is made of."""

    started: bool = False
    sources: dict[str, bool] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)  # why a source is not up
    leased: bool = False  # a leader lease decides who acts (PostgreSQL state)
    standby: str | None = None  # why this daemon does not lead; None: it leads

    @property
    def ready(self) -> bool:
        return self.started and self.standby is None and all(self.sources.values())

    def stand_by(self, why: str | None) -> None:
        """Standing by (`why` names the leader), or leading (None)."""
        self.standby = why
        if why is None:
            self.reasons.pop("leader", None)
        else:
            self.reasons["leader"] = why

    def source(self, name: str) -> Callable[[bool, str], None]:
        """The state updater of a source, which starts as not connected."""
        self.sources[name] = False
        self.reasons[name] = "not connected yet"

        def update(connected: bool, reason: str = "") -> None:
            self.sources[name] = connected
            self.reasons[name] = "" if connected else reason or "not connected"

        return update

    def readiness(self) -> dict[str, bool]:
        leading = {"leading": self.standby is None} if self.leased else {}
        return {
            "state restored": self.started,
            **leading,
            **{f"{name} connected": up for name, up in self.sources.items()},
        }


def problems(
    now: float,
    failing_for: float | None,
    waiting: int,
    rollouts: Iterable[RolloutRuntime],
) -> dict[str, str | None]:
    """Each watched condition and its problem (None: fine). `failing_for`: seconds since
    publishing started failing (None: it works), with `waiting` messages in the outbox."""
    found: dict[str, str | None] = {"publish-failed": None}
    if failing_for is not None and failing_for > PUBLISH_ALERT_AFTER:
        found["publish-failed"] = (
            f"publishing flag state has failed for {failing_for:.0f}s; "
            f"{waiting} messages wait in the outbox"
        )
    for rollout in rollouts:
        key = f"stalled/{rollout.spec.name}"
        found[key] = None
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
            found[key] = (
                f"{rollout.spec.name} has waited {overdue:.0f}s past its hold at "
                f"{rollout.percent:g}%; blocked by {', '.join(blocking) or 'its window'}"
            )
    return found


class HealthAlerts:
    """Turns the problems seen at each check into firing and resolved alerts."""

    def __init__(self) -> None:
        self.raised: set[str] = set()

    def check(self, now: float, found: dict[str, str | None]) -> list[AlertRecord]:
        records = []
        for what, problem in found.items():
            if (problem is not None) == (what in self.raised):
                continue
            status = "firing" if problem is not None else "resolved"
            summary = problem or f"{what}: recovered"
            severity = "critical" if what == "publish-failed" else "warning"
            records.append(daemon_alert(what, status, summary, now, severity=severity))
            (self.raised.add if problem is not None else self.raised.discard)(what)
        return records
