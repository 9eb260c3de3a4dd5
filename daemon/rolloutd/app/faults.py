"""Input that must not stop the daemon, and events taken but of no use, made visible.

Rules:
* One message never stops the intake. Decoding rejects what is out of the documented
  ranges; if handling one event still raises, the pipeline counts it
  (`rolloutd_events_failed_total{source}`), logs where the message came from (topic,
  partition, offset; never the payload, and the error text truncated), skips it and goes on.
  Its offset is committed with the batch's, so a restart does not meet it again.
* What the engine drops (older than every window, for no configured rollout, read by no
  trigger) is counted per source from the engine's own totals, read before and after each
  batch: nothing is added to the engine's per-event path.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rolloutd.core.engine import DROP_REASONS, EngineStats

log = logging.getLogger("rolloutd.pipeline")

_TEXT_LIMIT = 200  # characters of an exception's text that reach the log
_LOGGED = 10  # failures logged one by one per source; after that, one in 1000


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a sequence of payloads came from, so that a log line can point at one."""

    topic: str | None = None
    partition: int | None = None
    offsets: Sequence[int] | None = None  # one per payload, when the source has them

    def describe(self, index: int) -> str:
        parts = [] if self.topic is None else [f"topic {self.topic}"]
        if self.partition is not None:
            parts.append(f"partition {self.partition}")
        if self.offsets is not None and 0 <= index < len(self.offsets):
            parts.append(f"offset {self.offsets[index]}")
        else:
            parts.append(f"message {index} of the batch")
        return " ".join(parts)


def drops(stats: EngineStats) -> tuple[int, int, int]:
    """The engine's drop totals, in the order of DROP_REASONS."""
    return (stats.too_old, stats.unrouted, stats.ignored)


def count_drops(
    dropped: Counter[tuple[str, str]],
    source: str,
    before: tuple[int, int, int],
    stats: EngineStats,
) -> None:
    """Add what the engine dropped since `before` to `source`'s counts."""
    for reason, old, new in zip(DROP_REASONS, before, drops(stats), strict=True):
        if new != old:
            dropped[(source, reason)] += new - old


def report_failure(failed: Counter[str], source: str, where: str, exc: Exception) -> None:
    """Count one event whose handling raised, and log it (the first few, then a sample)."""
    count = failed[source] + 1
    failed[source] = count
    if count <= _LOGGED or count % 1000 == 0:
        log.error(
            "event from %s at %s could not be handled and was skipped (#%d): %s",
            source,
            where,
            count,
            describe_error(exc),
        )


def describe_error(exc: Exception) -> str:
    """The exception's type, its text truncated, and the line that raised it: enough to
    find the bug, without the payload (the text is cut, and no frame's locals are shown)."""
    text = str(exc)
    if len(text) > _TEXT_LIMIT:
        text = text[: _TEXT_LIMIT - 3] + "..."
    frames = traceback.extract_tb(exc.__traceback__)
    at = ""
    if frames:
        frame = frames[-1]
        at = f" (raised in {frame.name}, {Path(frame.filename).name}:{frame.lineno})"
    return f"{type(exc).__name__}: {text}{at}"
