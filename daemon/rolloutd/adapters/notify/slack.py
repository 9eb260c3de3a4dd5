"""Slack incoming webhook: one Block Kit message per notification.

Rules:
* A notification (one alert, or a group of one rollout's alerts) is ONE message: a header,
  one section per alert (status, trigger, severity, the summary line, then value vs bound,
  percent and phase, action as fields), and a link to the dashboard when one is configured.
  Resolved alerts look the same with a different status; a repeat says "still firing".
* Slack's limits hold: at most MAX_LISTED alerts are listed ("...and N more" after them),
  header and texts are cut to Slack's lengths. `text` is the notification fallback.
* The webhook URL is the secret: it is in no log line, and neither is its path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from rolloutd.adapters.notify.base import (
    JSON_HEADERS,
    Entry,
    Request,
    dashboard_link,
    json_body,
    number,
)
from rolloutd.config import SlackAlert

MAX_LISTED = 20  # sections; Slack allows 50 blocks per message
HEADER_LIMIT = 150
SECTION_LIMIT = 2900  # of 3000
_EMOJI = {
    "critical": ":red_circle:",
    "warning": ":large_orange_circle:",
    "info": ":large_blue_circle:",
}
Block = dict[str, Any]


class SlackNotifier:
    def __init__(self, config: SlackAlert, dashboard_url: str | None = None) -> None:
        self.config = config
        self.dashboard_url = dashboard_url

    def requests(self, entries: Sequence[Entry], now: float) -> list[Request]:
        url = self.config.webhook_url.get_secret_value()
        body = json_body(message(entries, self.dashboard_url))
        return [Request(url, body, JSON_HEADERS, tuple(entries))]

    def secrets(self) -> list[str]:
        url = self.config.webhook_url.get_secret_value()
        parts = urlsplit(url)
        return [url, parts.path, parts.query]


def message(entries: Sequence[Entry], dashboard_url: str | None) -> dict[str, Any]:
    """The Block Kit payload for `entries` (all of one rollout, or a single alert)."""
    blocks: list[Block] = [_header(entries)]
    blocks += [_section(entry) for entry in entries[:MAX_LISTED]]
    if len(entries) > MAX_LISTED:
        blocks.append(_context(f"...and {len(entries) - MAX_LISTED} more"))
    link = dashboard_link(dashboard_url, entries[0].record.rollout)
    if link is not None:
        blocks.append(_context(f"<{link}|Open the rollout dashboard>"))
    first = entries[0].record.summary
    fallback = first if len(entries) == 1 else f"{_title(entries)}: {first}"
    return {"text": fallback, "blocks": blocks}


def _title(entries: Sequence[Entry]) -> str:
    record = entries[0].record
    subject = record.rollout or "rolloutd"
    if len(entries) == 1:
        what = record.trigger or record.key
        status = "still firing" if entries[0].repeat else record.status
        return f"{subject}: {what} {status}"
    firing = sum(entry.record.firing for entry in entries)
    counts = ((firing, "firing"), (len(entries) - firing, "resolved"))
    parts = ", ".join(f"{count} {status}" for count, status in counts if count)
    return f"{subject}: {len(entries)} alerts ({parts})"


def _header(entries: Sequence[Entry]) -> Block:
    text = _title(entries)
    if len(text) > HEADER_LIMIT:
        text = text[: HEADER_LIMIT - 3] + "..."
    return {"type": "header", "text": {"type": "plain_text", "text": text}}


def _section(entry: Entry) -> Block:
    record = entry.record
    if record.firing:
        status = (
            f"{_EMOJI.get(record.severity, '')} *{'STILL FIRING' if entry.repeat else 'FIRING'}*"
        )
    else:
        status = ":white_check_mark: *RESOLVED*"
    subject = " / ".join(f"`{_escape(part)}`" for part in (record.rollout, record.trigger) if part)
    text = (
        f"{status} {subject or _escape(record.key)} ({record.severity})\n{_escape(record.summary)}"
    )
    block: Block = {"type": "section", "text": {"type": "mrkdwn", "text": text[:SECTION_LIMIT]}}
    if fields := _fields(entry):
        block["fields"] = [{"type": "mrkdwn", "text": field} for field in fields]
    return block


def _fields(entry: Entry) -> list[str]:
    record = entry.record
    fields = []
    if record.value is not None and record.threshold is not None:
        fields.append(f"*Value vs bound*\n`{number(record.value)}` vs `{number(record.threshold)}`")
    elif record.value is not None:
        fields.append(f"*Value*\n`{number(record.value)}`")
    if record.percent is not None:
        phase = f" ({_escape(record.phase)})" if record.phase else ""
        fields.append(f"*Percent*\n{number(record.percent)}%{phase}")
    elif record.phase:
        fields.append(f"*Phase*\n{_escape(record.phase)}")
    if record.action:
        fields.append(f"*Action*\n{_escape(record.action)}")
    details = [f"{_escape(k)}: {_escape(v)}" for k, v in record.details.items()]
    return fields + ([f"*Details*\n{chr(10).join(details)}"[:1900]] if details else [])


def _context(text: str) -> Block:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": text}]}


def _escape(text: str) -> str:
    """Slack mrkdwn control characters; user text never becomes a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
