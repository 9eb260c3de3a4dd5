"""Decisions: what the engine decided, as the JSON objects of the decision contract.

Rules: one frozen struct per `kind`; field order is the order on the wire (`ts`, `kind`
first). Optional fields that are None are left out (`actor`), fields the contract shows
always appear (a trigger's `value` may be null). Percents that are whole numbers encode as
integers, so `25` never becomes `25.0`. Encoding is deterministic byte for byte.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec


def whole(number: float) -> float | int:
    """An integral float as int (so JSON shows 25, not 25.0)."""
    if number == int(number):
        return int(number)
    return number


class Decision(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    ts: float
    kind: str
    rollout: str


class PercentDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    kind: Literal["percent"]
    flag: str
    percent: float | int
    step: int
    reason: str
    actor: str | None = None


class PhaseDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    kind: Literal["phase"]
    phase: str
    reason: str
    actor: str | None = None


class Evidence(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """A judge's evidence behind a trigger decision (core/judging.py): the test, its alpha,
    the e-value (Lambda for the mixture SPRT) and the always-valid p-value, the effect
    estimate with its always-valid bounds (a rate ratio for counts and the split, the
    canary's mean minus control's for proportion and mean), requests (and errors) by cohort."""

    test: str
    alpha: float
    e_value: float
    p_value: float
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    samples: dict[str, int] = {}
    errors: dict[str, int] | None = None


class TriggerDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    kind: Literal["trigger"]
    trigger: str
    state: str
    value: float | None
    threshold: float | None
    samples: int
    evidence: Evidence | None = None  # judge triggers only


class AlertDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    kind: Literal["alert"]
    trigger: str
    severity: str
    status: str  # firing | resolved
    action: str | None = None


class RefusedDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    kind: Literal["refused"]
    command: str
    reason: str
    actor: str | None = None


class ConfigDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    """A config reload added, changed or removed this rollout."""

    kind: Literal["config"]
    change: str  # added | changed | removed
    reason: str


class FlagDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    """What the flag table (seen through CDC) holds, against what was decided."""

    kind: Literal["flag"]
    flag: str
    status: str  # confirmed | drift | not_applied
    percent: float | int | None  # decided
    observed: float | int | None
    delay: float | None = None  # confirmed: seconds from decision to table
    action: str | None = None  # drift: alert | revert | adopt


AnyDecision = (
    PercentDecision
    | PhaseDecision
    | TriggerDecision
    | AlertDecision
    | RefusedDecision
    | ConfigDecision
    | FlagDecision
)

_encoder = msgspec.json.Encoder()


def encode(decision: Decision) -> bytes:
    """One decision as compact JSON bytes (no newline)."""
    return _encoder.encode(decision)


def to_dict(decision: Decision) -> dict[str, object]:
    """One decision as a plain dict of what its JSON shows, in wire order (fields left at
    their default are left out, as `encode` leaves them out), without encoding it."""
    result: dict[str, object] = {}
    for info in msgspec.structs.fields(decision):
        value = getattr(decision, info.name)
        if info.default is not msgspec.NODEFAULT and value == info.default:
            continue
        if isinstance(value, msgspec.Struct):
            value = msgspec.to_builtins(value)
        result[info.encode_name] = value
    return result


ROLLBACK_REASON: Final = "rollback: "  # + the trigger: a trigger's rollback, on percent


def rollback_reason(trigger: str) -> str:
    """The percent decision's reason when `trigger` rolls its rollout back."""
    return ROLLBACK_REASON + trigger


def rolled_back_by(decision: Decision) -> str | None:
    """The trigger whose rollback this percent decision is; None if it is none."""
    if isinstance(decision, PercentDecision) and decision.reason.startswith(ROLLBACK_REASON):
        return decision.reason[len(ROLLBACK_REASON) :]
    return None


class BreakerDecision(Decision, frozen=True, omit_defaults=True, kw_only=True):
    """A circuit breaker changed state. Breakers are not rollouts: `rollout` stays empty
    and is left out of the JSON."""

    kind: Literal["breaker"]
    rollout: str = ""
    breaker: str
    state: str
    failure_rate: float | None
    slow_call_rate: float | None
    calls: int
    reason: str
