"""Per-key state of a migration check: what the source changed and what the target shows.

Rules:
* Pure: no I/O, no clock reads; every call takes `now` (seconds). Never raises on input.
* A row state is a tuple of target-form column values, or None for "no row" (deleted, or
  never seen: an unknown side reads as no row). Rows are compared whole (`same`), with
  Debezium's unavailable-TOAST placeholder matching anything.
* Each side orders its own changes by position (`position`: LSN first, then commit ms). A
  change below the newest position of its side, or at it with the same row, is stale or a
  duplicate and changes nothing: a newer version supersedes it anyway.
* Final states, matched both ways: a new version on one side that equals a waiting version
  on the other side (or that side's latest row) matches it; the match settles every older
  waiting version on both sides. A version the other side skipped is no failure once a
  later one matches, and either stream may run ahead of the other by up to `grace`.
* Judging: a key is judged once one of its versions has waited `grace` unmatched. The
  judgement compares the latest source row with the latest target row: a difference is one
  verdict (`missing`: no target row; `extra`: no source row; `mismatch`: rows differ); then
  every waiting version of the key is dropped. Source snapshot reads (`r`) start no clock:
  a backfill is measured by progress; they wait until matched (or judged with a target).
* `extra` for a key never seen on the source is `unverified` instead when the table may have
  refused that key's source side: an overflow within `grace` either side of the target
  change, or any refused snapshot read.
* Memory: only keys with waiting versions (pending) and recently settled keys (memos, kept
  `ttl` seconds so duplicates and late deliveries are still recognised) are held, at most
  `cap` of them. A new key when full evicts the oldest memo; with none left it is refused
  and counted in `overflow`. A pending key has at most one live item in the deadline heap
  (stale ones are dropped when they outnumber the pending keys two to one), and
  at most MAX_WAITING waiting versions per side: beyond that the oldest goes and the next
  one inherits its deadline, so a key that keeps changing is still judged on time, but can
  no longer be matched against versions further back.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from typing import Any, NamedTuple

Row = tuple[Any, ...]
State = Row | None
Key = Any  # a hashable scalar, or a tuple of them for multi-column keys
Version = tuple[int, State, float]  # (position, row, deadline; inf for snapshot reads)
Waiting = list[Version] | None

INF = math.inf
UNAVAILABLE = "__debezium_unavailable_value"  # unchanged TOASTed column (PostgreSQL)
MAX_WAITING = 64
_TS_BITS = 44  # ms since the epoch fit in 44 bits until the year 2527
_TS_MASK = (1 << _TS_BITS) - 1


def position(ts_ms: int, lsn: int | None) -> int:
    """One integer ordering the changes of one side: LSN first, commit time second."""
    return ((lsn or 0) << _TS_BITS) | (ts_ms & _TS_MASK)


def _lag_ms(target_pos: int, source_pos: int) -> float:
    return float(max(0, (target_pos & _TS_MASK) - (source_pos & _TS_MASK)))


def same(a: State, b: State) -> bool:
    """Row equality where the unavailable-value placeholder matches anything."""
    if a == b:
        return True
    if a is None or b is None or len(a) != len(b):
        return False
    if UNAVAILABLE not in a and UNAVAILABLE not in b:
        return False
    return all(x == y or UNAVAILABLE in (x, y) for x, y in zip(a, b, strict=True))


class Verdict(NamedTuple):
    key: Key
    kind: str  # missing | extra | mismatch | unverified


class KeyState:
    """Both sides of one key. Positions are -1 when unknown; `queued` is inf when unqueued."""

    __slots__ = ("queued", "src_pos", "src_row", "src_wait", "tgt_pos", "tgt_row", "tgt_wait")

    def __init__(self) -> None:
        self.src_pos = -1  # newest source position seen
        self.src_row: State = None
        self.src_wait: Waiting = None  # unmatched source versions, oldest first
        self.tgt_pos = -1
        self.tgt_row: State = None
        self.tgt_wait: Waiting = None
        self.queued = INF  # deadline of this key's live heap item

    def due(self) -> float:
        due = INF
        for waiting in (self.src_wait, self.tgt_wait):
            if waiting is not None:
                for version in waiting:
                    due = min(due, version[2])
        return due


class _Step(NamedTuple):
    """What one new version does to its own side's and the other side's waiting lists."""

    mine: Waiting
    other: Waiting
    matched: Version | None  # the other side's waiting version it matched


def _step(version: Version, mine: Waiting, other: Waiting, other_row: State) -> _Step:
    row = version[1]
    if other is not None:
        for index in range(len(other) - 1, -1, -1):
            if same(other[index][1], row):
                return _Step(None, other[index + 1 :] or None, other[index])
    if same(row, other_row):
        return _Step(None, other, None)
    if mine is None:
        return _Step([version], other, None)
    mine.append(version)
    if len(mine) > MAX_WAITING:
        # The oldest goes, but its clock stays: a key that keeps changing is still judged.
        dropped = mine.pop(0)
        oldest_pos, oldest_row, oldest_due = mine[0]
        mine[0] = (oldest_pos, oldest_row, min(oldest_due, dropped[2]))
    return _Step(mine, other, None)


class KeyTable:
    """Keys of one migration: pending ones, memos of settled ones, and their deadlines."""

    def __init__(self, grace: float, ttl: float, cap: int) -> None:
        self.grace = grace
        self.ttl = ttl
        self.cap = cap
        self.entries: dict[Key, KeyState] = {}
        self.memos: OrderedDict[Key, float] = OrderedDict()  # settled key -> forget at
        self.heap: list[tuple[float, int, Key]] = []
        self.seq = 0
        self.overflow = 0
        self.last_overflow = -INF
        self.snapshot_overflow = False
        self.memo_check = INF  # no memo is forgotten before this (a lower bound)

    def pending(self) -> int:
        return len(self.entries) - len(self.memos)

    # -- changes --------------------------------------------------------------------------
    def source(
        self, key: Key, pos: int, row: State, now: float, snapshot: bool
    ) -> tuple[bool, float | None]:
        """A source change: (fresh, lag in ms when it matched a waiting target version)."""
        entry = self._entry(key, now, snapshot)
        if entry is None:
            return True, None
        if pos < entry.src_pos or (pos == entry.src_pos and same(row, entry.src_row)):
            return False, None
        entry.src_pos, entry.src_row = pos, row
        version = (pos, row, INF if snapshot else now + self.grace)
        step = _step(version, entry.src_wait, entry.tgt_wait, entry.tgt_row)
        entry.src_wait, entry.tgt_wait = step.mine, step.other
        if step.mine is None and row is not None and row == entry.tgt_row:
            entry.src_row = entry.tgt_row  # a settled key holds one row, not two equal ones
        self._place(key, entry, now)
        if step.matched is None or snapshot:
            return True, None
        return True, _lag_ms(step.matched[0], pos)

    def target(self, key: Key, pos: int, row: State, now: float) -> tuple[bool, float | None]:
        """A target change: (fresh, lag in ms when it matched a waiting streaming version)."""
        entry = self._entry(key, now, False)
        if entry is None:
            return True, None
        if pos < entry.tgt_pos or (pos == entry.tgt_pos and same(row, entry.tgt_row)):
            return False, None
        entry.tgt_pos, entry.tgt_row = pos, row
        step = _step((pos, row, now + self.grace), entry.tgt_wait, entry.src_wait, entry.src_row)
        entry.tgt_wait, entry.src_wait = step.mine, step.other
        if step.mine is None and row is not None and row == entry.src_row:
            entry.tgt_row = entry.src_row
        self._place(key, entry, now)
        if step.matched is None or step.matched[2] == INF:
            return True, None
        return True, _lag_ms(pos, step.matched[0])

    # -- time -----------------------------------------------------------------------------
    def due_by(self, now: float) -> bool:
        """Whether `expire(now)` has anything to do (cheap: checked before every change)."""
        heap = self.heap
        return self.memo_check <= now or (bool(heap) and heap[0][0] <= now)

    def expire(self, now: float) -> list[Verdict]:
        """Forget old memos and judge every key whose deadline is at or before `now`."""
        memos = self.memos
        while memos:
            key, forget_at = next(iter(memos.items()))
            if forget_at > now:
                break
            del memos[key]
            del self.entries[key]
        self.memo_check = next(iter(memos.values())) if memos else INF
        verdicts: list[Verdict] = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            deadline, _, key = heapq.heappop(heap)
            entry = self.entries.get(key)
            if entry is None or entry.queued != deadline:
                continue  # evicted, forgotten or rescheduled
            entry.queued = INF
            if entry.due() <= now:
                kind = self._judge(entry)
                if kind is not None:
                    verdicts.append(Verdict(key, kind))
            self._place(key, entry, now)
        return verdicts

    def _judge(self, entry: KeyState) -> str | None:
        src, tgt = entry.src_row, entry.tgt_row
        kind = None
        if not same(src, tgt):
            if tgt is None:
                kind = "missing"
            elif src is not None:
                kind = "mismatch"
            elif entry.src_pos < 0 and self._blind(entry.tgt_wait):
                kind = "unverified"
            else:
                kind = "extra"
        entry.src_wait = entry.tgt_wait = None
        return kind

    def _blind(self, target_wait: Waiting) -> bool:
        if self.snapshot_overflow:
            return True
        arrived = min(v[2] for v in target_wait) - self.grace if target_wait else -INF
        return self.last_overflow >= arrived - self.grace

    # -- holding --------------------------------------------------------------------------
    def _entry(self, key: Key, now: float, snapshot: bool) -> KeyState | None:
        entry = self.entries.get(key)
        if entry is not None:
            return entry
        if len(self.entries) >= self.cap:
            if not self.memos:
                self.overflow += 1
                self.last_overflow = now
                self.snapshot_overflow = self.snapshot_overflow or snapshot
                return None
            oldest, _ = self.memos.popitem(last=False)
            del self.entries[oldest]
        entry = self.entries[key] = KeyState()
        return entry

    def _place(self, key: Key, entry: KeyState, now: float) -> None:
        """Schedule a pending key, or keep a settled one as a memo."""
        if entry.src_wait is not None or entry.tgt_wait is not None:
            self.memos.pop(key, None)
            due = entry.due()
            if due < entry.queued:
                self.seq += 1
                heapq.heappush(self.heap, (due, self.seq, key))
                entry.queued = due
        else:
            if not self.memos:
                self.memo_check = now + self.ttl
            self.memos[key] = now + self.ttl
            self.memos.move_to_end(key)
            entry.queued = INF  # its heap item, if any, is stale now
            if len(self.heap) > 2 * self.pending() + 1024:
                self._compact()

    def _compact(self) -> None:
        """Drop stale heap items (settled keys leave theirs behind): amortised O(1)."""
        entries = self.entries
        live = []
        for item in self.heap:
            entry = entries.get(item[2])
            if entry is not None and entry.queued == item[0]:
                live.append(item)
        heapq.heapify(live)
        self.heap[:] = live  # in place: `expire` may be iterating over it

    # -- snapshot -------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Plain JSON-ready data (inf as null); `load` restores it exactly."""
        entries = [
            [
                key,
                [e.src_pos, e.src_row, _dump_waiting(e.src_wait)],
                [e.tgt_pos, e.tgt_row, _dump_waiting(e.tgt_wait)],
                _fin(e.queued),
            ]
            for key, e in self.entries.items()
        ]
        return {
            "entries": entries,
            "memos": [[key, at] for key, at in self.memos.items()],
            "heap": [list(item) for item in self.heap],
            "seq": self.seq,
            "overflow": self.overflow,
            "last_overflow": _fin(self.last_overflow),
            "snapshot_overflow": self.snapshot_overflow,
        }

    def load(self, data: dict[str, Any], tuple_keys: bool) -> None:
        def key_of(raw: Any) -> Key:
            return tuple(raw) if tuple_keys else raw

        self.entries = {}
        for raw, source, target, queued in data["entries"]:
            entry = KeyState()
            entry.src_pos, entry.src_row, entry.src_wait = _side(source)
            entry.tgt_pos, entry.tgt_row, entry.tgt_wait = _side(target)
            entry.queued = _inf(queued)
            self.entries[key_of(raw)] = entry
        self.memos = OrderedDict((key_of(key), at) for key, at in data["memos"])
        self.memo_check = next(iter(self.memos.values())) if self.memos else INF
        self.heap = [(at, seq, key_of(key)) for at, seq, key in data["heap"]]
        self.seq, self.overflow = data["seq"], data["overflow"]
        self.last_overflow = _inf(data["last_overflow"], -INF)
        self.snapshot_overflow = data["snapshot_overflow"]


def _dump_waiting(waiting: Waiting) -> list[Any] | None:
    return None if waiting is None else [[p, r, _fin(d)] for p, r, d in waiting]


def _side(data: list[Any]) -> tuple[int, State, Waiting]:
    pos, row, waiting = data
    if waiting is not None:
        waiting = [(p, _row(r), _inf(d)) for p, r, d in waiting]
    return pos, _row(row), waiting


def _fin(value: float) -> float | None:
    return None if math.isinf(value) else value


def _inf(value: float | None, default: float = INF) -> float:
    return default if value is None else value


def _row(value: list[Any] | None) -> State:
    return None if value is None else tuple(value)
