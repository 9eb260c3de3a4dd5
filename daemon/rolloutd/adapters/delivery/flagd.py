"""The flagd flag-definition document of the flags rolloutd drives.

Rules: one boolean flag per driven flag, with the two variants of the config (values true
and false) and `defaultVariant` the disabled one. Between 0 and 100% the targeting is a
`fractional` split at the current percent (flagd hashes the flag key and the targeting key);
at 0% there is no targeting, so everyone, with or without a targeting key, gets the
disabled variant (a rollback, an abort, a rollout not started yet); at 100% the default is
the enabled variant for everyone. Each flag's `metadata` carries its rollout, phase,
revision and percent (a document holds many flags, and flagd merges a flag's metadata over
the document's); the document's own `metadata` names the flag set and its highest revision.
The file is replaced atomically (a temporary file beside it, fsync, rename, fsync of the
directory), so a reader sees the old document or the new one, never half of one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rolloutd.adapters.delivery.board import FlagEntry
from rolloutd.config import DeliveryVariants
from rolloutd.core.decisions import whole

SCHEMA = "https://flagd.dev/schema/v0/flags.json"
FLAG_SET = "rolloutd"
# A fractional percent is split in integer weights at the smallest power of ten that keeps
# it exact: 25 -> 25/75, 2.5 -> 25/975. flagd's bucket is floor(hash * total >> 32), and
# floor(x) < on exactly when x < on for an integer `on`, so a user's variant depends on
# hash / 2^32 < percent / 100 alone, whatever the scale: raising the percent never moves a
# user from the enabled variant to the disabled one.
MAX_DECIMALS = 6


def weights(percent: float) -> tuple[int, int]:
    """Integer weights (enabled, disabled) whose ratio is exactly percent : 100 - percent."""
    scale = 1
    for _ in range(MAX_DECIMALS):
        if abs(percent * scale - round(percent * scale)) < 1e-9:
            break
        scale *= 10
    enabled = round(percent * scale)
    return enabled, 100 * scale - enabled


def flag_definition(entry: FlagEntry, variants: DeliveryVariants) -> dict[str, Any]:
    on, off = variants.enabled, variants.disabled
    definition: dict[str, Any] = {
        "state": "ENABLED",
        "variants": {on: True, off: False},
        "defaultVariant": on if entry.percent >= 100 else off,
    }
    if 0 < entry.percent < 100:
        enabled, disabled = weights(entry.percent)
        definition["targeting"] = {"fractional": [[on, enabled], [off, disabled]]}
    definition["metadata"] = {
        "rollout": entry.rollout,
        "phase": entry.phase,
        "revision": entry.revision,
        "percent": whole(entry.percent),
    }
    return definition


def document(entries: Iterable[FlagEntry], variants: DeliveryVariants) -> dict[str, Any]:
    """The whole flag-definition document, flags in name order."""
    listed = sorted(entries, key=lambda e: e.flag)
    return {
        "$schema": SCHEMA,
        "metadata": {
            "flagSetId": FLAG_SET,
            "revision": max((e.revision for e in listed), default=0),
        },
        "flags": {e.flag: flag_definition(e, variants) for e in listed},
    }


def write_atomically(path: Path, body: bytes) -> None:
    """Replace `path` with `body`: readers see the old file or the new one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)
