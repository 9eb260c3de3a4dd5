"""Alerts: Slack, PagerDuty, Alertmanager and generic webhooks, fed by the durable outbox.

Rules:
* The pipeline writes, in its batch transaction, one outbox row per (alert, notifier) with
  `route()`: sink `alert:<notifier name>`, key the dedup key, payload the AlertRecord JSON.
* `AlertDispatcher` delivers those rows and confirms (deletes) each once it is delivered or
  given up on, so every alert is delivered at least once across crashes; receivers dedupe
  by key (PagerDuty `dedup_key`, Alertmanager labels, the webhook's `key`).
* `trigger_alert` builds the record of an engine `alert` decision, `daemon_alert` one about
  rolloutd itself (key "rolloutd/<what>").
* Notifiers build requests (slack.py, pagerduty.py, alertmanager.py, webhook.py); http.py
  sends one and says what the answer means; lane.py holds each notifier's queue, grouping,
  repeats and retries; dispatcher.py owns the lanes. Secrets never reach a log line.
"""

from rolloutd.adapters.notify.build import daemon_alert, trigger_alert
from rolloutd.adapters.notify.dispatcher import AlertDispatcher, make_notifier
from rolloutd.adapters.notify.record import AlertRecord, decode_record, encode_record, route

__all__ = [
    "AlertDispatcher",
    "AlertRecord",
    "daemon_alert",
    "decode_record",
    "encode_record",
    "make_notifier",
    "route",
    "trigger_alert",
]
