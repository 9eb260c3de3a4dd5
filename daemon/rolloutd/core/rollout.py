"""The rollout state machine: one table of (phase, event) -> phase, and a runtime that uses it.

Rules:
* Every phase change goes through `_transition`, which takes its target from TRANSITIONS
  (core/machines.py); a command with no entry for the current phase is refused with a
  reason and changes nothing.
* STEPPING as a target means "progressing, or promoted when the new step is the last".
* Steps advance only through the gate: hold (or bake) elapsed and no trigger pending, firing
  or short of data; a hold also waits for the spec's advance window, if any, to be open.
  Rollback and abort always decide percent 0.
* A rollout with `start_at` that the engine starts early stays pending but scheduled: it is
  armed (so the engine evaluates it), runs no triggers, and starts at the first evaluation
  point at or after `start_at`. A command accepted meanwhile (start, abort, rollback)
  replaces the schedule.
* Triggers are armed in progressing, paused and promoted; a trigger marked
  `after_completion` stays armed in completed too. Several firing at once are handled in
  config order; after a rollback the rest of the evaluation is skipped.
"""

from __future__ import annotations

import math
from typing import Any

from rolloutd.core.decisions import (
    AlertDecision,
    Decision,
    PercentDecision,
    PhaseDecision,
    RefusedDecision,
    TriggerDecision,
    rollback_reason,
    whole,
)
from rolloutd.core.machines import (
    ABORT,
    ABORTED,
    ARMED,
    BAKE_ELAPSED,
    COMMANDS,
    COMPLETED,
    HOLD_ELAPSED,
    PENDING,
    PHASES,
    PROGRESSING,
    PROMOTE,
    PROMOTED,
    RESUME,
    RETRY,
    ROLLBACK,
    ROLLED_BACK,
    SET_PERCENT,
    START,
    STEPPING,
    TERMINAL,
    TRANSITIONS,
    TRIGGER_PAUSE,
    TRIGGER_ROLLBACK,
    refusal_reason,
)
from rolloutd.core.schedule import SEARCH_HORIZON
from rolloutd.core.spec import RolloutSpec
from rolloutd.core.triggers import FIRING, INACTIVE, TriggerRuntime

# The table and its names live in machines; these are the rollout's own, re-exported.
__all__ = [  # noqa: RUF022 (the runtime first, then the names it re-exports)
    "RolloutRuntime",
    "refusal_reason",
    "ABORTED",
    "COMMANDS",
    "PHASES",
    "ROLLED_BACK",
    "STEPPING",
    "TERMINAL",
    "TRANSITIONS",
]


class RolloutRuntime:
    """The live state of one rollout and the decisions it makes."""

    __slots__ = (
        "percent",
        "phase",
        "scheduled",
        "spec",
        "started_at",
        "step",
        "step_started",
        "triggers",
        "window_shut",
    )

    def __init__(self, spec: RolloutSpec, triggers: list[TriggerRuntime]) -> None:
        self.spec = spec
        self.triggers = triggers
        self.phase = PENDING
        self.step = 0  # index into spec.steps
        self.step_started = 0.0  # when the current hold or bake began
        self.percent = 0.0
        self.started_at: float | None = None
        self.scheduled = False  # pending until spec.start_at
        # A stretch of time known to be outside the advance window: [from, until). Derived
        # from the spec, so it is a cache and not part of the snapshot.
        self.window_shut = (0.0, 0.0)

    @property
    def last_step(self) -> int:
        return len(self.spec.steps) - 1

    @property
    def armed(self) -> bool:
        phase = self.phase
        if phase in ARMED:
            return True
        if phase == COMPLETED:
            return any(t.spec.after_completion for t in self.triggers)
        return self.scheduled

    # -- decisions ----------------------------------------------------------------------
    def _percent(
        self, out: list[Decision], now: float, reason: str, actor: str | None = None
    ) -> None:
        out.append(
            PercentDecision(
                ts=now,
                kind="percent",
                rollout=self.spec.name,
                flag=self.spec.flag,
                percent=whole(self.percent),
                step=self.step + 1,
                reason=reason,
                actor=actor,
            )
        )

    def _phase(
        self, out: list[Decision], now: float, phase: str, reason: str, actor: str | None = None
    ) -> None:
        self.phase = phase
        out.append(
            PhaseDecision(
                ts=now,
                kind="phase",
                rollout=self.spec.name,
                phase=phase,
                reason=reason,
                actor=actor,
            )
        )

    def _accepts(self, event: str) -> bool:
        return (self.phase, event) in TRANSITIONS

    def _transition(
        self, out: list[Decision], now: float, event: str, reason: str, actor: str | None = None
    ) -> None:
        """The one way the phase changes: to TRANSITIONS' target for `event` (STEPPING: by
        the current step), with a phase decision unless the target is the phase held."""
        target = TRANSITIONS[(self.phase, event)]
        if target == STEPPING:
            target = PROMOTED if self.step == self.last_step else PROGRESSING
        if target != self.phase:
            self._phase(out, now, target, reason, actor)

    def _enter_step(
        self,
        out: list[Decision],
        now: float,
        event: str,
        step: int,
        reason: str,
        actor: str | None = None,
    ) -> None:
        """Move to `step` (percent decision), then take `event`'s transition."""
        self.step = step
        self.step_started = now
        self.percent = self.spec.steps[step].percent
        self._percent(out, now, reason, actor)
        self._transition(out, now, event, reason, actor)

    def _stop(
        self,
        out: list[Decision],
        now: float,
        event: str,
        reason: str,
        phase_reason: str,
        actor: str | None = None,
    ) -> None:
        self.percent = 0.0
        self._percent(out, now, reason, actor)
        self._transition(out, now, event, phase_reason, actor)

    def _reset_triggers(self, out: list[Decision], now: float) -> None:
        """start/retry: triggers begin inactive; a firing one is resolved on the way. The
        decisions first, then the resets: a judge's check shares the judge's tests, and its
        decision shows them as they were, like every other."""
        for trig in self.triggers:
            if trig.state != INACTIVE:
                self._trigger_decision(out, now, trig, INACTIVE)
                if trig.state == FIRING:
                    self._alert(out, now, trig, "resolved")
        for trig in self.triggers:
            trig.reset()

    def _trigger_decision(
        self, out: list[Decision], now: float, trig: TriggerRuntime, state: str
    ) -> None:
        out.append(
            TriggerDecision(
                ts=now,
                kind="trigger",
                rollout=self.spec.name,
                trigger=trig.spec.name,
                state=state,
                value=trig.value,
                threshold=trig.bound,
                samples=trig.samples,
                evidence=trig.evidence(),
            )
        )

    def _alert(self, out: list[Decision], now: float, trig: TriggerRuntime, status: str) -> None:
        out.append(
            AlertDecision(
                ts=now,
                kind="alert",
                rollout=self.spec.name,
                trigger=trig.spec.name,
                severity=trig.spec.severity,
                status=status,
                action=trig.spec.action,
            )
        )

    # -- the clock and the triggers -----------------------------------------------------
    def start(self, out: list[Decision], now: float, reason: str, actor: str | None = None) -> None:
        """The engine's start: now, or scheduled for `spec.start_at` if that is later."""
        start_at = self.spec.start_at
        if start_at is not None and now < start_at:
            self.scheduled = True
            return
        self._start(out, now, START, reason, actor)

    def _start(
        self, out: list[Decision], now: float, event: str, reason: str, actor: str | None
    ) -> None:
        """start or retry: from the first step, triggers reset."""
        self.scheduled = False
        self.started_at = now
        self._reset_triggers(out, now)
        self._enter_step(out, now, event, 0, reason, actor)

    def _start_if_due(self, out: list[Decision], now: float) -> None:
        start_at = self.spec.start_at
        # No start_at any more: a reload dropped it, so the start is overdue.
        if start_at is None or now >= start_at:
            self._start(out, now, START, START, None)

    def evaluate(self, out: list[Decision], now: float) -> None:
        """One evaluation point: triggers first (they may act), then holds and bake."""
        if self.scheduled:
            self._start_if_due(out, now)
            if self.scheduled:
                return  # nothing to watch before the start
        if self.armed and not self._run_triggers(out, now):
            return
        phase = self.phase
        # Deadlines first: they are cheap, the gate walks every trigger.
        while (
            phase == PROGRESSING
            and now >= self.deadline()
            and self._window_open(now)
            and self._gate_open()
        ):
            self._enter_step(out, now, HOLD_ELAPSED, self.step + 1, HOLD_ELAPSED)
            phase = self.phase
        if phase == PROMOTED and now >= self.deadline() and self._gate_open():
            self._transition(out, now, BAKE_ELAPSED, BAKE_ELAPSED)

    def deadline(self) -> float:
        """When the current hold (progressing) or the bake (promoted) ends; never otherwise."""
        if self.phase == PROGRESSING:
            return self.step_started + self.spec.steps[self.step].hold
        if self.phase == PROMOTED:
            return self.step_started + self.spec.bake
        return math.inf

    def _gate_open(self) -> bool:
        return not any(trig.blocks for trig in self.triggers)

    def _window_open(self, now: float) -> bool:
        """Whether `now` is inside the advance window (always, without one)."""
        window = self.spec.advance_window
        if window is None:
            return True
        shut_from, shut_until = self.window_shut
        if shut_from <= now < shut_until:
            return False  # the common case while a hold waits for the window
        if window.contains(now):
            return True
        opening = window.next_opening(now)
        self.window_shut = (now, now + SEARCH_HORIZON if opening is None else opening)
        return False

    def _run_triggers(self, out: list[Decision], now: float) -> bool:
        """Read and step every armed trigger; False if a rollback ended the evaluation."""
        completed = self.phase == COMPLETED
        for trig in self.triggers:
            if completed and not trig.spec.after_completion:
                continue
            trig.read(now, self.started_at)
            before = trig.state
            change = trig.step(now)
            if change is None:
                continue
            self._trigger_decision(out, now, trig, change)
            if change == FIRING:
                if not self._act(out, now, trig):
                    return False
            elif before == FIRING:
                self._alert(out, now, trig, "resolved")
        return True

    def _act(self, out: list[Decision], now: float, trig: TriggerRuntime) -> bool:
        """The firing trigger's action; False after a rollback."""
        name = trig.spec.name
        action = trig.spec.action
        if action == "rollback" and self._accepts(TRIGGER_ROLLBACK):
            self._stop(out, now, TRIGGER_ROLLBACK, rollback_reason(name), name)
            self._alert(out, now, trig, "firing")
            return False
        if action == "pause" and self._accepts(TRIGGER_PAUSE):
            self._transition(out, now, TRIGGER_PAUSE, name)
        self._alert(out, now, trig, "firing")
        return True

    # -- commands -----------------------------------------------------------------------
    def command(
        self,
        out: list[Decision],
        now: float,
        command: str,
        actor: str | None = None,
        percent: float | None = None,
        full: bool = False,
    ) -> None:
        if self.scheduled:
            # A due start comes first, as the engine's own start would have.
            self._start_if_due(out, now)
        if not self._accepts(command):
            self._refuse(out, now, command, refusal_reason(self.phase, command), actor)
            return
        self.scheduled = False  # every command accepted while pending replaces the schedule
        reason = f"command: {command}"
        if command in (START, RETRY):
            self._start(out, now, command, reason, actor)
        elif command == PROMOTE:
            if self.step == self.last_step:
                self._refuse(out, now, command, "already at the last step", actor)
                return
            step = self.last_step if full else self.step + 1
            self._enter_step(out, now, command, step, reason, actor)
        elif command == RESUME:
            self._resume(out, now, reason, actor)
        elif command == SET_PERCENT:
            self._set_percent(out, now, percent, reason, actor)
        elif command in (ABORT, ROLLBACK):
            self._stop(out, now, command, reason, reason, actor)
        else:  # pause
            self._transition(out, now, command, reason, actor)

    def _refuse(
        self, out: list[Decision], now: float, command: str, reason: str, actor: str | None
    ) -> None:
        out.append(
            RefusedDecision(
                ts=now,
                kind="refused",
                rollout=self.spec.name,
                command=command,
                reason=reason,
                actor=actor,
            )
        )

    def _resume(self, out: list[Decision], now: float, reason: str, actor: str | None) -> None:
        self.step_started = now
        step_percent = self.spec.steps[self.step].percent
        if self.percent != step_percent:  # back from a manual set_percent
            self.percent = step_percent
            self._percent(out, now, reason, actor)
        self._transition(out, now, RESUME, reason, actor)

    def _set_percent(
        self,
        out: list[Decision],
        now: float,
        percent: float | None,
        reason: str,
        actor: str | None,
    ) -> None:
        """A manual percent: holds there (paused) until resume returns to the plan."""
        assert percent is not None
        self.percent = percent
        below = [i for i, s in enumerate(self.spec.steps) if s.percent <= percent]
        self.step = below[-1] if below else 0
        self._percent(out, now, reason, actor)
        self._transition(out, now, SET_PERCENT, reason, actor)

    # -- snapshot -----------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "step": self.step,
            "step_started": self.step_started,
            "percent": self.percent,
            "started_at": self.started_at,
            "scheduled": self.scheduled,
            "triggers": {t.spec.name: t.dump() for t in self.triggers},
        }

    def load(self, data: dict[str, Any]) -> None:
        self.phase = data["phase"]
        self.step = min(data["step"], self.last_step)
        self.step_started = data["step_started"]
        self.percent = data["percent"]
        self.started_at = data["started_at"]
        # Snapshots from before schedules have no such key. A manual rollout has no schedule,
        # even if it had one when the snapshot was taken.
        scheduled = data.get("scheduled", False) and self.spec.start == "immediately"
        self.scheduled = bool(scheduled) and self.phase == PENDING
        for trig in self.triggers:
            state = data["triggers"].get(trig.spec.name)
            if state is not None:
                trig.load(state)
