"""The alert dispatcher: outbox rows in, notifications out, rows confirmed.

Rules:
* Rows come from the outbox (`add`): sink `alert:<notifier>`, payload an AlertRecord. Each
  notifier has its own lane (see lane.py) running as its own task, so one notifier's
  failures never hold up another; within a lane per-key order holds.
* A row is confirmed once delivered or given up on, never before: a crash re-delivers
  what was not confirmed (at least once; receivers dedupe by key). Given up means refused
  for good by the receiver (4xx other than 408/429: counted `dropped`, logged with the
  redacted body) or impossible to send (a row that does not decode, a notifier no longer
  configured, a URL that is not one: counted `failed`).
* `sent` counts alerts, not requests, by (notifier, status): `ok`, `retry` (an attempt that
  failed and will be retried), `dropped`, `failed`. It feeds
  `rolloutd_alerts_sent_total{notifier,status}`.
* Repeats come from an in-memory set of firing keys rebuilt from what this process delivers;
  a restart forgets it (see lane.py).
* A row already queued is not queued again when `add` sees it twice.
* `notify` queues a record with no row (best effort) for what the store cannot hold.
* With a leader lease, `may_send` is asked before every request: a daemon that does not
  lead (a standby, or a leader stopped past its lease) sends nothing; its rows stay in the
  outbox for the leader.
* HTTP goes through one aiohttp session per `run` (and one per `flush`); HTTP(S)_PROXY and
  NO_PROXY from the environment apply.
* `add`, `run`, `flush` and `reconfigure` are called from the event loop. `flush` is for
  shutdown, after `run` has been cancelled: both sending at once would send twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence

import aiohttp
import msgspec

from rolloutd.adapters.notify.alertmanager import AlertmanagerNotifier
from rolloutd.adapters.notify.base import AlertConfig, Entry, Notifier
from rolloutd.adapters.notify.lane import Lane, loop_time
from rolloutd.adapters.notify.pagerduty import PagerDutyNotifier
from rolloutd.adapters.notify.record import AlertRecord, decode_record, wants
from rolloutd.adapters.notify.slack import SlackNotifier
from rolloutd.adapters.notify.webhook import WebhookNotifier
from rolloutd.adapters.store import OutboxItem
from rolloutd.config import (
    Alert,
    AlertmanagerAlert,
    PagerDutyAlert,
    SlackAlert,
    WebhookAlert,
)
from rolloutd.core.outbound import SinkKind

log = logging.getLogger("rolloutd.alerts")


def make_notifier(config: AlertConfig, dashboard_url: str | None = None) -> Notifier:
    """The notifier for one `alerts:` entry."""
    match config:
        case PagerDutyAlert():
            return PagerDutyNotifier(config, dashboard_url)
        case SlackAlert():
            return SlackNotifier(config, dashboard_url)
        case AlertmanagerAlert():
            return AlertmanagerNotifier(config, dashboard_url)
        case WebhookAlert():
            return WebhookNotifier(config, dashboard_url)


class AlertDispatcher:
    """Delivers the outbox's alert rows; see the module docstring for the guarantees."""

    def __init__(
        self,
        alerts_config: Sequence[Alert],
        confirm: Callable[[list[int]], None],
        *,
        clock: Callable[[], float] = time.time,
        dashboard_url: str | None = None,
        rng: random.Random | None = None,
        may_send: Callable[[], bool] = lambda: True,
    ) -> None:
        self.sent: Counter[tuple[str, str]] = Counter()
        self._may_send = may_send
        self._store_confirm = confirm
        self._clock = clock
        self._dashboard_url = dashboard_url
        self._rng = rng or random.Random()
        self._queued: set[int] = set()  # row ids in some lane, so a re-added row is not doubled
        self._lanes: dict[str, Lane] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: asyncio.TaskGroup | None = None
        for config in alerts_config:
            self._lanes[config.name] = self._lane(config)

    def _lane(self, config: AlertConfig) -> Lane:
        notifier = make_notifier(config, self._dashboard_url)
        return Lane(notifier, self._confirm, self.sent, self._clock, self._rng, self._may_send)

    def _confirm(self, ids: list[int]) -> None:
        if ids:
            self._store_confirm(ids)
            self._queued.difference_update(ids)

    # -- rows in --------------------------------------------------------------------------
    def add(self, items: Sequence[OutboxItem]) -> None:
        """Queue the alert rows among `items` (other sinks are ignored)."""
        now = loop_time()
        for item in items:
            if item.sink.kind is not SinkKind.ALERT or item.id in self._queued:
                continue
            name = item.sink.target
            lane = self._lanes.get(name)
            if lane is None:
                self._give_up(item.id, name, "the notifier is not configured (any more)")
                continue
            try:
                record = decode_record(item.payload)
            except msgspec.DecodeError as exc:
                self._give_up(item.id, name, f"the row is not an alert record ({exc})")
                continue
            self._queued.add(item.id)
            lane.arrive(Entry(item.id, record), now)

    def notify(self, record: AlertRecord) -> None:
        """Queue `record` for every notifier that wants it, WITHOUT an outbox row: best effort,
        lost if the process dies first. Only for what the store cannot hold (the store is
        failing, the process is about to exit); everything else goes through `route`."""
        now = loop_time()
        for lane in self._lanes.values():
            if wants(lane.notifier.config, record):
                lane.arrive(Entry(None, record), now)

    def _give_up(self, row: int, name: str, why: str) -> None:
        log.error("alert row %d for %s cannot be sent: %s; dropped", row, name, why)
        self._confirm([row])
        self.sent[(name, "failed")] += 1

    # -- running ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Deliver forever: one task per notifier, one HTTP session for all."""
        session = aiohttp.ClientSession(trust_env=True)
        # The session closes after the lanes have stopped: the task group exits first.
        async with session, asyncio.TaskGroup() as tasks:
            self._session, self._tasks = session, tasks
            try:
                for lane in self._lanes.values():
                    self._start(lane)
                await asyncio.Event().wait()  # until cancelled; lanes never return
            finally:
                self._session = self._tasks = None

    def _start(self, lane: Lane) -> None:
        if self._tasks is not None and self._session is not None:
            lane.task = self._tasks.create_task(lane.run(self._session), name=f"alerts:{lane.name}")

    async def flush(self, grace: float) -> bool:
        """Deliver what is queued within `grace` seconds, groups without waiting; True if all
        went out. Rows that did not stay unconfirmed in the outbox for the next start."""
        lanes = [lane for lane in self._lanes.values() if lane.pending()]
        if lanes:
            try:
                session = aiohttp.ClientSession(trust_env=True)
                async with asyncio.timeout(grace), session, asyncio.TaskGroup() as tasks:
                    for lane in lanes:
                        tasks.create_task(lane.drain(session))
            except TimeoutError:
                pass
        left = [entry for lane in lanes for entry in lane.pending()]
        if left:
            rows = sum(entry.id is not None for entry in left)
            log.warning("%d alert(s) not delivered; %d stay in the outbox", len(left), rows)
        return not left

    def reconfigure(self, alerts_config: Sequence[Alert]) -> None:
        """Swap in a reloaded `alerts:` section. Kept notifiers keep their queues and firing
        keys; a removed notifier's queued rows are given up (`failed`); new ones start."""
        wanted = {config.name: config for config in alerts_config}
        for name in [name for name in self._lanes if name not in wanted]:
            lane = self._lanes.pop(name)
            if lane.task is not None:
                lane.task.cancel()
            for entry in lane.pending():
                if entry.id is not None:
                    self._give_up(entry.id, name, "its notifier was removed from the configuration")
        for name, config in wanted.items():
            if name in self._lanes:
                self._lanes[name].reconfigure(make_notifier(config, self._dashboard_url))
            else:
                self._lanes[name] = self._lane(config)
                self._start(self._lanes[name])
