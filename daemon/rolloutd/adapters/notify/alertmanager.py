"""Prometheus Alertmanager API v2: `POST {url}/api/v2/alerts` with a list of alerts.

Rules:
* Labels identify an alert: `alertname="RolloutTrigger"`, `rollout`, `trigger`, `severity`
  (an alert about the daemon itself: `alertname="RolloutdAlert"`, `key`, `severity`).
  Annotations carry the summary, the record's facts and the dashboard link.
* Firing: `startsAt` = when it fired. Alertmanager resolves an alert on its own after its
  `resolve_timeout` (default 5m) unless it is re-sent, so a firing alert also carries
  `endsAt` = now + 2 x repeat_interval: it stays active while the dispatcher repeats it,
  and ends by itself if rolloutd goes away for good. With repeat_interval 0 there is no
  `endsAt`, and Alertmanager's resolve_timeout applies.
* Resolved: `endsAt` = now (`startsAt` = when it fired, when the lane saw that).
* A group is one POST; of several records for one key in it only the newest goes (the
  alert's state is what Alertmanager keeps), so a firing+resolved pair sends the resolve.
* Configured headers are sent with every request; their values are secrets.
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
    url_secrets,
)
from rolloutd.config import AlertmanagerAlert

PATH = "/api/v2/alerts"


class AlertmanagerNotifier:
    def __init__(self, config: AlertmanagerAlert, dashboard_url: str | None = None) -> None:
        self.config = config
        self.dashboard_url = dashboard_url

    def requests(self, entries: Sequence[Entry], now: float) -> list[Request]:
        newest = {entry.record.key: entry for entry in entries}
        alerts = [self.alert(entry, now) for entry in newest.values()]
        url = self.config.url.rstrip("/") + PATH
        headers = {**JSON_HEADERS, **self._headers()}
        return [Request(url, json_body(alerts), headers, tuple(entries))]

    def alert(self, entry: Entry, now: float) -> dict[str, Any]:
        record = entry.record
        labels = {"alertname": "RolloutTrigger" if record.rollout else "RolloutdAlert"}
        if record.rollout:
            labels["rollout"] = record.rollout
        labels |= {"trigger": record.trigger} if record.trigger else {"key": record.key}
        labels["severity"] = record.severity
        facts = {k: v for k, v in context(record).items() if k not in labels}
        annotations = {"summary": record.summary, **facts}
        alert: dict[str, Any] = {"labels": labels, "annotations": annotations}
        link = dashboard_link(self.dashboard_url, record.rollout)
        if link is not None:
            annotations["dashboard"] = link
            alert["generatorURL"] = link
        repeat = self.config.repeat_interval
        if record.firing:
            alert["startsAt"] = rfc3339(record.ts)
            if repeat > 0:
                alert["endsAt"] = rfc3339(now + 2 * repeat)
        else:
            if entry.started is not None:
                alert["startsAt"] = rfc3339(entry.started)
            alert["endsAt"] = rfc3339(now)
        return alert

    def _headers(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in self.config.headers.items()}

    def secrets(self) -> list[str]:
        return [*self._headers().values(), *url_secrets(self.config.url)]
