"""Migration checks over CDC streams: does the target table follow the source table?

Rules:
* Pure: no I/O, no clock reads; `now` (seconds) is an argument. Input never raises.
* Tables, column mappings and transforms: see `cdc_rows`; per-key state: see `cdc_state`.
* Per key, after `grace` seconds each source change must be reflected on the target
  (compared as final states, see `cdc_state`): otherwise one failure, `missing`, `extra` or
  `mismatch`. Duplicates and out-of-order deliveries cause none. A source delete expects the
  target row the checker knows of to go. A target change explaining nothing on the source is
  judged after `grace` too (an `extra` row, or a `mismatch`).
* Memory: keys awaiting a counterpart, plus settled keys for MEMO_TTL_GRACES x grace (so
  late duplicates are still recognised), at most `max_pending` keys; see `cdc_state`.
* Snapshot reads (`r`) feed progress and set the expected row but start no grace clock.
  Truncates (`t`) reset their side's row count and are not checked key by key; logical
  messages (`m`) are ignored; changes without the key columns are counted as `unkeyed`.
* Every call returns samples for the engine: `data_validation_failures` (counter, new
  failures), `migration_progress` (gauge, target rows / source rows) and `cdc_lag_seconds`
  (gauge: target commit minus source commit of the latest streaming change matched). The
  gauges are sent when they moved (PROGRESS_STEP, LAG_STEP_MS): not once per change; the
  accessors always have the exact values. Expiries are handled first in every call.
* Progress counts rows as `r` + `c` - `d` per side, from zero, net of the duplicates the
  checker still recognises; the ratio is clamped to 0..1 and is 1 while the source has no
  rows. Lag quantiles and the target row rate cover the last `STATS_WINDOW` seconds.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, NamedTuple

from rolloutd.core.cdc.rows import (
    NO_KEY,
    TRANSFORMS,
    CdcChange,
    TableName,
    matches,
    readers,
    table_pattern,
)
from rolloutd.core.cdc.state import KeyTable, position
from rolloutd.core.histogram import latency_slot, slot_value

FAILURE_KINDS = ("missing", "extra", "mismatch")
STATS_WINDOW = 60  # seconds
MEMO_TTL_GRACES = 2  # settled keys are remembered for grace plus a margin of one more grace
SNAPSHOT_VERSION = 1
PROGRESS_STEP = 0.001  # migration_progress is sent when it moved this much (or hit 0 or 1)
LAG_STEP_MS = 1.0  # cdc_lag_seconds is sent when it moved more than 1 ms and 1%
LAG_STEP_RELATIVE = 0.01
_ROW_DELTA = {"r": 1, "c": 1, "u": 0, "d": -1}


@dataclass(frozen=True, slots=True)
class MigrationSpec:
    name: str
    source_table: TableName  # "schema.table", "db.schema.table" or (db, schema, table)
    target_table: TableName
    key_columns: tuple[str, ...]  # on the source; the target uses the mapped names
    columns: tuple[tuple[str, str, str], ...]  # (target column, source column, transform)
    grace: float = 30.0  # seconds a source change may wait for its target counterpart
    max_pending: int = 100_000  # keys held at most; overflow is counted, never a crash
    sample_size: int = 20  # offending keys kept for alerts and the API

    def __post_init__(self) -> None:
        src, tgt = table_pattern(self.source_table), table_pattern(self.target_table)
        same_db = src[0] is None or tgt[0] is None or src[0] == tgt[0]
        if src[1:] == tgt[1:] and same_db:
            raise ValueError("source_table and target_table must name different tables")
        if not self.key_columns:
            raise ValueError("key_columns must name at least one column")
        for target, _, transform in self.columns:
            if transform not in TRANSFORMS:
                raise ValueError(f"column {target!r}: unknown transform {transform!r}")
        if not (self.grace > 0 and math.isfinite(self.grace)):
            raise ValueError("grace must be a positive number of seconds")
        if self.max_pending < 1 or self.sample_size < 0:
            raise ValueError("max_pending must be >= 1 and sample_size >= 0")


@dataclass(frozen=True, slots=True)
class MigrationWiring:
    """Where a migration's changes come from and whose triggers read what it measures.

    Plain data beside the spec, so the config can build it without importing the CDC
    decoder; `rolloutd.app.cdc` routes decoded changes by it.
    """

    spec: MigrationSpec
    source_topic: str
    target_topic: str
    rollout: str
    cohort: str = "canary"


class Sample(NamedTuple):
    kind: Literal["counter", "gauge"]
    name: str
    value: float


# NamedTuple's own constructor is a Python function; samples are made on the hot path.
_sample = partial(tuple.__new__, Sample)


class FailureSample(NamedTuple):
    key: tuple[Any, ...]  # in target form
    kind: str
    at: float


class Progress(NamedTuple):
    source_rows: int
    target_rows: int
    ratio: float
    rate: float  # target rows per second over the last STATS_WINDOW seconds


class _Recent:
    """Target rows and lag histograms per second over the last STATS_WINDOW seconds.

    Adds are O(1); reads (rate, quantiles) merge the buckets. Lags are counted in the
    log-bucket histogram of `windows` (relative error <= 1%), in milliseconds.
    """

    __slots__ = ("head", "lags", "rows")

    def __init__(self) -> None:
        self.head: int | None = None
        self.rows = [0] * STATS_WINDOW
        self.lags: list[dict[int, int] | None] = [None] * STATS_WINDOW

    def slide(self, bucket: int) -> None:
        head = self.head
        if head is not None and bucket <= head:
            return
        if head is None or bucket - head >= STATS_WINDOW:
            self.rows = [0] * STATS_WINDOW
            self.lags = [None] * STATS_WINDOW
        else:
            for gone in range(head + 1, bucket + 1):
                self.rows[gone % STATS_WINDOW] = 0
                self.lags[gone % STATS_WINDOW] = None
        self.head = bucket

    def add_row(self, bucket: int) -> None:
        self.slide(bucket)
        if self.head is not None and bucket > self.head - STATS_WINDOW:
            self.rows[bucket % STATS_WINDOW] += 1

    def add_lag(self, bucket: int, lag_ms: float) -> None:
        self.slide(bucket)
        if self.head is not None and bucket > self.head - STATS_WINDOW:
            slot = latency_slot(lag_ms)
            hist = self.lags[bucket % STATS_WINDOW]
            if hist is None:
                self.lags[bucket % STATS_WINDOW] = {slot: 1}
            else:
                hist[slot] = hist.get(slot, 0) + 1

    def rate(self) -> float:
        return sum(self.rows) / STATS_WINDOW

    def quantile(self, q: float) -> float | None:
        """The q-quantile in ms (lower rank rule, as `windows.RequestView`), None if empty."""
        merged: dict[int, int] = {}
        for hist in self.lags:
            for slot, count in (hist or {}).items():
                merged[slot] = merged.get(slot, 0) + count
        rank = int(q * (sum(merged.values()) - 1))
        for slot in sorted(merged):
            rank -= merged[slot]
            if rank < 0:
                return slot_value(slot)
        return None

    def dump(self) -> list[Any]:
        lags = [None if h is None else sorted(h.items()) for h in self.lags]
        return [self.head, list(self.rows), lags]

    def load(self, data: list[Any]) -> None:
        self.head, self.rows = data[0], list(data[1])
        self.lags = [None if h is None else {s: c for s, c in h} for h in data[2]]


class MigrationChecker:
    """Checks one migration. Feed it source and target changes; read samples and stats."""

    def __init__(self, spec: MigrationSpec) -> None:
        self.spec = spec
        self._source_table = table_pattern(spec.source_table)
        self._target_table = table_pattern(spec.target_table)
        self._source, self._target = readers(spec.key_columns, spec.columns)
        self._keys = KeyTable(spec.grace, MEMO_TTL_GRACES * spec.grace, spec.max_pending)
        self._failures = dict.fromkeys(FAILURE_KINDS, 0)
        self._unverified = 0
        self._unkeyed = 0
        self._truncates = 0
        self._recent: deque[FailureSample] = deque(maxlen=spec.sample_size)
        self._rows = {True: 0, False: 0}  # source?: rows
        self._stats = _Recent()
        self._last_lag: float | None = None
        self._lag_sent_ms: float | None = None
        self._progress_sent: float | None = None

    # -- input ----------------------------------------------------------------------------
    def on_change(self, change: CdcChange, now: float) -> list[Sample]:
        """Route a change by its table; changes of other tables only advance time."""
        if matches(self._source_table, change.source):
            return self.on_source(change, now)
        if matches(self._target_table, change.source):
            return self.on_target(change, now)
        return self.advance(now)

    def on_source(self, change: CdcChange, now: float) -> list[Sample]:
        """A change of the source table."""
        return self._on_change(change, now, source=True)

    def on_target(self, change: CdcChange, now: float) -> list[Sample]:
        """A change of the target table."""
        return self._on_change(change, now, source=False)

    def _on_change(self, change: CdcChange, now: float, source: bool) -> list[Sample]:
        out = self.advance(now)
        op = change.op
        delta = _ROW_DELTA.get(op)
        if delta is None:
            if op == "t":
                self._truncates += 1
                self._rows[source] = 0
                self._send_progress(out)
            return out
        side = self._source if source else self._target
        key = side.key_of(change)
        if key is NO_KEY:
            self._unkeyed += 1
            return out
        row = None if op == "d" else side.row_of(change.after)
        pos = position(change.source.ts_ms, change.source.lsn)
        if source:
            fresh, lag = self._keys.source(key, pos, row, now, op == "r")
        else:
            fresh, lag = self._keys.target(key, pos, row, now)
            if fresh and delta > 0:
                self._stats.add_row(math.floor(now))
        if lag is not None:
            self._send_lag(out, lag, now)
        if fresh and delta:
            self._rows[source] += delta
            self._send_progress(out)
        return out

    def advance(self, now: float) -> list[Sample]:
        """Judge every key whose grace ended at or before `now`; slide the stats windows."""
        out: list[Sample] = []
        self._stats.slide(math.floor(now))
        if not self._keys.due_by(now):
            return out
        failures = 0
        for key, kind in self._keys.expire(now):
            if kind == "unverified":
                self._unverified += 1
                continue
            failures += 1
            self._failures[kind] += 1
            self._recent.append(FailureSample(key if isinstance(key, tuple) else (key,), kind, now))
        if failures:
            out.append(_sample(("counter", "data_validation_failures", float(failures))))
        return out

    def _send_lag(self, out: list[Sample], lag_ms: float, now: float) -> None:
        self._stats.add_lag(math.floor(now), lag_ms)
        lag = self._last_lag = lag_ms / 1000.0
        sent = self._lag_sent_ms  # compared in ms: whole numbers, no rounding residue
        if sent is None or abs(lag_ms - sent) > max(LAG_STEP_RELATIVE * sent, LAG_STEP_MS):
            self._lag_sent_ms = lag_ms
            out.append(_sample(("gauge", "cdc_lag_seconds", lag)))

    def _send_progress(self, out: list[Sample]) -> None:
        ratio = self._ratio()
        sent = self._progress_sent
        if ratio != sent and (
            sent is None or abs(ratio - sent) >= PROGRESS_STEP or ratio in (0.0, 1.0)
        ):
            self._progress_sent = ratio
            out.append(_sample(("gauge", "migration_progress", ratio)))

    # -- stats ----------------------------------------------------------------------------
    def failures(self) -> dict[str, int]:
        """Failures so far by kind: missing, extra, mismatch."""
        return dict(self._failures)

    def sample_keys(self) -> tuple[FailureSample, ...]:
        """The latest `sample_size` failures, oldest first."""
        return tuple(self._recent)

    def lag_quantiles(self, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[float, float | None]:
        """CDC lag quantiles in seconds over the last STATS_WINDOW seconds (None: no data)."""
        out: dict[float, float | None] = {}
        for q in qs:
            value = self._stats.quantile(q)
            out[q] = None if value is None else value / 1000.0
        return out

    def last_lag(self) -> float | None:
        return self._last_lag

    def progress(self) -> Progress:
        return Progress(self._rows[True], self._rows[False], self._ratio(), self._stats.rate())

    def _ratio(self) -> float:
        source = self._rows[True]
        return 1.0 if source <= 0 else min(1.0, max(0.0, self._rows[False] / source))

    def pending(self) -> int:
        """Keys awaiting their counterpart."""
        return self._keys.pending()

    def held(self) -> int:
        """Keys in memory: pending ones and recently settled ones (at most `max_pending`)."""
        return len(self._keys.entries)

    def overflow(self) -> int:
        """Changes left unchecked because `max_pending` keys were already pending."""
        return self._keys.overflow

    def unverified(self) -> int:
        """Possible extras not reported because the checker may have missed their source."""
        return self._unverified

    def unkeyed(self) -> int:
        return self._unkeyed

    def truncates(self) -> int:
        return self._truncates

    # -- snapshot -------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Plain JSON-ready data; `load` restores it exactly."""
        return {
            "version": SNAPSHOT_VERSION,
            "keys": self._keys.dump(),
            "failures": [self._failures[kind] for kind in FAILURE_KINDS],
            "counts": [self._unverified, self._unkeyed, self._truncates],
            "recent": [[list(s.key), s.kind, s.at] for s in self._recent],
            "rows": [self._rows[True], self._rows[False]],
            "stats": self._stats.dump(),
            "sent": [self._last_lag, self._lag_sent_ms, self._progress_sent],
        }

    def load(self, data: dict[str, Any]) -> None:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported migration snapshot version {data.get('version')!r}")
        self._keys.load(data["keys"], tuple_keys=not self._source.single)
        self._failures = dict(zip(FAILURE_KINDS, data["failures"], strict=True))
        self._unverified, self._unkeyed, self._truncates = data["counts"]
        self._recent.clear()
        self._recent.extend(FailureSample(tuple(k), kind, at) for k, kind, at in data["recent"])
        self._rows = {True: data["rows"][0], False: data["rows"][1]}
        self._stats.load(data["stats"])
        self._last_lag, self._lag_sent_ms, self._progress_sent = data["sent"]
