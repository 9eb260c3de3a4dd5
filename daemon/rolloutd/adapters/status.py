"""What the HTTP API and the metrics collector read of the running daemon: a status view.

Rules: adapters never import the application modules (the pipeline, the service); they are
handed something shaped like `StatusView` instead, and `Pipeline` is one structurally. Every
member is a read-only property here, so nothing behind this view can be assigned through
it; the rollouts and breakers are the core's own objects, read, never commanded (commands go
through the runners the service hands the HTTP context). Only the names listed here are
read, so this module is the whole of what the outer edges see.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from rolloutd.core.breaker import BreakerRuntime
from rolloutd.core.cdc.migration import MigrationChecker, MigrationWiring
from rolloutd.core.decisions import Decision
from rolloutd.core.rollout import RolloutRuntime


class EngineView(Protocol):
    @property
    def rollouts(self) -> Sequence[RolloutRuntime]: ...

    @property
    def breakers(self) -> Mapping[str, BreakerRuntime]: ...


class MigrationsView(Protocol):
    """The migrations watched through CDC, by name."""

    @property
    def checkers(self) -> Mapping[str, MigrationChecker]: ...

    @property
    def wirings(self) -> Mapping[str, MigrationWiring]: ...


class CountersView(Protocol):
    """The pipeline's counters, exported as they are at scrape time."""

    @property
    def events(self) -> Mapping[str, int]: ...  # by source

    @property
    def invalid(self) -> Mapping[tuple[str, str], int]: ...  # (source, reason)

    @property
    def decisions(self) -> Mapping[str, int]: ...  # by kind

    @property
    def rollbacks(self) -> Mapping[tuple[str, str], int]: ...  # (rollout, trigger)

    @property
    def flag_drift(self) -> Mapping[str, int]: ...  # by rollout

    @property
    def failed(self) -> Mapping[str, int]: ...  # by source

    @property
    def dropped(self) -> Mapping[tuple[str, str], int]: ...  # (source, reason)


class StatusView(Protocol):
    """The daemon as the outer edges see it; `Pipeline` satisfies it."""

    @property
    def engine(self) -> EngineView: ...

    @property
    def cdc(self) -> MigrationsView | None: ...

    @property
    def stats(self) -> CountersView: ...

    @property
    def recent(self) -> Mapping[str, Sequence[Decision]]: ...  # rollout -> latest decisions
