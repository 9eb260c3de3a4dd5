"""What the notifiers share: the unit of work, the HTTP request, small formatting helpers.

Rules: a notifier only builds requests from entries (no I/O, no clock: `now` is passed in);
the dispatcher sends them. Every request names the entries it carries, so the dispatcher
counts and confirms exactly those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote, urlsplit

import msgspec

from rolloutd import __version__
from rolloutd.adapters.notify.record import AlertRecord
from rolloutd.config import AlertmanagerAlert, PagerDutyAlert, SlackAlert, WebhookAlert

AlertConfig = PagerDutyAlert | SlackAlert | AlertmanagerAlert | WebhookAlert
USER_AGENT = f"rolloutd/{__version__}"
JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": USER_AGENT}


@dataclass(frozen=True, slots=True)
class Entry:
    """One record on its way to one notifier."""

    id: int | None  # its outbox row; None for a repeat, which has no row
    record: AlertRecord
    repeat: bool = False  # a re-send of a still-firing alert
    started: float | None = None  # for a resolved record: when it fired, if the lane saw it


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP POST carrying `entries`."""

    url: str
    body: bytes
    headers: Mapping[str, str]
    entries: tuple[Entry, ...]


class Notifier(Protocol):
    @property
    def config(self) -> AlertConfig:
        """The notifier's `alerts:` entry."""
        ...

    def requests(self, entries: Sequence[Entry], now: float) -> list[Request]:
        """The POSTs that deliver `entries` (in order); `now` is the wall clock."""
        ...

    def secrets(self) -> list[str]:
        """Strings that must never appear in a log line or an exception."""
        ...


def json_body(value: object) -> bytes:
    return msgspec.json.encode(value)


def dashboard_link(template: str | None, rollout: str | None) -> str | None:
    """The dashboard URL for `rollout`: `{rollout}` in the template becomes its name."""
    if template is None:
        return None
    return template.replace("{rollout}", quote(rollout or "", safe=""))


def number(value: float) -> str:
    return f"{value:.4g}"


def rfc3339(ts: float) -> str:
    """Unix seconds as an RFC 3339 UTC time with milliseconds: 2025-11-21T10:00:00.500Z."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def context(record: AlertRecord) -> dict[str, str]:
    """The record's facts as strings (the value, bound, percent...), then its details."""
    facts = {
        "rollout": record.rollout,
        "trigger": record.trigger,
        "value": None if record.value is None else number(record.value),
        "threshold": None if record.threshold is None else number(record.threshold),
        "percent": None if record.percent is None else f"{number(record.percent)}%",
        "phase": record.phase,
        "action": record.action,
    }
    shown = {name: text for name, text in facts.items() if text is not None}
    return {**shown, **record.details}


def url_secrets(url: str) -> list[str]:
    """A URL may carry credentials (user:password@, ?token=): the URL and those parts."""
    parts = urlsplit(url)
    return [url, parts.password or "", parts.query]
