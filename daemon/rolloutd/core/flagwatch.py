"""Flag-table observation: does the table applications read agree with what was decided?

Rules:
* `expect(flag, percent, ts)` records a decided percent; `observe(flag, percent, now)`
  records what the flag table (seen through CDC) holds. A decided percent that shows up
  is confirmed, with the delay from the decision; a value nobody decided is drift.
* A decided percent that has not shown up `grace` seconds after the decision is drift too
  ("not applied"), judged at the first `advance` at or after the deadline.
* Only the latest decision per flag is awaited: a newer one replaces it.
* The drift policy is decided here too (`decide`): an observation becomes a `flag`
  decision whose `action` says what follows (alert: an alert; revert: the decided state is
  published again; adopt: a `set_percent` command to what the table holds, returned for
  the engine). `adopt` with nothing observed falls back to `alert`.
* Pure: time is an argument; results are values for the caller to act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from rolloutd.core.decisions import FlagDecision, whole
from rolloutd.core.events import Command

CONFIRMED, DRIFT, NOT_APPLIED = "confirmed", "drift", "not_applied"
ALERT, REVERT, ADOPT = "alert", "revert", "adopt"  # the drift policies
ACTOR: Final = "flag-table"  # who adopts


@dataclass(frozen=True, slots=True)
class Observation:
    flag: str
    status: str  # confirmed | drift | not_applied
    decided: float | None  # the percent rolloutd decided
    observed: float | None  # the percent the table holds (None: never seen)
    delay: float | None  # confirmed: seconds from the decision to the table


class FlagWatch:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.awaiting: dict[str, tuple[float, float]] = {}  # flag -> (percent, decided at)
        self.decided: dict[str, float] = {}  # flag -> latest decided percent
        self.seen: dict[str, float] = {}  # flag -> latest percent in the table

    def expect(self, flag: str, percent: float, ts: float) -> None:
        self.decided[flag] = percent
        if self.seen.get(flag) == percent:
            self.awaiting.pop(flag, None)  # the table already holds it
            return
        self.awaiting[flag] = (percent, ts)

    def observe(self, flag: str, percent: float, now: float) -> Observation | None:
        """What the table holds now; None when the flag is not one rolloutd drives."""
        if flag not in self.decided:
            return None
        previous = self.seen.get(flag)
        self.seen[flag] = percent
        waiting = self.awaiting.get(flag)
        if waiting is not None and waiting[0] == percent:
            del self.awaiting[flag]
            return Observation(flag, CONFIRMED, percent, percent, max(0.0, now - waiting[1]))
        if percent == self.decided[flag]:
            return None  # a repeat of the agreed value
        if previous == percent:
            return None  # already reported
        return Observation(flag, DRIFT, self.decided[flag], percent, None)

    def advance(self, now: float) -> list[Observation]:
        late = [f for f, (_, ts) in self.awaiting.items() if now >= ts + self.grace]
        out = []
        for flag in sorted(late):
            percent, _ = self.awaiting.pop(flag)
            out.append(Observation(flag, NOT_APPLIED, percent, self.seen.get(flag), None))
        return out

    def dump(self) -> dict[str, Any]:
        return {
            "awaiting": {f: list(v) for f, v in self.awaiting.items()},
            "decided": self.decided,
            "seen": self.seen,
        }

    def load(self, data: dict[str, Any]) -> None:
        self.awaiting = {f: (v[0], v[1]) for f, v in data["awaiting"].items()}
        self.decided = dict(data["decided"])
        self.seen = dict(data["seen"])


def _whole(value: float | None) -> float | int | None:
    return None if value is None else whole(value)


def decide(
    seen: Observation, rollout: str, policy: str, now: float
) -> tuple[FlagDecision, Command | None]:
    """The observation as a decision, with `policy`'s action on drift; and for `adopt`, the
    command that adopts what the table holds."""
    action = None if seen.status == CONFIRMED else policy
    if action == ADOPT and seen.observed is None:
        action = ALERT  # nothing to adopt
    decision = FlagDecision(
        ts=now,
        kind="flag",
        rollout=rollout,
        flag=seen.flag,
        status=seen.status,
        percent=_whole(seen.decided),
        observed=_whole(seen.observed),
        delay=seen.delay,
        action=action,
    )
    command = None
    if action == ADOPT:
        command = Command(
            ts=now, rollout=rollout, command="set_percent", actor=ACTOR, percent=seen.observed
        )
    return decision, command
