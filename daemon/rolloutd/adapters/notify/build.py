"""AlertRecords from what the engine decided, and for problems of the daemon itself.

Rules:
* A trigger alert's key is "<rollout>/<trigger>": the same for its firing and its resolve,
  so receivers pair them. A daemon alert's key is "rolloutd/<what>" (publish-failed,
  store-error, config-reload...), firing when the problem starts, resolved when it ends.
* The summary is one line a person can act on: what crossed which bound on how many
  samples, and what rolloutd did about it ("rolled back to 0%", "paused at 25%").
* Pure functions: no clock, no I/O; `ts` comes from the decision or the caller.
"""

from __future__ import annotations

from collections.abc import Mapping

from rolloutd.adapters.notify.base import number
from rolloutd.adapters.notify.record import AlertRecord
from rolloutd.config.durations import format_duration
from rolloutd.core.decisions import AlertDecision, TriggerDecision
from rolloutd.core.spec import TriggerSpec

DAEMON = "rolloutd"


def trigger_alert(
    alert: AlertDecision,
    *,
    spec: TriggerSpec | None = None,
    measured: TriggerDecision | None = None,
    percent: float | None = None,
    phase: str | None = None,
) -> AlertRecord:
    """The record for an `alert` decision.

    `spec` is the trigger's definition, `measured` the trigger decision made with it (same
    rollout, trigger and instant), `percent` and `phase` the rollout's state after the
    decisions of that instant. Each is optional; the summary says what is known.
    """
    value = measured.value if measured else None
    threshold = measured.threshold if measured else None
    details = {"samples": str(measured.samples)} if measured else {}
    if spec is not None:
        details |= {"metric": spec.metric, "cohort": spec.cohort}
        details["window"] = format_duration(spec.window)
    return AlertRecord(
        key=f"{alert.rollout}/{alert.trigger}",
        status=alert.status,
        severity=alert.severity,
        rollout=alert.rollout,
        trigger=alert.trigger,
        summary=_summary(alert, spec, measured, percent, phase),
        ts=alert.ts,
        value=value,
        threshold=threshold,
        percent=percent,
        phase=phase,
        action=alert.action,
        details=details,
    )


def daemon_alert(
    what: str,
    status: str,
    summary: str,
    ts: float,
    *,
    severity: str = "critical",
    details: Mapping[str, str] | None = None,
) -> AlertRecord:
    """A record about rolloutd itself, keyed "rolloutd/<what>"; never put a secret in it."""
    return AlertRecord(
        key=f"{DAEMON}/{what}",
        status=status,
        severity=severity,
        rollout=None,
        trigger=None,
        summary=f"{DAEMON}: {summary}",
        ts=ts,
        details=dict(details or {}),
    )


def _summary(
    alert: AlertDecision,
    spec: TriggerSpec | None,
    measured: TriggerDecision | None,
    percent: float | None,
    phase: str | None,
) -> str:
    parts = [f"{alert.rollout}: {alert.trigger} {alert.status}"]
    if spec is not None and measured is not None:
        parts.append(f": {_condition(spec, measured, alert.status == 'firing')}")
    if (effect := _effect(alert, percent, phase)) is not None:
        parts.append(f"; {effect}")
    return "".join(parts)


def _condition(spec: TriggerSpec, measured: TriggerDecision, firing: bool) -> str:
    window = format_duration(spec.window)
    if spec.op == "unchanged":
        return f"{spec.metric} unchanged for {window}" if firing else f"{spec.metric} changed"
    if spec.op == "absent":
        return f"no {spec.metric} samples for {window}" if firing else f"{spec.metric} is back"
    value = "no value" if measured.value is None else number(measured.value)
    bound = "?" if measured.threshold is None else number(measured.threshold)
    relation = spec.op if firing else "vs bound"
    return f"{spec.metric} {value} {relation} {bound} ({measured.samples} samples)"


def _effect(alert: AlertDecision, percent: float | None, phase: str | None) -> str | None:
    if percent is None:
        return None
    at = f"{number(percent)}%"
    if alert.status != "firing":
        return f"now at {at}" + (f" ({phase})" if phase else "")
    if alert.action == "rollback":
        return f"rolled back to {at}"
    if alert.action == "pause":
        return f"paused at {at}"
    return f"alert only, at {at}"
