"""The label sets of the labelled counters that a config makes possible.

Rules: a counter series that appears only with its first increment has no earlier sample, so
`increase()` over it reads nothing (and a dashboard annotation on it never fires) for the
first rollback, the first failed delivery or the first invalid event. The collector
therefore exports every label set listed here at 0 until it counts something. The sets
come from the config alone (rollouts, triggers, notifiers, sources, migrations) and are
rebuilt on every reload, so a rollout added by a reload has its series from that moment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args, get_origin

import msgspec

from rolloutd.adapters.cdc.debezium import CDC_REJECTION_REASONS
from rolloutd.adapters.notify.http import Status
from rolloutd.config import Config
from rolloutd.core.decisions import AnyDecision, BreakerDecision
from rolloutd.core.engine import DROP_REASONS
from rolloutd.core.events import REJECTION_REASONS

# The reasons the pipeline gives outside the decoder (no payload, a payload over the limit,
# an event dated too far ahead of the clock).
PAYLOAD_REASONS = ("empty", "too_large", "future_timestamp")
ALERT_STATUSES: tuple[str, ...] = get_args(Status)
VALIDATION_KINDS = ("missing", "extra", "mismatch")


def decision_kinds() -> tuple[str, ...]:
    """Every `kind` a decision can have, read from the decision structs themselves."""
    kinds: list[str] = []
    for struct in (*get_args(AnyDecision), BreakerDecision):
        for info in msgspec.structs.fields(struct):
            if info.name == "kind" and get_origin(info.type) is Literal:
                kinds.extend(str(k) for k in get_args(info.type))
    return tuple(dict.fromkeys(kinds))


@dataclass(frozen=True, slots=True)
class KnownSeries:
    """Label values, per counter, to export at 0 before anything is counted."""

    events: tuple[str, ...] = ()  # source
    invalid: tuple[tuple[str, str], ...] = ()  # (source, reason)
    decisions: tuple[str, ...] = ()  # kind
    rollbacks: tuple[tuple[str, str], ...] = ()  # (rollout, trigger)
    flag_drift: tuple[str, ...] = ()  # rollout
    alerts_sent: tuple[tuple[str, str], ...] = ()  # (notifier, status)
    validation: tuple[tuple[str, str], ...] = ()  # (migration, kind)
    failed: tuple[str, ...] = ()  # source
    dropped: tuple[tuple[str, str], ...] = ()  # (source, reason)


def known_series(config: Config) -> KnownSeries:
    sources = [name for name in ("kafka", "mqtt") if getattr(config.sources, name) is not None]
    event_reasons = tuple(dict.fromkeys((*REJECTION_REASONS, *PAYLOAD_REASONS)))
    if config.delivery.unleash is not None:  # the Unleash SDKs' metrics, as events
        sources.append("unleash")
    invalid = [(source, reason) for source in sources for reason in event_reasons]
    if config.migrations:
        sources.append("cdc")
        invalid += [("cdc", reason) for reason in CDC_REJECTION_REASONS]
    spec = config.to_spec()
    rollbacks = tuple(
        (rollout.name, trigger.name)
        for rollout in spec.rollouts
        for trigger in rollout.triggers
        if trigger.action == "rollback"
    )
    drift = tuple(r.name for r in config.rollouts) if config.flag_table is not None else ()
    return KnownSeries(
        events=tuple(sources),
        invalid=tuple(invalid),
        decisions=decision_kinds(),
        rollbacks=rollbacks,
        flag_drift=drift,
        alerts_sent=tuple((a.name, status) for a in config.alerts for status in ALERT_STATUSES),
        validation=tuple((m.name, kind) for m in config.migrations for kind in VALIDATION_KINDS),
        failed=tuple(sources),
        dropped=tuple((source, reason) for source in sources for reason in DROP_REASONS),
    )
