"""One POST to a receiver, and what its answer means for the alert.

Rules:
* 2xx: delivered. 5xx, 408, 429, timeouts and connection errors: retry; on 429 and 503 the
  receiver's Retry-After (seconds or an HTTP date) says when, capped at MAX_RETRY_AFTER.
  Any other answer (4xx, and 3xx: redirects are not followed) is final: the alert is dropped.
  A request that cannot be made at all (not an http(s) URL, a bad header) has failed.
* Nothing secret leaves this module: details are built from the status, the exception type
  and the response body, passed through the notifier's Redactor, then truncated. Exception
  texts are redacted too (aiohttp puts URLs into them).
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Literal

import aiohttp

from rolloutd.adapters.notify.base import Request

Status = Literal["ok", "retry", "dropped", "failed"]
MAX_RETRY_AFTER = 3600.0
READ_LIMIT = 64 * 1024  # of a response body: enough for any error message
DETAIL_LIMIT = 300  # characters of a response body in a log line
REDACTED = "[redacted]"

# Secrets the configuration does not name but a response may echo.
_PATTERNS = re.compile(
    r"hooks\.slack\.com/\S*"  # Slack incoming-webhook URLs
    r"|(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"  # user:password in a URL
    r"|\b[0-9a-f]{32}\b"  # PagerDuty integration (routing) keys
    # credentials in headers, queries and JSON: keep the word, hide the value
    r"|(?P<word>(?i:(?:bearer|basic)\s+|(?:token|key|secret|password)[\"']?\s*[=:]\s*[\"']?))"
    r"[^\s\"',;&]+"
)


class Redactor:
    """Replaces every configured secret, and whatever looks like one, with [redacted]."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a URL goes before the token inside it. Tiny strings would
        # redact half the language, and no real secret is that short.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _PATTERNS.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    return f"{match.group('word') or ''}{REDACTED}"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    detail: str  # redacted; for the log
    retry_after: float | None = None  # seconds the receiver asked us to wait


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait for a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive: it means UTC
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def snippet(body: bytes, redact: Callable[[str], str]) -> str:
    """A response body for a log line: redacted first, then squeezed and truncated."""
    text = " ".join(redact(body.decode("utf-8", errors="replace")).split())
    return text if len(text) <= DETAIL_LIMIT else f"{text[:DETAIL_LIMIT]}... (truncated)"


def classify(
    status: int, headers: Mapping[str, str], body: bytes, redact: Callable[[str], str], now: float
) -> Outcome:
    """What an HTTP answer means for the alert (see the module rules)."""
    if 200 <= status < 300:
        return Outcome("ok", f"HTTP {status}")
    detail = f"HTTP {status}: {snippet(body, redact) or '(empty body)'}"
    if status in (408, 429) or status >= 500:
        wait = retry_after(headers.get("Retry-After"), now) if status in (429, 503) else None
        return Outcome("retry", detail, wait)
    if 300 <= status < 400:
        detail = f"HTTP {status}: redirects are not followed (is the URL right?)"
    return Outcome("dropped", detail)


async def post(
    session: aiohttp.ClientSession,
    request: Request,
    limit: float,
    redact: Callable[[str], str],
    clock: Callable[[], float],
) -> Outcome:
    """POST `request` once and classify the result; never raises for a network problem."""
    if not request.url.startswith(("http://", "https://")):
        return Outcome("failed", "not an http(s) URL")
    try:
        async with session.post(
            request.url,
            data=request.body,
            headers=dict(request.headers),
            timeout=aiohttp.ClientTimeout(total=limit),
            allow_redirects=False,
        ) as response:
            body = await response.content.read(READ_LIMIT)
            return classify(response.status, response.headers, body, redact, clock())
    except TimeoutError:
        return Outcome("retry", f"no answer within {limit:g}s")
    except aiohttp.InvalidURL:
        return Outcome("failed", "invalid URL")  # its text is the URL: never shown
    except aiohttp.ClientError as exc:
        return Outcome("retry", redact(f"{type(exc).__name__}: {exc}"))
    except ValueError as exc:  # a header aiohttp refuses to send (say, with a newline)
        return Outcome("failed", redact(f"{type(exc).__name__}: {exc}"))
