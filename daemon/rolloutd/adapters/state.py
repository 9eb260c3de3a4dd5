"""What the pipeline and the service need of a state store, whichever holds the state.

Rules: `adapters/store.py` (one SQLite file, one daemon) and `adapters/pgstore.py`
(PostgreSQL, shared by a leader and its standbys) both satisfy `StateStore`; wiring picks one
by the config (`state.path` or `state.url`). The calls are synchronous and each one is a
transaction: a failure raises `StoreError` and leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from rolloutd.adapters.lease import Lease
from rolloutd.adapters.store import Batch, Loaded


class StateStore(Protocol):
    @property
    def path(self) -> Path | str: ...  # where it is, for messages: a file or host/db

    @property
    def created(self) -> bool: ...  # open() made this store (there was none)

    @property
    def moved_aside(self) -> Path | None: ...  # fresh=True: where the old state went

    @property
    def offsets(self) -> dict[tuple[str, int], int]: ...  # as last read or committed

    @property
    def revision_floor(self) -> int: ...  # every revision handed out is greater

    @property
    def generation(self) -> int | None: ...  # the leader's fencing generation; None: SQLite

    @property
    def lease(self) -> Lease | None: ...  # the leader lease (PostgreSQL); None: SQLite

    def load(self) -> Loaded: ...
    def commit(self, batch: Batch) -> list[int]: ...
    def confirm(self, ids: Iterable[int]) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def compact(self) -> None: ...
    def close(self) -> None: ...
