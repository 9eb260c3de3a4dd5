"""A plain reference for the engine's decisions, written from DESIGN.md's contract.

It keeps every accepted sample, and at every evaluation point (each bucket boundary, each
event) evaluates every armed rollout in config order, recomputing each trigger from the
samples inside its window. No caches, no shortcuts, no compiled code: the optimised engine
must decide exactly what this decides.

Scope: request, gauge and counter triggers (with baselines, `for`, `min_samples`, presence
ops), judge triggers and their sample-ratio checks, every command, bake and
`after_completion`. Not here: breakers, schedules (`start_at`, advance windows), snapshots
and reloads (other tests hold those).

Judges: tests/reference_judge.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from reference_judge import RefJudge
from rolloutd.core.decisions import (
    AlertDecision,
    Decision,
    PercentDecision,
    PhaseDecision,
    RefusedDecision,
    TriggerDecision,
    whole,
)
from rolloutd.core.events import Command, Counter, Event, Gauge, Request, Requests
from rolloutd.core.histogram import latency_slot, slot_value
from rolloutd.core.rollout import refusal_reason
from rolloutd.core.spec import EngineSpec, RolloutSpec, TriggerSpec

QUANTILES = {"latency_p50": 0.5, "latency_p90": 0.9, "latency_p95": 0.95, "latency_p99": 0.99}
ARMED = ("progressing", "paused", "promoted")
# Where each command applies (DESIGN.md, "Commands"; set_percent holds in paused).
APPLIES = {
    "start": ("pending",),
    "retry": ("rolled_back", "aborted"),
    "promote": ("progressing", "paused"),
    "pause": ("progressing", "promoted"),
    "resume": ("paused",),
    "set_percent": ("progressing", "paused", "promoted"),
    "abort": ("pending", "progressing", "paused", "promoted", "completed"),
    "rollback": ("pending", "progressing", "paused", "promoted", "completed"),
}


def compare(op: str, value: float, bound: float) -> bool:
    return {
        ">": value > bound,
        ">=": value >= bound,
        "<": value < bound,
        "<=": value <= bound,
    }[op]


@dataclass
class Sample:
    bucket: int
    ts: float
    count: int = 0
    errors: int = 0
    latencies: tuple[float, ...] = ()
    value: float = 0.0
    changed: bool = False  # gauges: differs from the newest sample seen before it


@dataclass
class Series:
    """Every accepted sample of one (cohort, kind, name) of a rollout."""

    span_max: int  # buckets: the longest window that reads it
    samples: list[Sample] = field(default_factory=list)
    newest: Sample | None = None  # by event time (gauges)

    def window(self, head: int, span: int) -> list[Sample]:
        return [s for s in self.samples if head - span < s.bucket <= head]


@dataclass
class Reading:
    outcome: str  # breach | ok | insufficient
    value: float | None
    samples: int


class RefTrigger:
    def __init__(self, spec: TriggerSpec, bucket: float) -> None:
        self.spec = spec
        self.span = max(1, round(spec.window / bucket))
        self.window_seconds = self.span * bucket
        self.bucket = bucket
        self.state = "inactive"
        self.since: float | None = None  # start of the breach streak (pending)
        self.ok_since: float | None = None  # start of the OK streak (firing)
        self.value: float | None = None
        self.bound: float | None = None
        self.samples = 0
        self.outcome = "insufficient"
        self.judge: RefJudge | None = None  # a judge trigger's tests, or its check's
        self.srm_check = spec.judge is not None and spec.judge.srm_of is not None

    @property
    def kind(self) -> str:
        return self.spec.metric_kind

    def key(self, cohort: str) -> tuple[str, str, str]:
        name = "" if self.kind == "request" else self.spec.metric_name
        return (cohort, self.kind, name)

    def cohorts(self) -> list[str]:
        if self.spec.judge is not None:
            return []  # reads its judge's tests, not a window
        base = self.spec.baseline
        return [self.spec.cohort] + ([base.cohort] if base is not None else [])

    # -- reading ------------------------------------------------------------------------
    def measure(self, series: Series, head: int) -> tuple[float | None, int]:
        """The metric over the window and its sample count (requests or samples)."""
        inside = series.window(head, self.span)
        metric = self.spec.metric
        if self.kind == "request":
            count = sum(s.count for s in inside)
            errors = sum(s.errors for s in inside)
            if metric == "error_rate":
                return (errors / count if count else None), count
            if metric == "availability":
                return (1.0 - errors / count if count else None), count
            if metric == "request_rate":
                return count / self.window_seconds, count
            slots = sorted(latency_slot(v) for s in inside for v in s.latencies)
            if not slots:
                return None, count
            return slot_value(slots[int(QUANTILES[metric] * (len(slots) - 1))]), count
        if self.kind == "counter":
            return float(sum((Fraction(s.value) for s in inside), Fraction(0))), len(inside)
        newest = series.newest
        last = newest.value if newest is not None and newest.bucket > head - self.span else None
        return last, len(inside)

    def read(
        self, now: float, head: int, started_at: float | None, series: dict[Any, Series]
    ) -> None:
        if self.judge is not None:
            reading = self.judge.read(head, self.srm_check)
            self.value, self.bound, self.samples, verdict = reading
            self.outcome = "insufficient" if verdict is None else "breach" if verdict else "ok"
            return
        own = series[self.key(self.spec.cohort)]
        if self.spec.op in ("unchanged", "absent"):
            self._read_presence(now, head, started_at, own)
            return
        value, samples = self.measure(own, head)
        self.value, self.samples = value, samples
        if value is None or samples < self.spec.min_samples:
            self.outcome = "insufficient"  # the bound shown stays the last one
            return
        bound = self.spec.threshold
        base = self.spec.baseline
        if base is not None:
            base_value, base_samples = self.measure(series[self.key(base.cohort)], head)
            if base_value is None or base_samples < self.spec.min_samples:
                self.bound, self.outcome = None, "insufficient"
                return
            relative = base.factor * base_value
            if bound is None:
                bound = relative
            elif self.spec.op in (">", ">="):
                bound = max(bound, relative)
            else:
                bound = min(bound, relative)
        assert bound is not None
        self.bound = bound
        self.outcome = "breach" if compare(self.spec.op, value, bound) else "ok"

    def _read_presence(self, now: float, head: int, started: float | None, own: Series) -> None:
        inside = own.window(head, self.span)
        self.samples = len(inside)
        self.bound = None
        observed = started is not None and now - started >= self.window_seconds
        if self.spec.op == "absent":
            self.value = None
            condition = observed and not inside
        else:
            self.value, _ = self.measure(own, head)
            if self.kind == "counter":
                still = self.value == 0
            else:
                still = not any(s.changed for s in inside)
            condition = observed and bool(inside) and still
        self.outcome = "breach" if condition else "ok"

    # -- state --------------------------------------------------------------------------
    def step(self, now: float) -> str | None:
        """The contract's trigger states; the new state if it changed."""
        if self.outcome == "insufficient":
            return None  # neither breaks nor completes a streak
        if self.outcome == "breach":
            self.ok_since = None
            if self.state == "inactive":
                self.since = now
                self.state = "firing" if self.spec.for_ <= 0 else "pending"
                return self.state
            since = self.since
            if self.state == "pending" and since is not None and now >= since + self.spec.for_:
                self.state = "firing"
                return "firing"
            return None
        if self.state == "pending":
            self.state, self.since = "inactive", None
            return "inactive"
        if self.state == "firing":
            if self.ok_since is None:
                self.ok_since = now
            if now >= self.ok_since + self.bucket:
                self.state, self.since, self.ok_since = "inactive", None, None
                return "inactive"
        return None


class RefRollout:
    def __init__(self, spec: RolloutSpec, bucket: float) -> None:
        self.spec = spec
        self.triggers = [RefTrigger(t, bucket) for t in spec.triggers]
        self.phase = "pending"
        self.step = 0
        self.step_started = 0.0
        self.percent = 0.0
        self.started_at: float | None = None
        self.head = 0  # the bucket of the evaluation point at hand
        self.judges = [RefJudge(t) for t in spec.triggers if t.judge and not t.judge.srm_of]
        for trig in self.triggers:
            if trig.spec.judge is not None:
                owner = trig.spec.judge.srm_of or trig.spec.name
                trig.judge = next(j for j in self.judges if j.spec.name == owner)
        self.series: dict[tuple[str, str, str], Series] = {}
        for trig in self.triggers:
            for cohort in trig.cohorts():
                key = trig.key(cohort)
                old = self.series.get(key)
                span = max(trig.span, old.span_max if old else 0)
                self.series[key] = Series(span, old.samples if old else [])

    @property
    def armed(self) -> bool:
        if self.phase in ARMED:
            return True
        return self.phase == "completed" and any(t.spec.after_completion for t in self.triggers)

    # -- decisions ----------------------------------------------------------------------
    def _percent(self, out: list[Decision], now: float, reason: str, actor: str | None) -> None:
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
        self, out: list[Decision], now: float, phase: str, reason: str, actor: str | None
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

    def _trigger(self, out: list[Decision], now: float, trig: RefTrigger, state: str) -> None:
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
                evidence=None
                if trig.judge is None
                else trig.judge.evidence(self.head, trig.srm_check),
            )
        )

    def _alert(self, out: list[Decision], now: float, trig: RefTrigger, status: str) -> None:
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

    def _enter(
        self, out: list[Decision], now: float, step: int, reason: str, actor: str | None
    ) -> None:
        self.step, self.step_started = step, now
        self.percent = self.spec.steps[step].percent
        self._percent(out, now, reason, actor)
        phase = "promoted" if step == len(self.spec.steps) - 1 else "progressing"
        if phase != self.phase:
            self._phase(out, now, phase, reason, actor)

    def start(self, out: list[Decision], now: float, reason: str, actor: str | None = None) -> None:
        self.started_at = now
        for trig in self.triggers:  # the reset is a state change like any other
            if trig.state != "inactive":
                self._trigger(out, now, trig, "inactive")
                if trig.state == "firing":
                    self._alert(out, now, trig, "resolved")
        for trig in self.triggers:  # then every trigger begins again, its judge too
            trig.state, trig.since, trig.ok_since = "inactive", None, None
        for judge in self.judges:
            judge.reset()
        self._enter(out, now, 0, reason, actor)

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, out: list[Decision], now: float, head: int) -> None:
        completed = self.phase == "completed"
        for trig in self.triggers:
            if completed and not trig.spec.after_completion:
                continue
            trig.read(now, head, self.started_at, self.series)
            before = trig.state
            change = trig.step(now)
            if change is None:
                continue
            self._trigger(out, now, trig, change)
            if change == "firing":
                name, action = trig.spec.name, trig.spec.action
                if action == "rollback":
                    self.percent = 0.0
                    self._percent(out, now, f"rollback: {name}", None)
                    self._phase(out, now, "rolled_back", name, None)
                    self._alert(out, now, trig, "firing")
                    return  # the rest of this evaluation is skipped
                if action == "pause" and self.phase in ("progressing", "promoted"):
                    self._phase(out, now, "paused", name, None)
                self._alert(out, now, trig, "firing")
            elif before == "firing":
                self._alert(out, now, trig, "resolved")
        gate = all(t.state == "inactive" and t.outcome != "insufficient" for t in self.triggers)
        steps = self.spec.steps
        while (
            self.phase == "progressing"
            and gate
            and now >= self.step_started + steps[self.step].hold
        ):
            self._enter(out, now, self.step + 1, "hold elapsed", None)
        if self.phase == "promoted" and gate and now >= self.step_started + self.spec.bake:
            self._phase(out, now, "completed", "bake elapsed", None)

    def command(self, out: list[Decision], now: float, cmd: Command) -> None:
        name, actor = cmd.command, cmd.actor
        if self.phase not in APPLIES[name]:
            self._refuse(out, now, name, refusal_reason(self.phase, name), actor)
            return
        reason = f"command: {name}"
        last = len(self.spec.steps) - 1
        if name in ("start", "retry"):
            self.start(out, now, reason, actor)
        elif name == "promote":
            if self.step == last:
                self._refuse(out, now, name, "already at the last step", actor)
            else:
                self._enter(out, now, last if cmd.full else self.step + 1, reason, actor)
        elif name == "resume":
            self.step_started = now
            if self.percent != self.spec.steps[self.step].percent:
                self.percent = self.spec.steps[self.step].percent
                self._percent(out, now, reason, actor)
            self._phase(out, now, "promoted" if self.step == last else "progressing", reason, actor)
        elif name == "set_percent":
            assert cmd.percent is not None
            self.percent = cmd.percent
            below = [i for i, s in enumerate(self.spec.steps) if s.percent <= cmd.percent]
            self.step = below[-1] if below else 0
            self._percent(out, now, reason, actor)
            if self.phase != "paused":
                self._phase(out, now, "paused", reason, actor)
        elif name in ("abort", "rollback"):
            self.percent = 0.0
            self._percent(out, now, reason, actor)
            self._phase(out, now, "aborted" if name == "abort" else "rolled_back", reason, actor)
        else:
            self._phase(out, now, "paused", reason, actor)

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

    # -- samples ------------------------------------------------------------------------
    def add(self, event: Request | Requests | Gauge | Counter, bucket: int, head: int) -> None:
        cohort = event.cohort
        if isinstance(event, Request | Requests):
            for judge in self.judges:  # every request, whatever the windows keep
                judge.take(event, self.percent / 100.0, head, bucket)
            series = self.series.get((cohort, "request", ""))
        else:
            kind = "gauge" if isinstance(event, Gauge) else "counter"
            series = self.series.get((cohort, kind, event.name))
        if series is None or bucket <= head - series.span_max:
            return  # read by no trigger, or older than every window that reads it
        if isinstance(event, Request):
            latencies = () if event.latency_ms is None else (event.latency_ms,)
            series.samples.append(Sample(bucket, event.ts, 1, 0 if event.ok else 1, latencies))
        elif isinstance(event, Requests):
            series.samples.append(
                Sample(bucket, event.ts, event.count, event.errors, event.latency_ms)
            )
        else:
            newest = series.newest
            changed = newest is None or event.value != newest.value
            sample = Sample(bucket, event.ts, value=event.value, changed=changed)
            series.samples.append(sample)
            if newest is None or event.ts >= newest.ts:
                series.newest = sample


class ReferenceEngine:
    """Same calls as `Engine` for what it covers: `handle(event)` and `advance(now)`."""

    def __init__(self, spec: EngineSpec) -> None:
        assert not spec.breakers
        self.bucket = spec.bucket
        self.rollouts = [RefRollout(r, spec.bucket) for r in spec.rollouts]
        self.by_name = {r.spec.name: r for r in self.rollouts}
        self.now: float | None = None
        self.head = 0

    def _bucket(self, ts: float) -> int:
        return math.floor(ts) if self.bucket == 1.0 else int(ts // self.bucket)

    def _boundaries(self, out: list[Decision], now: float) -> None:
        last = self._bucket(now)
        for b in range(self.head + 1, last + 1):
            for rollout in self.rollouts:
                rollout.head = b
                if rollout.armed:
                    rollout.evaluate(out, b * self.bucket, b)
        self.head = max(self.head, last)

    def advance(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        if self.now is None:
            self.now, self.head = now, self._bucket(now)
            for rollout in self.rollouts:
                rollout.head = self.head
                if rollout.spec.start == "immediately":
                    rollout.start(out, now, "start")
        elif now > self.now:
            self._boundaries(out, now)
            self.now = now
        return out

    def handle(self, event: Event) -> list[Decision]:
        out: list[Decision] = []
        starting = self.now is None
        at = event.ts if self.now is None else max(event.ts, self.now)
        if starting:
            self.now, self.head = at, self._bucket(at)
        else:
            self._boundaries(out, at)
            self.now = at
        target = self.by_name.get(event.rollout) if event.rollout is not None else None
        current = self._bucket(at)
        if target is not None and not isinstance(event, Command):
            bucket = current if event.ts >= at else self._bucket(event.ts)
            target.add(event, bucket, current)
        for rollout in self.rollouts:  # one evaluation point: every armed rollout, in order
            rollout.head = current
            if starting and rollout.spec.start == "immediately":
                rollout.start(out, at, "start")
            if rollout is target and isinstance(event, Command):
                rollout.command(out, at, event)
            if rollout.armed:
                rollout.evaluate(out, at, current)
        if isinstance(event, Command) and target is None:
            out.append(
                RefusedDecision(
                    ts=at,
                    kind="refused",
                    rollout=event.rollout or "",
                    command=event.command,
                    reason=f"unknown rollout {event.rollout!r}",
                    actor=event.actor,
                )
            )
        return out
