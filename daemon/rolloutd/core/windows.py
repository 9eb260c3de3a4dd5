"""Sliding windows over time buckets.

Rules:
* Time is given in whole bucket numbers (`floor(ts / bucket)`); callers convert. A window of
  `span` buckets at head `h` holds buckets `h - span + 1 .. h`: the current partial bucket
  plus the `span - 1` before it.
* One ring per series, sized to the longest window that reads it, stores per-bucket partial
  aggregates. Each distinct window length has a view with running sums: adding adds to every
  view that covers the bucket, advancing subtracts the bucket that leaves each view. O(views)
  per event, O(views) per bucket of advance, and a jump longer than the ring is a reset.
* Memory is bounded by the ring length, never by the event rate: latencies are counted in a
  log-bucket histogram (relative error <= 1%, `histogram.py`), not stored.
* A sample older than the ring (`bucket <= head - ring`) is refused (`add` returns False).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final

from librt.vecs import append, vec
from mypy_extensions import i64

from rolloutd.core.histogram import (
    COMPACT_AT,
    COUNT_BITS,
    COUNT_MASK,
    RAW_MAX,
    Entries,
    Histogram,
    compacted,
    entries_of,
    latency_slot,
    pairs_of,
    slot_value,
)


class RequestView:
    """Running request aggregates over the last `span` buckets."""

    __slots__ = ("count", "errors", "histogram", "latencies", "slow", "span")

    def __init__(self, span: int, track_latency: bool) -> None:
        self.span = span
        self.count = 0
        self.errors = 0
        self.slow = 0
        self.latencies = 0
        self.histogram = Histogram() if track_latency else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the latencies in the view (lower rank rule), or None if empty."""
        if self.histogram is None or self.latencies == 0:
            return None
        rank = int(q * (self.latencies - 1))
        return slot_value(self.histogram.slot_at(rank))


# The head of a ring that has not started yet. A plain int, not None: compiled, an
# `int | None` field holds a boxed int, and bucket numbers (~1.8e9) unbox on a slow path.
NO_BUCKET: Final = -(1 << 60)


class _Ring:
    """Shared head/advance logic: subclasses keep per-bucket arrays and views."""

    span_max: int
    top: int  # the head bucket, or NO_BUCKET

    def _spans_init(self, spans: Iterable[int]) -> list[int]:
        ordered = sorted(set(spans))
        if not ordered or ordered[0] < 1:
            raise ValueError("a series needs at least one window of >= 1 bucket")
        self.span_max = ordered[-1]
        self.top = NO_BUCKET
        return ordered

    @property
    def head(self) -> int | None:
        """The newest bucket the ring holds; None before its first sample or advance."""
        top = self.top
        return None if top == NO_BUCKET else top

    def advance(self, bucket: int) -> None:
        """Move the head forward to `bucket`, evicting what leaves each window."""
        head = self.top
        if head == NO_BUCKET:
            self.top = bucket
            return
        if bucket <= head:
            return
        if bucket - head >= self.span_max:
            self._reset()
        else:
            for b in range(head + 1, bucket + 1):
                self._step(b)
        self.top = bucket

    def _place(self, bucket: int) -> bool:
        """Advance for a new sample; False if the sample is older than the ring."""
        head = self.top
        if head == NO_BUCKET or bucket > head:
            self.advance(bucket)
            return True
        return bucket > head - self.span_max

    def _start(self, head: int | None) -> None:
        """Set the head from a snapshot."""
        self.top = NO_BUCKET if head is None else head

    def _step(self, bucket: int) -> None:
        raise NotImplementedError

    def _reset(self) -> None:
        raise NotImplementedError


class RequestSeries(_Ring):
    """Requests of one (rollout, cohort): counts, errors, slow calls and latencies.

    The head bucket's latencies are recorded in `_open` (a field, so an append stores no
    object); when the head moves on, that record goes into the ring, in the bucket's slot.
    """

    __slots__ = (
        "_count",
        "_errors",
        "_hist",
        "_open",
        "_slow",
        "span_max",
        "top",
        "views",
    )

    def __init__(self, spans: Iterable[int], track_latency: bool = False) -> None:
        ordered = self._spans_init(spans)
        # A tuple: its items sit in the same block as its header (one cache miss, not two).
        self.views = tuple(RequestView(s, track_latency) for s in ordered)
        n = self.span_max
        self._count = vec[i64]([0] * n)
        self._errors = vec[i64]([0] * n)
        self._slow = vec[i64]([0] * n)
        self._hist: list[Entries | None] | None = [None] * n if track_latency else None
        self._open: Entries = vec[i64]()

    @property
    def tracks_latency(self) -> bool:
        return self._hist is not None

    def view(self, span: int) -> RequestView:
        for view in self.views:
            if view.span == span:
                return view
        raise KeyError(span)

    def add(
        self,
        bucket: int,
        count: int,
        errors: int,
        slow: int = 0,
        latencies: tuple[float, ...] = (),
    ) -> bool:
        if not self._place(bucket):
            return False
        head = self.top
        slot = bucket % self.span_max
        self._count[slot] += count
        self._errors[slot] += errors
        self._slow[slot] += slow
        age = head - bucket
        views = self.views
        for view in views:
            if age < view.span:
                view.count += count
                view.errors += errors
                view.slow += slow
        hist_ring = self._hist
        if hist_ring is None or not latencies:
            return True
        record = self._record(hist_ring, slot, age)
        for value in latencies:
            s = latency_slot(value)
            record = append(record, (s << COUNT_BITS) | 1)
            for view in views:
                histogram = view.histogram
                if histogram is not None and age < view.span:
                    histogram.add(s, 1)
        self._keep(hist_ring, slot, age, record)
        for view in views:
            if view.histogram is not None and age < view.span:
                view.latencies += len(latencies)
        return True

    def _record(self, hist_ring: list[Entries | None], slot: int, age: int) -> Entries:
        """The latency record of the bucket `age` buckets before the head."""
        if age == 0:
            return self._open
        record = hist_ring[slot]
        return record if record is not None else vec[i64]()

    def _keep(self, hist_ring: list[Entries | None], slot: int, age: int, record: Entries) -> None:
        """Store a record back after appending to it, compacted once it is long."""
        if len(record) >= COMPACT_AT:
            record = compacted(record)
        if age == 0:
            self._open = record
        else:
            hist_ring[slot] = record

    def advance(self, bucket: int) -> None:
        previous = self.top
        hist_ring = self._hist
        if hist_ring is not None and previous != NO_BUCKET and bucket > previous:
            # The head bucket takes no more on-time samples: its record joins the ring.
            record = self._open
            if len(record):
                if bucket - previous < self.span_max:
                    if len(record) > RAW_MAX:
                        record = compacted(record)
                    hist_ring[previous % self.span_max] = record
                self._open = vec[i64]()
        super().advance(bucket)

    def add_one(self, bucket: int, error: bool, latency_ms: float | None) -> bool:
        """One request: the same as `add(bucket, 1, error, 0, [latency_ms])`, faster."""
        head = self.top
        if head == NO_BUCKET or bucket > head:
            self.advance(bucket)
            head = bucket
        elif bucket <= head - self.span_max:
            return False
        slot = bucket % self.span_max
        counts = self._count
        counts[slot] = counts[slot] + 1
        if error:
            errors = self._errors
            errors[slot] = errors[slot] + 1
        hist_ring = self._hist
        lat_slot = -1
        age = head - bucket
        if hist_ring is not None and latency_ms is not None:
            lat_slot = latency_slot(latency_ms)
            record = append(self._record(hist_ring, slot, age), (lat_slot << COUNT_BITS) | 1)
            self._keep(hist_ring, slot, age, record)
        for view in self.views:
            if age < view.span:
                view.count += 1
                if error:
                    view.errors += 1
                histogram = view.histogram
                if histogram is not None and lat_slot >= 0:
                    view.latencies += 1
                    histogram.add(lat_slot, 1)
        return True

    def _step(self, bucket: int) -> None:
        n = self.span_max
        hist_ring = self._hist
        for view in self.views:
            old = (bucket - view.span) % n
            view.count -= self._count[old]
            view.errors -= self._errors[old]
            view.slow -= self._slow[old]
            histogram = view.histogram
            if histogram is not None and hist_ring is not None:
                record = hist_ring[old]
                if record is not None:
                    for entry in record:
                        count = entry & COUNT_MASK
                        histogram.add(entry >> COUNT_BITS, -count)
                        view.latencies -= count
        slot = bucket % n
        self._count[slot] = 0
        self._errors[slot] = 0
        self._slow[slot] = 0
        if hist_ring is not None:
            hist_ring[slot] = None

    def _reset(self) -> None:
        # Views are zeroed in place: triggers hold references to them.
        for view in self.views:
            view.count = view.errors = view.slow = view.latencies = 0
            if view.histogram is not None:
                view.histogram = Histogram()
        n = self.span_max
        self._count = vec[i64]([0] * n)
        self._errors = vec[i64]([0] * n)
        self._slow = vec[i64]([0] * n)
        if self._hist is not None:
            self._hist = [None] * n
        self._open = vec[i64]()

    # -- snapshot -----------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        """Non-empty buckets only; views are rebuilt on load."""
        rows = []
        head, n, hists = self.head, self.span_max, self._hist
        if head is not None:
            records: list[Entries | None] = []
            if hists is not None:
                records = list(hists)
                records[head % n] = self._open
            # Find the used slots with one C-speed pass; most of a window is often empty.
            used = [i for i, c in enumerate(self._count) if c]
            used += [i for i, r in enumerate(records) if r and not self._count[i]]
            for slot in used:
                b = head - (head - slot) % n
                record = records[slot] if records else None
                h = pairs_of(record) if record else []
                rows.append([b, self._count[slot], self._errors[slot], self._slow[slot], h])
            rows.sort()
        return {"head": head, "rows": rows}

    def load(self, data: dict[str, Any]) -> None:
        self._reset()
        self._start(data["head"])
        for b, count, errors, slow, hist in data["rows"]:
            self._add_raw(b, count, errors, slow, hist)

    def _add_raw(self, bucket: int, count: int, errors: int, slow: int, hist: list[Any]) -> None:
        self.add(bucket, count, errors, slow)
        if self._hist is None or not hist:
            return
        age = self.top - bucket
        self._keep(self._hist, bucket % self.span_max, age, entries_of((s, c) for s, c in hist))
        for view in self.views:
            if age < view.span and view.histogram is not None:
                for s, c in hist:
                    view.histogram.add(s, c)
                    view.latencies += c


# Sums are kept exactly, as integers in units of the smallest float (2**-1074): every float
# is a whole number of those, so adding and evicting never leaves a rounding residue and a
# window of zeros sums to exactly 0.
_EXACT_SCALE: Final = 2**1074


def _exact(value: float) -> int:
    numerator, denominator = value.as_integer_ratio()
    return numerator * (_EXACT_SCALE // denominator)


class SampleView:
    """Running gauge or counter aggregates over the last `span` buckets."""

    __slots__ = ("changes", "exact_total", "samples", "span")

    def __init__(self, span: int) -> None:
        self.span = span
        self.samples = 0
        self.exact_total = 0
        self.changes = 0

    @property
    def total(self) -> float:
        """The sum of the samples in the window, correctly rounded."""
        try:
            return self.exact_total / _EXACT_SCALE
        except OverflowError:  # past the largest float: what float addition would give
            return math.inf if self.exact_total > 0 else -math.inf


class SampleSeries(_Ring):
    """Gauge or counter samples of one (rollout, cohort, name).

    Counters read `total` (the sum in the window); gauges read `last` (the newest sample in
    the window, by event time) and `changes`: samples whose value differed from the newest
    sample seen before them (the first sample ever is a change). A late sample is compared
    with the newest one, and never replaces it as `last`.
    """

    __slots__ = (
        "_changes",
        "_samples",
        "_total",
        "last_bucket",
        "last_ts",
        "last_value",
        "span_max",
        "top",
        "views",
    )

    def __init__(self, spans: Iterable[int]) -> None:
        ordered = self._spans_init(spans)
        self.views = tuple(SampleView(s) for s in ordered)
        n = self.span_max
        self._samples = [0] * n
        self._total = [0] * n
        self._changes = [0] * n
        self.last_ts: float | None = None
        self.last_value = 0.0
        self.last_bucket = 0

    def view(self, span: int) -> SampleView:
        for view in self.views:
            if view.span == span:
                return view
        raise KeyError(span)

    def add(self, bucket: int, ts: float, value: float) -> bool:
        if not self._place(bucket):
            return False
        head = self.top
        changed = self.last_ts is None or value != self.last_value
        if self.last_ts is None or ts >= self.last_ts:
            self.last_ts, self.last_value, self.last_bucket = ts, value, bucket
        slot = bucket % self.span_max
        self._samples[slot] += 1
        exact = _exact(value)
        self._total[slot] += exact
        self._changes[slot] += changed
        age = head - bucket
        for view in self.views:
            if age < view.span:
                view.samples += 1
                view.exact_total += exact
                view.changes += changed
        return True

    def last(self, span: int) -> float | None:
        """The newest sample's value if it is inside the window of `span` buckets."""
        if self.last_ts is None or self.top == NO_BUCKET:
            return None
        if self.last_bucket <= self.top - span:
            return None
        return self.last_value

    def _step(self, bucket: int) -> None:
        n = self.span_max
        for view in self.views:
            old = (bucket - view.span) % n
            view.samples -= self._samples[old]
            view.changes -= self._changes[old]
            view.exact_total -= self._total[old]
        slot = bucket % n
        self._samples[slot] = 0
        self._total[slot] = 0
        self._changes[slot] = 0

    def _reset(self) -> None:
        for view in self.views:
            view.samples = view.changes = view.exact_total = 0
        n = self.span_max
        self._samples = [0] * n
        self._total = [0] * n
        self._changes = [0] * n

    # -- snapshot -----------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        rows = []
        if self.head is not None:
            for b in range(self.head - self.span_max + 1, self.head + 1):
                slot = b % self.span_max
                if self._samples[slot]:
                    rows.append([b, self._samples[slot], self._total[slot], self._changes[slot]])
        last = None if self.last_ts is None else [self.last_ts, self.last_value, self.last_bucket]
        return {"head": self.head, "rows": rows, "last": last}

    def load(self, data: dict[str, Any]) -> None:
        self._reset()
        self._start(data["head"])
        n = self.span_max
        for b, samples, total, changes in data["rows"]:
            slot = b % n
            self._samples[slot] = samples
            self._total[slot] = total
            self._changes[slot] = changes
            for view in self.views:
                if self.top - b < view.span:
                    view.samples += samples
                    view.exact_total += total
                    view.changes += changes
        last = data["last"]
        if last is None:
            self.last_ts = None
        else:
            self.last_ts, self.last_value, self.last_bucket = last
