"""The Unleash client API: the features document, client tokens, and metrics as events.

Rules: one feature per driven flag, always enabled, with one `flexibleRollout` strategy:
`rollout` the percent, `stickiness: default`, `groupId` the flag name. An Unleash SDK then
includes a user when murmur3("<flag>:<userId>", seed 0) % 100 + 1 <= rollout, which is
`rolloutd.bucketing.in_rollout()`; `rollout` is the percent rounded down, because the
SDKs take whole percents and buckets are whole numbers (bucket <= 2.5 is bucket <= 2).
The SDKs' metrics posts become ordinary events of the event contract (source `unleash`):
per reported feature of a driven flag, a counter `exposures` for cohort `canary` (the `yes`
count: evaluations that returned enabled) and one for `control` (`no`), and a gauge
`exposure_share` (yes / (yes + no), cohort canary) when anything was counted. A body that
is not the SDKs' metrics shape is refused whole (`Malformed`); nothing of it is taken.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any

import msgspec

from rolloutd.adapters.delivery.board import FlagEntry

EXPOSURES = "exposures"
EXPOSURE_SHARE = "exposure_share"
ENABLED_COHORT = "canary"
DISABLED_COHORT = "control"
MAX_COUNT = 1 << 40  # the event contract's bound on a count

Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]


def rollout_parameter(percent: float) -> str:
    """The `rollout` parameter the SDKs compare buckets 1..100 with."""
    return str(max(0, min(100, math.floor(percent))))


def feature(entry: FlagEntry) -> dict[str, Any]:
    return {
        "name": entry.flag,
        "type": "release",
        "description": (
            f"driven by rolloutd: rollout {entry.rollout}, phase {entry.phase}, "
            f"revision {entry.revision}"
        ),
        "enabled": True,
        "stale": False,
        "impressionData": False,
        "project": "default",
        "strategies": [
            {
                "name": "flexibleRollout",
                "constraints": [],
                "parameters": {
                    "rollout": rollout_parameter(entry.percent),
                    "stickiness": "default",
                    "groupId": entry.flag,
                },
            }
        ],
        "variants": [],
    }


def features(entries: Iterable[FlagEntry]) -> dict[str, Any]:
    """The client API v2 features document, features in name order."""
    listed = sorted(entries, key=lambda e: e.flag)
    return {
        "version": 2,
        "features": [feature(e) for e in listed],
        "meta": {"revisionId": max((e.revision for e in listed), default=0)},
    }


def authorized(header: str, tokens: Sequence[bytes]) -> bool:
    """The Authorization header holds one of the client tokens (the SDKs send it bare;
    `Bearer <token>` is taken too). Every token is compared, in constant time."""
    given = header.strip()
    scheme, _, rest = given.partition(" ")
    if scheme.lower() == "bearer" and rest:
        given = rest.strip()
    raw = given.encode()
    found = False
    for token in tokens:
        found |= hmac.compare_digest(raw, token)
    return found and bool(raw)


class ToggleCount(msgspec.Struct):
    yes: Count = 0
    no: Count = 0


class MetricsBucket(msgspec.Struct):
    toggles: dict[str, ToggleCount]
    start: str | None = None
    stop: str | None = None


class MetricsBody(msgspec.Struct):
    bucket: MetricsBucket | None = None


class Malformed(Exception):
    """A metrics or register body that is not what the SDKs send."""


_metrics = msgspec.json.Decoder(MetricsBody)


def decode_metrics(body: bytes) -> MetricsBody:
    try:
        metrics = _metrics.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise Malformed(str(exc)[:200]) from None
    if metrics.bucket is not None and metrics.bucket.stop is not None:
        _instant(metrics.bucket.stop)
    return metrics


def _instant(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise Malformed(f"bucket.stop is not a time: {text[:40]!r}") from None
    if moment.tzinfo is None:
        raise Malformed("bucket.stop has no offset")
    return moment.timestamp()


def exposure_events(
    metrics: MetricsBody, rollout_of: Callable[[str], str | None], now: float
) -> list[bytes]:
    """The events one metrics post makes: dated at its bucket's end (never after `now`)."""
    bucket = metrics.bucket
    if bucket is None:
        return []
    ts = now if bucket.stop is None else min(_instant(bucket.stop), now)
    events: list[bytes] = []
    for flag, count in bucket.toggles.items():
        rollout = rollout_of(flag)
        if rollout is None:
            continue  # not a flag rolloutd drives
        for cohort, value in ((ENABLED_COHORT, count.yes), (DISABLED_COHORT, count.no)):
            events.append(_event(ts, "counter", rollout, cohort, EXPOSURES, value))
        if count.yes + count.no:
            share = count.yes / (count.yes + count.no)
            events.append(_event(ts, "gauge", rollout, ENABLED_COHORT, EXPOSURE_SHARE, share))
    return events


def _event(ts: float, kind: str, rollout: str, cohort: str, name: str, value: float) -> bytes:
    return msgspec.json.encode(
        {"ts": ts, "type": kind, "rollout": rollout, "cohort": cohort, "name": name, "value": value}
    )
