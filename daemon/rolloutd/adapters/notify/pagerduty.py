"""PagerDuty Events API v2: one event per alert, keyed by the alert's dedup key.

Rules:
* Firing: `event_action: trigger`, `dedup_key` = the record's key, `payload.severity` mapped
  (critical, warning, info are PagerDuty's own), `source: rolloutd`, the summary,
  `component` = rollout, `class` = trigger, and the record's facts as `custom_details`.
  Resolved: `event_action: resolve` with the same `dedup_key`. A repeat is another trigger
  with the same key: PagerDuty folds it into the open alert (or opens a new incident if a
  person resolved the old one, which is the point of repeating).
* Grouping (`group_wait`) batches the sending but never merges events: one page per dedup
  key is what PagerDuty's deduplication and its alert grouping (on `component`) build on,
  and a merged event could not be resolved trigger by trigger.
* The routing key is the secret: it travels only in request bodies, never in a log line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rolloutd.adapters.notify.base import (
    JSON_HEADERS,
    Entry,
    Request,
    context,
    dashboard_link,
    json_body,
    rfc3339,
)
from rolloutd.config import PagerDutyAlert

SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}
SUMMARY_LIMIT = 1024  # PagerDuty's


class PagerDutyNotifier:
    def __init__(self, config: PagerDutyAlert, dashboard_url: str | None = None) -> None:
        self.config = config
        self.dashboard_url = dashboard_url

    def requests(self, entries: Sequence[Entry], now: float) -> list[Request]:
        return [
            Request(self.config.url, json_body(self.event(entry)), JSON_HEADERS, (entry,))
            for entry in entries
        ]

    def event(self, entry: Entry) -> dict[str, Any]:
        record = entry.record
        routing_key = self.config.routing_key.get_secret_value()
        base = {"routing_key": routing_key, "dedup_key": record.key}
        if not record.firing:
            return {**base, "event_action": "resolve"}
        payload: dict[str, Any] = {
            "summary": record.summary[:SUMMARY_LIMIT],
            "source": "rolloutd",
            "severity": SEVERITY[record.severity],
            "timestamp": rfc3339(record.ts),
            "custom_details": {
                **context(record),
                **({"repeat": "still firing"} if entry.repeat else {}),
            },
        }
        if record.rollout:
            payload["component"] = record.rollout
        if record.trigger:
            payload["class"] = record.trigger
        event: dict[str, Any] = {**base, "event_action": "trigger", "payload": payload}
        event["client"] = "rolloutd"
        link = dashboard_link(self.dashboard_url, record.rollout)
        if link is not None:
            event |= {"client_url": link, "links": [{"href": link, "text": "Rollout dashboard"}]}
        return event

    def secrets(self) -> list[str]:
        return [self.config.routing_key.get_secret_value()]
