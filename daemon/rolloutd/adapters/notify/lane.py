"""One notifier's queue: grouping, repeats, retries, confirmation.

Rules:
* One notification at a time, in arrival order: a key's resolve never overtakes its firing.
  A notification that keeps failing holds up only this lane.
* Grouping: with `group_wait` > 0 the first alert of a rollout opens a group that closes
  `group_wait` later; alerts of that rollout arriving meanwhile join it. A closed group is
  one notification. Daemon alerts (no rollout) group together.
* Repeats: `firing` holds the keys this lane saw firing and has not seen resolved since, in
  memory only: it is rebuilt from what arrives and is delivered, so after a restart a firing
  alert delivered by the previous run is not repeated (its resolve still goes out). A key
  delivered firing is queued again `repeat_interval` after its last delivery.
* A request is retried until it is delivered or refused for good: backoff doubles from
  RETRY_FIRST to RETRY_CAP with jitter, or the receiver's Retry-After rules. Its rows are
  confirmed the moment it is settled (no await in between), so a crash re-sends at most
  the request that was in flight.
* Resolved alerts for a notifier with `send_resolved: false` only clear the key: their rows
  are confirmed unsent and uncounted.
* Scheduling reads the event loop's clock; `clock` (wall time) stamps what is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import aiohttp

from rolloutd.adapters.backoff import Backoff
from rolloutd.adapters.notify.base import Entry, Notifier, Request
from rolloutd.adapters.notify.http import Outcome, Redactor, Status, post
from rolloutd.adapters.notify.record import AlertRecord

log = logging.getLogger("rolloutd.alerts")

RETRY_FIRST = 1.0
RETRY_CAP = 60.0
Confirm = Callable[[list[int]], None]


def loop_time() -> float:
    """The running loop's clock (what asyncio.sleep counts in); monotonic outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


@dataclass(slots=True)
class Firing:
    record: AlertRecord
    sent_at: float | None = None  # loop time of its last delivery; None: not delivered yet


@dataclass(slots=True)
class Group:
    closes: float  # loop time
    entries: list[Entry]


class Lane:
    def __init__(
        self,
        notifier: Notifier,
        confirm: Confirm,
        sent: Counter[tuple[str, str]],
        clock: Callable[[], float],
        rng: random.Random,
        may_send: Callable[[], bool],
    ) -> None:
        self.notifier = notifier
        self.may_send = may_send  # the leader lease; False: hold every request
        self.redact = Redactor(notifier.secrets())
        self.confirm = confirm
        self.sent = sent
        self.clock = clock
        self.rng = rng
        self.groups: dict[str | None, Group] = {}
        self.ready: deque[list[Entry]] = deque()
        self.firing: dict[str, Firing] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.notifier.config.name

    def reconfigure(self, notifier: Notifier) -> None:
        """Use a new configuration from the next request on; queued alerts stay."""
        self.notifier = notifier
        self.redact = Redactor(notifier.secrets())
        self.wake.set()

    def pending(self) -> list[Entry]:
        """Queued entries, oldest first."""
        queued = [entry for notification in self.ready for entry in notification]
        return queued + [entry for group in self.groups.values() for entry in group.entries]

    # -- arrivals ---------------------------------------------------------------------
    def arrive(self, entry: Entry, now: float) -> None:
        record = entry.record
        if record.firing:
            self.firing[record.key] = Firing(record)
        elif (fired := self.firing.pop(record.key, None)) is not None:
            entry = replace(entry, started=fired.record.ts)
        wait = self.notifier.config.group_wait
        if wait <= 0:
            self.ready.append([entry])
        elif (group := self.groups.get(record.rollout)) is not None:
            group.entries.append(entry)
        else:
            self.groups[record.rollout] = Group(now + wait, [entry])
        self.wake.set()

    def close_groups(self, now: float | None = None) -> None:
        """Move groups that closed by `now` (None: all of them) to the ready queue."""
        for rollout, group in sorted(self.groups.items(), key=lambda item: item[1].closes):
            if now is None or group.closes <= now:
                del self.groups[rollout]
                self.ready.append(group.entries)

    def queue_repeats(self, now: float) -> None:
        interval = self.notifier.config.repeat_interval
        if interval <= 0:
            return
        for firing in list(self.firing.values()):
            if firing.sent_at is not None and now >= firing.sent_at + interval:
                self.arrive(Entry(None, firing.record, repeat=True), now)

    def next_wakeup(self) -> float | None:
        times = [group.closes for group in self.groups.values()]
        interval = self.notifier.config.repeat_interval
        if interval > 0:
            times += [f.sent_at + interval for f in self.firing.values() if f.sent_at is not None]
        return min(times, default=None)

    # -- delivery -----------------------------------------------------------------------
    async def run(self, session: aiohttp.ClientSession) -> None:
        """Forever: wait for something due, deliver it."""
        while True:
            self.wake.clear()
            now = loop_time()
            self.queue_repeats(now)
            self.close_groups(now)
            if self.ready:
                await self.deliver(session, self.ready[0])
                self.ready.popleft()
                continue
            wakeup = self.next_wakeup()
            timeout = None if wakeup is None else max(0.0, wakeup - loop_time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def drain(self, session: aiohttp.ClientSession) -> None:
        """Deliver everything queued now, groups included, then return (for shutdown)."""
        self.close_groups()
        while self.ready:
            await self.deliver(session, self.ready[0])
            self.ready.popleft()

    async def deliver(self, session: aiohttp.ClientSession, notification: list[Entry]) -> None:
        """Send one notification; settled entries leave `notification` as they go."""
        send_resolved = self.notifier.config.send_resolved

        def loud(entry: Entry) -> bool:
            return entry.record.firing or send_resolved

        for request in self._requests([entry for entry in notification if loud(entry)]):
            self.settle(request.entries, await self.send(session, request))
            for entry in request.entries:
                notification.remove(entry)
        # What is left: resolved alerts this notifier does not send (they only clear the key).
        self.confirm([e.id for e in notification if e.id is not None and not loud(e)])
        notification.clear()

    def _requests(self, entries: list[Entry]) -> list[Request]:
        if not entries:
            return []
        try:
            return self.notifier.requests(entries, self.clock())
        except Exception:  # our bug; it must neither wedge the lane nor stop the daemon
            log.exception("alert to %s: cannot build the request", self.name)
            self.settle(entries, Outcome("failed", "cannot build the request"))
            return []

    async def send(self, session: aiohttp.ClientSession, request: Request) -> Outcome:
        """POST until delivered or refused for good; counts every retry."""
        backoff = Backoff(first=RETRY_FIRST, cap=RETRY_CAP, rng=self.rng)
        attempt = 1
        while True:
            if not self.may_send():  # not (or no longer) the leader: the row waits for it
                await asyncio.sleep(RETRY_FIRST)
                continue
            timeout = self.notifier.config.timeout
            outcome = await post(session, request, timeout, self.redact, self.clock)
            if outcome.status != "retry":
                return outcome
            self.count(request.entries, "retry")
            delay = outcome.retry_after if outcome.retry_after is not None else backoff.next()
            log.warning(
                "alert to %s failed (attempt %d, %s), retrying in %.1fs: %s",
                self.name,
                attempt,
                _keys(request.entries),
                delay,
                outcome.detail,
            )
            await asyncio.sleep(delay)
            attempt += 1

    def settle(self, entries: Sequence[Entry], outcome: Outcome) -> None:
        """Confirm `entries`' rows, count them, and keep the firing set right."""
        self.confirm([entry.id for entry in entries if entry.id is not None])
        self.count(entries, outcome.status)
        if outcome.status == "ok":
            log.info("alert to %s delivered (%s)", self.name, _keys(entries))
        else:
            log.error(
                "alert to %s (%s) %s for good, %d alert(s) dropped (%s): %s",
                self.name,
                self.notifier.config.type,
                "refused" if outcome.status == "dropped" else "failed",
                len(entries),
                _keys(entries),
                outcome.detail,
            )
        now = loop_time()
        for entry in entries:
            firing = self.firing.get(entry.record.key)
            if firing is None or firing.record != entry.record:
                continue  # resolved since, or fired again with a newer record
            if outcome.status == "ok":
                firing.sent_at = now
            else:  # a refused alert is not repeated
                del self.firing[entry.record.key]

    def count(self, entries: Sequence[Entry], status: Status) -> None:
        self.sent[(self.name, status)] += len(entries)


def _keys(entries: Sequence[Entry]) -> str:
    keys = list(dict.fromkeys(entry.record.key for entry in entries))
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
