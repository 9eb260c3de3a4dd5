"""The leader lease as the daemon lives it: stand by until the lease is ours, then keep it.

Rules:
* A standby polls the lease every third of it (`wait_to_lead`). Between polls it reads the
  state the leader committed, so the read API and flag delivery show the leader's state,
  and `/readyz` names the leader (`Health.stand_by`). A database that does not answer
  keeps it a standby; it never gives up.
* Once the lease is taken, the state is read a last time (no commit can land behind it
  now) and `wait_to_lead` returns: the service starts everything that acts.
* The leader renews every third of the lease (`keep`). A renewal refused means another
  daemon took over: `LeaseLost`. A renewal that fails (the database away) is tolerated as
  long as the lease still holds by the daemon's own clock; after that, `LeaseLost` too.
* The lease's calls run in a thread: their connection is their own, and a slow database
  must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from rolloutd.adapters.delivery import DeliveryRoutes
from rolloutd.adapters.lease import Lease, LeaseLost
from rolloutd.adapters.store import StoreError
from rolloutd.app.health import Health
from rolloutd.app.pipeline import Pipeline

log = logging.getLogger("rolloutd.service")


class Leadership:
    def __init__(
        self,
        lease: Lease,
        pipeline: Pipeline,
        health: Health,
        delivery: DeliveryRoutes | None,
        monotonic: Callable[[], float],
        where: Path | str,
    ) -> None:
        self.lease = lease
        self.pipeline = pipeline
        self.health = health
        self.delivery = delivery
        self.monotonic = monotonic
        self.where = where  # the state's place, for messages
        self.every = lease.seconds / 3

    async def wait_to_lead(self) -> None:
        """Stand by until this daemon holds the lease, showing the leader's state."""
        lease = self.lease
        while True:
            try:
                if await asyncio.to_thread(lease.try_acquire, self.monotonic()):
                    break
                holder, generation, alive = await asyncio.to_thread(lease.holder)
                self.show_leaders_state()
                who = f"{holder or 'nobody'} leads (generation {generation})"
                self.health.stand_by(f"standby: {who if alive else 'the lease is free'}")
            except StoreError as exc:  # the database is away: keep trying, stay a standby
                self.health.stand_by(f"standby: {exc}")
                log.warning("standby: %s", exc)
            await asyncio.sleep(self.every)
        self.show_leaders_state()  # the last time: nothing commits behind us any more
        self.health.stand_by(None)
        log.info(
            "leading (generation %s, state %s)",
            lease.generation,
            self.where,
            extra={"generation": lease.generation},
        )

    def show_leaders_state(self) -> None:
        """Read the state the leader committed: for the read API, and for flag delivery
        (flagd, Unleash) whenever a revision moved."""
        pipeline = self.pipeline
        shown = dict(pipeline.revisions)
        pipeline.reload_state()
        if self.delivery is not None and pipeline.revisions != shown:
            self.delivery.board.seed(pipeline.engine.rollouts, pipeline.revisions)

    async def keep(self) -> None:
        """Renew every third of the lease; a renewal refused means another daemon leads."""
        lease = self.lease
        while True:
            await asyncio.sleep(self.every)
            sent = self.monotonic()
            try:
                held = await asyncio.to_thread(lease.renew, sent)
            except StoreError as exc:  # a blip: the lease holds until its own clock says not
                if not lease.valid(self.monotonic()):
                    raise LeaseLost(f"{exc}; the lease ran out before it could be renewed") from exc
                log.warning("could not renew the lease: %s", exc)
                continue
            if not held:
                raise LeaseLost(f"state {self.where}: another daemon took over the lease")
