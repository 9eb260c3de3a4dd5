"""Config reload without a restart: on SIGHUP, or when the file changes (polled).

Rules: the new file is validated whole before anything changes; if it is invalid (or asks
for what only a restart can do, like another bucket), the running config stays, the error
names the exact path, and a daemon alert fires (resolved by the next good reload). A good
one reconfigures the pipeline (each change a `config` decision), the notifiers, the known
metric series and the delivery documents; sections that need a restart are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from rolloutd.adapters.known_series import known_series
from rolloutd.adapters.notify import daemon_alert
from rolloutd.adapters.systemd import SystemdNotifier
from rolloutd.app import logs
from rolloutd.app.wiring import Parts
from rolloutd.config import Config, ConfigError, load_config

log = logging.getLogger("rolloutd.service")

RELOAD_POLL = 2.0  # seconds between looks at the config file's modification time
RESTART_SECTIONS = ("sources", "sinks", "state", "http", "delivery")


def mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class Reloader:
    def __init__(
        self,
        parts: Parts,
        running: Config,
        systemd: SystemdNotifier,
        now: Callable[[], float],
    ) -> None:
        self.parts = parts
        self.running = running  # the config the daemon started with
        self.systemd = systemd
        self.now = now
        self.requested = asyncio.Event()

    async def watch(self, path: Path) -> None:
        seen = mtime(path)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELOAD_POLL):
                    await self.requested.wait()
            current = mtime(path)
            if not self.requested.is_set() and current == seen:
                continue
            self.requested.clear()
            seen = current
            self.reload(path)

    def reload(self, path: Path) -> bool:
        """Validate the file fully; apply it, or keep the running config and say why."""
        parts = self.parts
        self.systemd.reloading()
        try:
            config = load_config(path)
            items = parts.pipeline.reconfigure(config.to_spec(), self.now())
        except (ConfigError, ValueError) as exc:
            errors = exc.errors if isinstance(exc, ConfigError) else [str(exc)]
            log.error("config reload rejected, the running config stays: %s", "; ".join(errors))
            parts.state.reload_success = False
            self._alert(
                "firing",
                f"config reload rejected: {len(errors)} errors",
                {"errors": "; ".join(errors)[:500]},
            )
            self.systemd.ready("config reload rejected")
            return False
        logs.set_secrets([*logs.secrets_of(self.running), *logs.secrets_of(config)])
        for section in RESTART_SECTIONS:
            if getattr(config, section) != getattr(self.running, section):
                log.warning("config reload: %s changed; that takes effect after a restart", section)
        parts.outbox.add(items)
        if not parts.state.reload_success:
            self._alert("resolved", "config reloaded", None)
        parts.state.reload_success = True
        parts.state.known = known_series(config)
        if parts.delivery is not None:  # a removed rollout's flag leaves the documents
            parts.delivery.board.retain({r.flag for r in config.rollouts})
        parts.pipeline.notify(config.alerts)
        parts.alerts.reconfigure(config.alerts)
        log.info("config reloaded: %d rollouts", len(config.rollouts))
        self.systemd.ready(f"{len(config.rollouts)} rollouts")
        return True

    def _alert(self, status: str, summary: str, details: dict[str, str] | None) -> None:
        record = daemon_alert(
            "config-reload", status, summary, self.now(), severity="warning", details=details
        )
        self.parts.outbox.add(self.parts.pipeline.daemon_alert(record))
