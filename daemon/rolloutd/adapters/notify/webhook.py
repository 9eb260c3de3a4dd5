"""Generic JSON webhook: POST the AlertRecord as JSON, with the configured headers.

Rules:
* Without grouping (group_wait 0) every alert is one POST of one AlertRecord object; with
  grouping every notification is one POST of a JSON array of AlertRecords (also when it
  holds one), so a receiver always sees one shape for a given configuration.
* The body is exactly the outbox record: receivers dedupe by its `key`. A repeat re-posts
  the same record.
* Header values are secrets, and so are credentials in the URL.
"""

from __future__ import annotations

from collections.abc import Sequence

from rolloutd.adapters.notify.base import JSON_HEADERS, Entry, Request, json_body, url_secrets
from rolloutd.adapters.notify.record import encode_record
from rolloutd.config import WebhookAlert


class WebhookNotifier:
    def __init__(self, config: WebhookAlert, dashboard_url: str | None = None) -> None:
        self.config = config

    def requests(self, entries: Sequence[Entry], now: float) -> list[Request]:
        headers = {**JSON_HEADERS, **self._headers()}
        url = self.config.url
        if self.config.group_wait > 0:
            body = json_body([entry.record for entry in entries])
            return [Request(url, body, headers, tuple(entries))]
        return [Request(url, encode_record(e.record), headers, (e,)) for e in entries]

    def _headers(self) -> dict[str, str]:
        return {name: value.get_secret_value() for name, value in self.config.headers.items()}

    def secrets(self) -> list[str]:
        return [*self._headers().values(), *url_secrets(self.config.url)]
