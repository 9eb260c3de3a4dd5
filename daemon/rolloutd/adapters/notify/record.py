"""What an alert is on the outbox, and which notifiers get it.

Rules:
* One outbox row per (alert, notifier): sink `alert:<notifier name>`, key the dedup key,
  payload the AlertRecord as JSON. Rows are written in the pipeline's batch transaction, so
  an alert is as durable as the decision that caused it.
* A notifier gets a record when its `rollouts` and `severities` filters accept it. A record
  with no rollout (a daemon alert) reaches only notifiers without a `rollouts` filter.
* Resolved records also go to notifiers with `send_resolved: false` when they repeat
  (`repeat_interval` > 0): the dispatcher needs the resolution to stop repeating, and
  confirms such a row without sending anything.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from rolloutd.config import Alert
from rolloutd.core.outbound import Sink

STATUSES = ("firing", "resolved")
SEVERITIES = ("critical", "warning", "info")


class AlertRecord(msgspec.Struct, frozen=True):
    """One alert as it travels through the outbox; `key` is the receivers' dedup key."""

    key: str  # "rollout/trigger", or "rolloutd/<what>" for alerts about the daemon itself
    status: str  # firing | resolved
    severity: str  # critical | warning | info
    rollout: str | None
    trigger: str | None
    summary: str  # one human line
    ts: float  # when it fired or resolved (unix seconds)
    value: float | None = None
    threshold: float | None = None
    percent: float | None = None
    phase: str | None = None
    action: str | None = None
    details: dict[str, str] = {}  # extra context; never secrets

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be firing or resolved, got {self.status!r}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be critical, warning or info, got {self.severity!r}")

    @property
    def firing(self) -> bool:
        return self.status == "firing"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AlertRecord)


def encode_record(record: AlertRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(payload: bytes) -> AlertRecord:
    """The record in an outbox payload; msgspec.DecodeError (a ValueError) if it is not one."""
    return _decoder.decode(payload)


def wants(alert: Alert, record: AlertRecord) -> bool:
    """Whether notifier `alert` gets a row for `record` (see the module rules)."""
    if record.rollout is not None:
        accepted = alert.accepts(record.rollout, record.severity)
    else:
        severities = alert.severities
        accepted = alert.rollouts is None and (severities is None or record.severity in severities)
    return accepted and (record.firing or alert.send_resolved or alert.repeat_interval > 0)


def route(
    alerts_config: Sequence[Alert], record: AlertRecord
) -> list[tuple[Sink, bytes, bytes, bool]]:
    """Outbox rows `(sink, key, payload, retain=False)`, one per notifier that wants `record`."""
    payload = encode_record(record)
    key = record.key.encode()
    return [
        (Sink.alert(alert.name), key, payload, False)
        for alert in alerts_config
        if wants(alert, record)
    ]
