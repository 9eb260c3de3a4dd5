"""The latency histogram: log buckets with a relative error of at most 1%, and the compact
per-bucket records the windows keep of it.

Rules the compiled build imposes (this module is compiled with the engine, see
`scripts/compile_core.py`):
* Counts are `i64` in `librt.vecs.vec[i64]` buffers, not lists of Python ints, so an update
  is two native stores; a record is a `vec[i64]` of `slot << 32 | count` entries.
* No dynamic attribute access, no closures on the hot path; every field is typed and
  declared in `__slots__`.
* `Entries` is spelled as a string alias: compiled, `vec[i64]` would be `vec[int]` at import.
Semantics: a latency goes to one slot (`latency_slot`), a slot reads back as one value
(`slot_value`) within ALPHA of every latency in it; `Histogram.search(rank)` is the slot of
the sample of that rank.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final, TypeAlias

from librt.vecs import append, vec
from mypy_extensions import i64

# Log-bucket histogram: bucket i holds values in (gamma^(i-1), gamma^i]; its representative
# value 2 gamma^i / (gamma + 1) is within ALPHA of every value in it.
ALPHA: Final = 0.01
GAMMA: Final = (1 + ALPHA) / (1 - ALPHA)
_LOG_GAMMA: Final = math.log(GAMMA)
MIN_LATENCY_MS: Final = 1e-3  # smaller values count as 0
MAX_LATENCY_MS: Final = 1e8  # larger values are clamped (about 28 hours)
_IDX_LOW: Final = math.ceil(math.log(MIN_LATENCY_MS) / _LOG_GAMMA)
_IDX_HIGH: Final = math.ceil(math.log(MAX_LATENCY_MS) / _LOG_GAMMA)
# Histogram slot 0 is "zero"; slot k >= 1 is log-bucket index _IDX_LOW + k - 1.
HIST_SLOTS: Final = _IDX_HIGH - _IDX_LOW + 2
# A window's histogram keeps a count per slot and per block of 32 slots.
_BLOCK_BITS: Final = 5
_BLOCKS: Final = (HIST_SLOTS >> _BLOCK_BITS) + 1


def latency_slot(value_ms: float) -> int:
    """The histogram slot of one latency."""
    if value_ms < MIN_LATENCY_MS:
        return 0
    if value_ms >= MAX_LATENCY_MS:
        return HIST_SLOTS - 1
    return math.ceil(math.log(value_ms) / _LOG_GAMMA) - _IDX_LOW + 1


def slot_value(slot: int) -> float:
    """The representative latency of a histogram slot."""
    if slot == 0:
        return 0.0
    return 2.0 * GAMMA ** (slot - 1 + _IDX_LOW) / (GAMMA + 1.0)


class Histogram:
    """Latency counts per histogram slot: O(1) update, rank search by scanning blocks.

    A count per slot and a count per block of 32 slots. An update touches two cells, where a
    Fenwick tree touched eleven; a search walks blocks from the nearer end of the
    distribution (a p99 starts from the top), then slots within one block. Latencies cluster
    in a few blocks, so a search is a few dozen steps at most.

    `version` counts updates, so a rank search can be reused until the counts change (a
    baseline trigger reads the other cohort's quantile on every event of its own cohort).
    """

    __slots__ = (
        "blocks",
        "cached_rank",
        "cached_slot",
        "cached_version",
        "slots",
        "total",
        "version",
    )

    def __init__(self) -> None:
        self.slots = vec[i64]([0] * (_BLOCKS << _BLOCK_BITS))
        self.blocks = vec[i64]([0] * _BLOCKS)
        self.total: i64 = 0
        self.version: i64 = 0
        # The last search, valid while version == cached_version: a quantile is read once
        # per change on its own side, and on every event of the other side as a baseline.
        self.cached_rank: i64 = -1
        self.cached_slot: i64 = 0
        self.cached_version: i64 = 0

    def add(self, slot: i64, delta: i64) -> None:
        self.version += 1
        self.total += delta
        slots = self.slots
        slots[slot] = slots[slot] + delta
        blocks = self.blocks
        block = slot >> _BLOCK_BITS
        blocks[block] = blocks[block] + delta

    def slot_at(self, rank: i64) -> i64:
        """`search`, remembered until the counts change."""
        if self.cached_version == self.version and self.cached_rank == rank:
            return self.cached_slot
        slot = self.cached_slot = self.search(rank)
        self.cached_rank, self.cached_version = rank, self.version
        return slot

    def search(self, rank: i64) -> i64:
        """The smallest slot whose cumulative count exceeds `rank` (0-based, < total)."""
        blocks, slots = self.blocks, self.slots
        block: i64
        slot: i64
        if 2 * rank < self.total:
            block = 0
            while rank >= blocks[block]:
                rank -= blocks[block]
                block += 1
            slot = block << _BLOCK_BITS
            while rank >= slots[slot]:
                rank -= slots[slot]
                slot += 1
            return slot
        above = self.total - 1 - rank  # samples after the one of rank `rank`
        block = _BLOCKS - 1
        while above >= blocks[block]:
            above -= blocks[block]
            block -= 1
        slot = ((block + 1) << _BLOCK_BITS) - 1
        while above >= slots[slot]:
            above -= slots[slot]
            slot -= 1
        return slot


# A bucket's latencies: entries `slot << 32 | count` in a `vec[i64]`. The current bucket's
# record grows by one entry per latency (an append, no dict), and is compacted to one entry
# per distinct slot when it reaches COMPACT_AT entries, or when the bucket closes with more
# than RAW_MAX; so a record never holds more than COMPACT_AT entries, whatever the rate.
# A slot's count beyond 32 bits takes several entries.
COUNT_BITS: Final = 32
COUNT_MASK: Final = (1 << 32) - 1
RAW_MAX: Final = 64
COMPACT_AT: Final = 2 * HIST_SLOTS
# (A string: compiled, `vec[i64]` would be spelled `vec[int]` at import time.)
Entries: TypeAlias = "vec[i64]"
# Compaction's counting table: all zeros between calls.
_TALLY: Final = vec[i64]([0] * HIST_SLOTS)


def compacted(entries: Entries) -> Entries:
    """The same latencies, one entry per distinct slot (more if a count passes 32 bits)."""
    tally = _TALLY
    seen = vec[i64]()
    for entry in entries:
        slot = entry >> COUNT_BITS
        if tally[slot] == 0:
            seen = append(seen, slot)
        tally[slot] = tally[slot] + (entry & COUNT_MASK)
    out = vec[i64](capacity=len(seen))
    for slot in seen:
        out = with_count(out, slot, tally[slot])
        tally[slot] = 0
    return out


def entries_of(pairs: Iterable[tuple[int, int]]) -> Entries:
    """A record of (slot, count) pairs."""
    out = vec[i64]()
    for slot, count in pairs:
        out = with_count(out, slot, count)
    return out


def with_count(record: Entries, slot: i64, count: int) -> Entries:
    """`record` with `count` more latencies in `slot`, in entries of at most 32 bits."""
    while count > 0:
        part = min(count, COUNT_MASK)
        record = append(record, (slot << COUNT_BITS) | part)
        count -= part
    return record


def pairs_of(entries: Entries) -> list[list[int]]:
    """[slot, count] per distinct slot, in slot order (the snapshot's form)."""
    counts: dict[int, int] = {}
    for entry in entries:
        slot = entry >> COUNT_BITS
        counts[slot] = counts.get(slot, 0) + (entry & COUNT_MASK)
    return [[slot, counts[slot]] for slot in sorted(counts)]
