"""The flags rolloutd drives, as the SDKs' formats show them: one board, rebuilt on change.

Rules: the board is fed the flag states the pipeline has just committed (never anything
before its store transaction), so what an SDK reads was durable first. A change rebuilds
each document once (bytes and ETag), so serving one is a lookup, not a serialisation. The
file is written after every change; a write that fails is logged and counted and tried
again at the next commit (every tick), never raised: a full disk must not stop decisions.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from rolloutd.core.rollout import RolloutRuntime

log = logging.getLogger("rolloutd.delivery")


class FlagStateLike(Protocol):
    """What the pipeline publishes per flag change (its FlagState)."""

    @property
    def flag(self) -> str: ...

    @property
    def percent(self) -> float | int: ...

    @property
    def rollout(self) -> str: ...

    @property
    def phase(self) -> str: ...

    @property
    def revision(self) -> int: ...


@dataclass(frozen=True, slots=True)
class FlagEntry:
    flag: str
    rollout: str
    percent: float
    phase: str
    revision: int


@dataclass(frozen=True, slots=True)
class Rendered:
    """A document as served: its bytes and their entity tag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, document: Any) -> Rendered:
        body = msgspec.json.encode(document)
        return cls(body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


@dataclass(slots=True)
class DeliveryStats:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, status)
    exposures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rollout, cohort)
    file_writes: Counter[str] = field(default_factory=Counter)  # ok | failed


Render = Callable[[Iterable[FlagEntry]], Any]


class FlagBoard:
    """The current state of every driven flag and the documents made of it."""

    def __init__(
        self,
        renderers: Mapping[str, Render],
        file: tuple[str, Path] | None = None,
        write: Callable[[Path, bytes], None] | None = None,
    ) -> None:
        self.entries: dict[str, FlagEntry] = {}
        self.renderers = renderers  # document name -> how to build it
        self.rendered: dict[str, Rendered] = {}
        self.file = file  # (document name, path) written on every change
        self.write = write
        self.stats = DeliveryStats()
        self._unwritten = file is not None

    def seed(self, rollouts: Iterable[RolloutRuntime], revisions: Mapping[str, int]) -> None:
        """The state at start (restored or new), before any decision of this run."""
        for rollout in rollouts:
            flag = rollout.spec.flag
            self.entries[flag] = FlagEntry(
                flag, rollout.spec.name, rollout.percent, rollout.phase, revisions.get(flag, 0)
            )
        self._changed()

    def publish(self, states: Sequence[FlagStateLike]) -> None:
        """The pipeline's flag states of one commit (called after every commit)."""
        for state in states:
            current = self.entries.get(state.flag)
            if current is not None and current.revision >= state.revision:
                continue  # revisions only grow: an older state never overwrites a newer one
            self.entries[state.flag] = FlagEntry(
                state.flag, state.rollout, float(state.percent), state.phase, state.revision
            )
        if states:
            self._changed()
        elif self._unwritten:
            self._write()

    def retain(self, flags: Collection[str]) -> None:
        """After a reload: only the flags the running config drives stay."""
        gone = self.entries.keys() - set(flags)
        for flag in gone:
            del self.entries[flag]
        if gone:
            self._changed()

    def rollout_of(self, flag: str) -> str | None:
        entry = self.entries.get(flag)
        return entry.rollout if entry is not None else None

    def _changed(self) -> None:
        entries = list(self.entries.values())
        self.rendered = {
            name: Rendered.of(render(entries)) for name, render in self.renderers.items()
        }
        if self.file is not None:
            self._unwritten = True
            self._write()

    def _write(self) -> None:
        assert self.file is not None
        assert self.write is not None
        name, path = self.file
        try:
            self.write(path, self.rendered[name].body)
        except OSError as exc:
            if self.stats.file_writes["failed"] % 100 == 0:  # the first, then every 100th
                log.error("cannot write the flag file %s (will retry): %s", path, exc)
            self.stats.file_writes["failed"] += 1
            return
        self.stats.file_writes["ok"] += 1
        self._unwritten = False
