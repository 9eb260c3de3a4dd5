"""Repeated log lines of the client libraries, written once per interval with a count.

Rules: a broker that is down makes aiokafka log the same failure many times a second, for
as long as the outage lasts; that buries everything else and fills disks. A line of a
throttled library (the logger or one of its children) whose logger, level and message
template were already written within the interval is held back and counted; the next one
written after the interval carries the count (`repeated` field, and in its text). The
daemon's own lines are never held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_KINDS = 1000  # distinct lines remembered; past it the memory starts again


@dataclass(slots=True)
class _Seen:
    since: float  # when the last line of this kind was written
    held: int = 0  # lines held back since


class RepeatThrottle(logging.Filter):
    def __init__(
        self,
        libraries: tuple[str, ...],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.libraries = libraries
        self.interval = interval
        self.clock = clock
        self._seen: dict[tuple[str, int, str], _Seen] = {}

    def _throttled(self, name: str) -> bool:
        return any(name == lib or name.startswith(f"{lib}.") for lib in self.libraries)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._throttled(record.name):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.since < self.interval:
            seen.held += 1
            return False
        if len(self._seen) >= MAX_KINDS:
            self._seen.clear()
        self._seen[key] = _Seen(now)
        if seen is not None and seen.held:
            record.msg = (
                f"{record.getMessage()} ({seen.held} more like this in the last "
                f"{now - seen.since:.0f}s)"
            )
            record.args = None
            record.repeated = seen.held
        return True


# The handler of `logs.configure` carries this one; the service sets its interval.
CLIENT_LOGS = RepeatThrottle(("aiokafka",))
