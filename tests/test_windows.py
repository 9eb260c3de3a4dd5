"""Sliding windows (`rolloutd.core.windows`) against a brute-force reference.

The reference keeps every accepted sample forever and recomputes each aggregate from the
samples whose bucket lies in (head - span, head]; the series under test keeps running sums
in a ring. Random interleavings of on-time, late, too-old and future adds with small, large
and backward advances must agree after every single operation.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from librt.vecs import vec
from mypy_extensions import i64

from rolloutd.core.histogram import (
    ALPHA,
    COMPACT_AT,
    HIST_SLOTS,
    MAX_LATENCY_MS,
    MIN_LATENCY_MS,
    compacted,
    latency_slot,
    slot_value,
)
from rolloutd.core.windows import RequestSeries, SampleSeries

SPAN_SETS = [(1,), (3,), (2, 5), (1, 7, 60)]
QUANTILES = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
Q_GRID = tuple(i / 10 for i in range(11))
# The histogram promises ALPHA; the factor absorbs float rounding at bucket borders (~1e-15).
QUANTILE_TOLERANCE = ALPHA * (1 + 1e-9)
REFERENCE_RUNS = settings(max_examples=50, deadline=None)
ROUND_TRIP_RUNS = settings(max_examples=20, deadline=None)
MAX_OPS = 40

Payload = Any
Series = RequestSeries | SampleSeries


# -- brute-force reference ----------------------------------------------------------------


@dataclass
class Reference:
    """Keeps every accepted sample; knows nothing about rings, views or running sums."""

    spans: tuple[int, ...]
    head: int | None = None
    refused: int = 0
    samples: list[tuple[int, Payload]] = field(default_factory=list)

    @property
    def span_max(self) -> int:
        return max(self.spans)

    def advance(self, bucket: int) -> None:
        if self.head is None or bucket > self.head:
            self.head = bucket

    def add(self, bucket: int, payload: Payload) -> bool:
        if self.head is not None and bucket <= self.head - self.span_max:
            self.refused += 1
            return False
        self.advance(bucket)
        self.samples.append((bucket, payload))
        return True

    def window(self, span: int) -> list[Payload]:
        head = self.head
        if head is None:
            return []
        return [p for b, p in self.samples if head - span < b <= head]


@dataclass(frozen=True)
class RequestPayload:
    count: int
    errors: int
    slow: int
    latencies: tuple[float, ...]


@dataclass(frozen=True)
class GaugePayload:
    ts: float
    value: float


@dataclass(frozen=True)
class GaugeRecord:
    bucket: int
    ts: float
    value: float
    arrival: int
    changed: bool


class SampleReference(Reference):
    """Adds the gauge rules: `changes` flags and `last`."""

    def newest(self) -> GaugeRecord | None:
        """The accepted sample with the greatest ts; on equal ts the later arrival wins
        (`add` replaces on `ts >= last_ts`)."""
        records = [p for _, p in self.samples]
        return max(records, key=lambda r: (r.ts, r.arrival), default=None)

    def add_gauge(self, bucket: int, payload: GaugePayload) -> bool:
        # A sample is a change when it differs from the newest sample (by ts) accepted before
        # it, the one `last` reports. With samples arriving in ts order that is the previous
        # arrival; test_late_sample_is_compared_with_the_newest pins where the two part.
        before = self.newest()
        changed = before is None or payload.value != before.value
        record = GaugeRecord(bucket, payload.ts, payload.value, len(self.samples), changed)
        return self.add(bucket, record)

    def last(self, span: int) -> float | None:
        newest = self.newest()
        if newest is None or self.head is None or newest.bucket <= self.head - span:
            return None
        return newest.value

    def total(self, span: int) -> float:
        """The exact sum of the window, rounded once."""
        return float(sum((Fraction(r.value) for r in self.window(span)), Fraction(0)))


# -- strategies ---------------------------------------------------------------------------

LATENCIES = st.one_of(
    st.just(0.0),
    st.sampled_from([0.01, 1.0, 250.0, 812.0]),
    st.floats(min_value=0.01, max_value=1e6),
)


@st.composite
def request_payloads(draw: st.DrawFn) -> RequestPayload:
    count = draw(st.integers(0, 20))
    errors = draw(st.integers(0, count))
    slow = draw(st.integers(0, count))
    latencies = tuple(draw(st.lists(LATENCIES, max_size=6)))
    return RequestPayload(count, errors, slow, latencies)


GAUGE_VALUES = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, 2.0, -1.5, 0.1, 0.2, 0.7, 1e6, 5e-324]),
    st.integers(-(4 * 10**6), 4 * 10**6).map(lambda n: n / 4),
    st.floats(min_value=0.0, max_value=1e6),
    # Mixed magnitudes: a float sum would lose the small ones or leave residues.
    st.floats(min_value=-1e300, max_value=1e300),
)

OP_KINDS = (
    "add_head",
    "add_head",
    "add_late",
    "add_late",
    "add_edge",
    "add_old",
    "add_ahead",
    "advance_1",
    "advance_some",
    "advance_far",
    "advance_back",
)
START_BUCKETS = st.one_of(st.sampled_from([0, -3, 1_763_719_200]), st.integers(-1000, 1000))


def draw_op(data: st.DataObject, head: int, span_max: int) -> tuple[str, int]:
    """One operation as ("add" | "advance", bucket), relative to the current head."""
    kind = data.draw(st.sampled_from(OP_KINDS))
    offsets: dict[str, Callable[[], int]] = {
        "add_head": lambda: 0,
        "add_late": lambda: -data.draw(st.integers(1, span_max - 1)) if span_max > 1 else 0,
        "add_edge": lambda: -(span_max - 1),
        "add_old": lambda: -span_max - data.draw(st.integers(0, 2)),
        "add_ahead": lambda: data.draw(st.integers(1, span_max + 2)),
        "advance_1": lambda: 1,
        "advance_some": lambda: data.draw(st.integers(2, max(2, span_max))),
        "advance_far": lambda: data.draw(st.integers(span_max, 3 * span_max + 2)),
        "advance_back": lambda: -data.draw(st.integers(0, 3)),
    }
    return kind.split("_")[0], head + offsets[kind]()


def draw_payload(data: st.DataObject, series: Series, bucket: int) -> Payload:
    if isinstance(series, RequestSeries):
        return data.draw(request_payloads())
    frac = data.draw(st.sampled_from([0.0, 0.25, 0.5, 0.75]))
    return GaugePayload(bucket + frac, data.draw(GAUGE_VALUES))


def apply(series: Series, op: str, bucket: int, payload: Payload) -> bool | None:
    if op == "advance":
        series.advance(bucket)
        return None
    if isinstance(series, RequestSeries):
        p: RequestPayload = payload
        return series.add(bucket, p.count, p.errors, p.slow, p.latencies)
    return series.add(bucket, payload.ts, payload.value)


# -- checks against the reference ---------------------------------------------------------


def check_requests(series: RequestSeries, ref: Reference) -> None:
    assert series.head == ref.head
    for span in ref.spans:
        view = series.view(span)
        window: list[RequestPayload] = ref.window(span)
        assert view.count == sum(p.count for p in window)
        assert view.errors == sum(p.errors for p in window)
        assert view.slow == sum(p.slow for p in window)
        values = sorted(v for p in window for v in p.latencies) if series.tracks_latency else []
        assert view.latencies == len(values)
        for q in QUANTILES:
            got = view.quantile(q)
            if not values:
                assert got is None
                continue
            exact = values[int(q * (len(values) - 1))]
            assert got == slot_value(latency_slot(exact)), (span, q, exact)
            assert got is not None
            assert abs(got - exact) <= QUANTILE_TOLERANCE * exact, (span, q, exact, got)


def check_samples(series: SampleSeries, ref: SampleReference) -> None:
    assert series.head == ref.head
    for span in ref.spans:
        view = series.view(span)
        window: list[GaugeRecord] = ref.window(span)
        assert view.samples == len(window)
        assert view.changes == sum(r.changed for r in window)
        # Sums are documented as exact, correctly rounded: stricter than a 1e-9 tolerance.
        assert view.total == ref.total(span)
        if not window:
            assert math.copysign(1.0, view.total) == 1.0  # exactly 0.0, not -0.0
        assert series.last(span) == ref.last(span)


def run_against_reference(
    data: st.DataObject, series: Series, ref: Reference, check: Callable[[Any, Any], None]
) -> None:
    start = data.draw(START_BUCKETS)
    refused = 0
    for _ in range(data.draw(st.integers(1, MAX_OPS))):
        op, bucket = draw_op(data, start if ref.head is None else ref.head, ref.span_max)
        payload: Payload = None if op == "advance" else draw_payload(data, series, bucket)
        got = apply(series, op, bucket, payload)
        if op == "advance":
            ref.advance(bucket)
        else:
            added = (
                ref.add_gauge(bucket, payload)
                if isinstance(ref, SampleReference)
                else ref.add(bucket, payload)
            )
            assert got is added, (op, bucket, ref.head)
            refused += not got
        assert refused == ref.refused
        check(series, ref)


@pytest.mark.parametrize("spans", SPAN_SETS)
@pytest.mark.parametrize("track_latency", [True, False])
@REFERENCE_RUNS
@given(data=st.data())
def test_request_series_matches_reference(
    spans: tuple[int, ...], track_latency: bool, data: st.DataObject
) -> None:
    series = RequestSeries(spans, track_latency)
    run_against_reference(data, series, Reference(spans), check_requests)


@pytest.mark.parametrize("spans", SPAN_SETS)
@REFERENCE_RUNS
@given(data=st.data())
def test_sample_series_matches_reference(spans: tuple[int, ...], data: st.DataObject) -> None:
    series = SampleSeries(spans)
    run_against_reference(data, series, SampleReference(spans), check_samples)


# -- dump / load --------------------------------------------------------------------------


def observe(series: Series) -> Any:
    """Everything a reader can see, compared exactly (float sums included)."""
    views: list[tuple[object, ...]]
    if isinstance(series, RequestSeries):
        views = [
            (v.span, v.count, v.errors, v.slow, v.latencies, [v.quantile(q) for q in Q_GRID])
            for v in series.views
        ]
    else:
        views = [(v.span, v.samples, v.total, v.changes, series.last(v.span)) for v in series.views]
    return series.head, views, series.dump()


def run_ops(data: st.DataObject, twins: list[Series], start: int) -> None:
    """The same random operations on every series of `twins`; they must stay identical."""
    first = twins[0]
    for _ in range(data.draw(st.integers(0, MAX_OPS))):
        op, bucket = draw_op(data, start if first.head is None else first.head, first.span_max)
        payload = None if op == "advance" else draw_payload(data, first, bucket)
        results = [apply(s, op, bucket, payload) for s in twins]
        assert len(set(results)) == 1, (op, bucket, results)
        seen = [observe(s) for s in twins]
        assert all(o == seen[0] for o in seen[1:])


def make(kind: str, spans: tuple[int, ...]) -> Series:
    if kind == "samples":
        return SampleSeries(spans)
    return RequestSeries(spans, track_latency=kind == "requests+latency")


@pytest.mark.parametrize("spans", SPAN_SETS)
@pytest.mark.parametrize("kind", ["requests+latency", "requests", "samples"])
@ROUND_TRIP_RUNS
@given(data=st.data())
def test_dump_load_round_trip(kind: str, spans: tuple[int, ...], data: st.DataObject) -> None:
    start = data.draw(START_BUCKETS)
    original = make(kind, spans)
    run_ops(data, [original], start)
    # Snapshots are stored as JSON: go through it.
    snapshot = json.loads(json.dumps(original.dump()))
    restored = make(kind, spans)
    if data.draw(st.booleans(), label="restore into a used series"):
        run_ops(data, [restored], data.draw(START_BUCKETS))
    restored.load(snapshot)
    assert observe(restored) == observe(original)
    run_ops(data, [original, restored], start)


@pytest.mark.parametrize(("count", "latencies"), [(0, (12.0, 0.0)), (3, ()), (0, ()), (2, (1e6,))])
def test_dump_load_keeps_every_non_empty_bucket(count: int, latencies: tuple[float, ...]) -> None:
    """A bucket with only sampled latencies (count 0) is data too."""
    original = RequestSeries([2, 4], track_latency=True)
    original.add(7, count, 0, 0, latencies)
    original.add(9, 1, 1, 1, (3.0,))
    restored = RequestSeries([2, 4], track_latency=True)
    restored.load(json.loads(json.dumps(original.dump())))
    assert observe(restored) == observe(original)
    assert restored.view(4).latencies == len(latencies) + 1


# -- unit tests: construction and empty series --------------------------------------------


@pytest.mark.parametrize("spans", [[], [0], [-1, 3]])
def test_spans_must_be_positive(spans: list[int]) -> None:
    with pytest.raises(ValueError, match="at least one window"):
        RequestSeries(spans)
    with pytest.raises(ValueError, match="at least one window"):
        SampleSeries(spans)


def test_duplicate_spans_share_one_view() -> None:
    series = RequestSeries([5, 2, 5, 2])
    assert [v.span for v in series.views] == [2, 5]
    assert series.span_max == 5
    with pytest.raises(KeyError):
        series.view(3)


@pytest.mark.parametrize("track_latency", [True, False])
def test_empty_request_series(track_latency: bool) -> None:
    series = RequestSeries([1, 4], track_latency)
    assert series.head is None
    assert series.tracks_latency is track_latency
    for span in (1, 4):
        view = series.view(span)
        assert (view.count, view.errors, view.slow, view.latencies) == (0, 0, 0, 0)
        assert view.quantile(0.5) is None
    assert series.dump() == {"head": None, "rows": []}
    series.advance(10)
    assert series.head == 10
    assert series.view(4).count == 0
    assert series.dump() == {"head": 10, "rows": []}


def test_empty_sample_series() -> None:
    series = SampleSeries([1, 4])
    assert series.head is None
    for span in (1, 4):
        view = series.view(span)
        assert (view.samples, view.changes) == (0, 0)
        assert view.total == 0.0
        assert series.last(span) is None
    assert series.dump() == {"head": None, "rows": [], "last": None}


def test_without_latency_tracking_latencies_are_ignored() -> None:
    series = RequestSeries([3], track_latency=False)
    assert series.add(0, 2, 1, 0, (5.0, 7.0))
    view = series.view(3)
    assert (view.count, view.errors, view.latencies) == (2, 1, 0)
    assert view.quantile(0.5) is None


# -- unit tests: window edges, late and old samples, jumps --------------------------------

EDGE_CASES = [  # (age of the sample at the head, spans that still hold it)
    (0, {1, 3, 5}),
    (1, {3, 5}),
    (2, {3, 5}),
    (3, {5}),
    (4, {5}),
    (5, set()),
    (6, set()),
]


@pytest.mark.parametrize(("age", "holding"), EDGE_CASES)
def test_window_edge(age: int, holding: set[int]) -> None:
    requests = RequestSeries([1, 3, 5], track_latency=True)
    samples = SampleSeries([1, 3, 5])
    assert requests.add(100, 1, 1, 1, (10.0,))
    assert samples.add(100, 100.5, 7.0)
    requests.advance(100 + age)
    samples.advance(100 + age)
    for span in (1, 3, 5):
        inside = span in holding
        view = requests.view(span)
        assert (view.count, view.errors, view.slow, view.latencies) == (int(inside),) * 4
        assert (view.quantile(0.5) is not None) is inside
        sample_view = samples.view(span)
        assert (sample_view.samples, sample_view.changes) == (inside, inside)
        assert sample_view.total == (7.0 if inside else 0.0)
        assert samples.last(span) == (7.0 if inside else None)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [(0, True), (-1, True), (-4, True), (-5, False), (-6, False), (-1000, False), (3, True)],
)
def test_add_relative_to_head(offset: int, accepted: bool) -> None:
    """The ring holds head - span_max + 1 .. head; older is refused, newer advances."""
    requests = RequestSeries([2, 5])
    samples = SampleSeries([2, 5])
    requests.advance(50)
    samples.advance(50)
    assert requests.add(50 + offset, 1, 0) is accepted
    assert samples.add(50 + offset, 50.0 + offset, 1.0) is accepted
    assert requests.view(5).count == samples.view(5).samples == int(accepted)
    assert requests.head == samples.head == max(50, 50 + offset)


@pytest.mark.parametrize(("jump", "kept"), [(4, 1), (5, 0), (6, 0), (10**9, 0)])
def test_big_jump_resets(jump: int, kept: int) -> None:
    requests = RequestSeries([2, 5], track_latency=True)
    samples = SampleSeries([2, 5])
    views = [*requests.views, *samples.views]
    for b in range(10, 15):
        requests.add(b, 3, 1, 0, (float(b),))
        samples.add(b, float(b), 2.0)
    requests.advance(14 + jump)
    samples.advance(14 + jump)
    assert requests.view(5).count == 3 * kept
    assert requests.view(5).latencies == kept
    assert requests.view(2).count == 0
    assert samples.view(5).samples == kept
    assert samples.view(5).total == 2.0 * kept
    assert samples.view(2).total == 0.0
    # Triggers hold references to the views: a reset zeroes them in place.
    assert all(a is b for a, b in zip([*requests.views, *samples.views], views, strict=True))
    # The oldest bucket the new ring holds starts from zero, whatever it held before.
    edge = 14 + jump - 4
    assert requests.add(edge, 1, 0, 0, (1.0,))
    assert samples.add(edge, float(edge), 1.0)
    assert requests.view(5).count == 1 + 3 * kept
    assert samples.view(5).samples == 1 + kept


def test_add_far_ahead_resets() -> None:
    series = RequestSeries([3], track_latency=True)
    series.add(0, 5, 5, 5, (1.0, 2.0))
    assert series.add(3, 1, 0, 0, (9.0,))
    view = series.view(3)
    assert (view.count, view.errors, view.slow, view.latencies) == (1, 0, 0, 1)
    assert view.quantile(0.0) == slot_value(latency_slot(9.0))


def test_advance_never_goes_back() -> None:
    series = SampleSeries([3])
    series.add(20, 20.0, 1.0)
    series.advance(15)
    assert series.head == 20
    assert series.view(3).samples == 1
    assert not series.add(17, 17.0, 1.0)


# -- unit tests: gauge rules ----------------------------------------------------------------

LAST_CASES = [  # (adds as (bucket, ts, value), last(3) at the end)
    ([(10, 10.0, 1.0)], 1.0),
    ([(10, 10.5, 1.0), (10, 10.5, 2.0)], 2.0),  # equal ts: the later arrival wins
    ([(10, 10.5, 1.0), (10, 10.2, 2.0)], 1.0),  # an older ts never replaces
    ([(11, 11.0, 1.0), (9, 9.0, 2.0)], 1.0),  # a late sample is not the newest
    ([(11, 11.0, 1.0), (1, 1.0, 2.0)], 1.0),  # a refused sample is not either
    ([(5, 5.0, 1.0), (11, 11.0, 3.0), (12, 12.0, 3.0)], 3.0),
]


@pytest.mark.parametrize(("adds", "last"), LAST_CASES)
def test_last_is_the_newest_sample(adds: list[tuple[int, float, float]], last: float) -> None:
    series = SampleSeries([3])
    for bucket, ts, value in adds:
        series.add(bucket, ts, value)
    assert series.last(3) == last
    assert series.last(1) == (last if series.last_bucket == series.head else None)
    head = max(bucket for bucket, _, _ in adds)
    series.advance(head + 2)
    assert series.last(3) == (last if series.last_bucket == head else None)
    series.advance(head + 3)
    assert series.last(3) is None


CHANGE_CASES = [  # values added in ts order at consecutive buckets, changes in the window
    ([1.0], 1),
    ([1.0, 1.0, 1.0], 1),
    ([1.0, 2.0, 1.0], 3),
    ([0.0, -0.0, 0.0], 1),
    ([1.0, 1.0, 2.0, 2.0], 2),
]


@pytest.mark.parametrize(("values", "changes"), CHANGE_CASES)
def test_changes_in_order(values: list[float], changes: int) -> None:
    series = SampleSeries([10])
    for i, value in enumerate(values):
        series.add(i, float(i), value)
    assert series.view(10).changes == changes


def exact_sum(values: tuple[float, ...]) -> float:
    return float(sum((Fraction(v) for v in values), Fraction(0)))


@pytest.mark.parametrize("values", [(0.1, 0.2), (0.1, 0.2, 0.7), (1e6, 0.3), (0.7, 0.1, 0.1)])
def test_empty_window_total_is_exactly_zero(values: tuple[float, ...]) -> None:
    """Values leave one bucket at a time; no rounding residue may be left behind."""
    span = len(values)
    series = SampleSeries([span])
    for i, value in enumerate(values):
        series.add(i, float(i), value)
    assert series.view(span).total == exact_sum(values)
    for bucket in range(span, 2 * span):
        series.advance(bucket)  # one step at a time: a longer jump would reset instead
        assert series.view(span).total == exact_sum(values[bucket - span + 1 :])
    assert series.view(span).samples == 0
    assert series.view(span).total == 0.0


RESIDUE_CASES = [  # (values at buckets 0.., head at the end, window total)
    ((1e6, 0.3, 0.0), 4, 0.0),  # a float running sum leaves 4.66e-11 here
    ((1e9, 0.3), 2, 0.3),  # ... and 0.29999995 here
    ((1e300, 1.0, -1e300), 2, 1.0),  # a float sum gives 0.0
    ((0.1, 0.2, 0.3), 3, 0.5),
]


@pytest.mark.parametrize(("values", "head", "total"), RESIDUE_CASES)
def test_total_after_evicting_a_large_value(
    values: tuple[float, ...], head: int, total: float
) -> None:
    """Counter windows: `unchanged` reads `total == 0`, so a residue would keep it silent."""
    series = SampleSeries([len(values)])
    for i, value in enumerate(values):
        series.add(i, float(i), value)
    for bucket in range(len(values), head + 1):
        series.advance(bucket)
    assert series.view(len(values)).total == total


def test_late_sample_is_compared_with_the_newest() -> None:
    """`changes` compares with the newest sample by ts (documented), not the last arrival."""
    series = SampleSeries([5])
    series.add(10, 10.0, 1.0)  # first ever: a change
    series.add(11, 11.0, 1.0)  # same as the newest: no change
    series.add(9, 9.5, 2.0)  # late, differs from the newest (1.0): a change; not `last`
    series.add(12, 12.0, 1.0)  # same as the newest (ts 11): no change
    assert series.view(5).changes == 2
    assert series.last(5) == 1.0
    assert series.last_ts == 12.0


def test_changes_survive_a_reset() -> None:
    """The first sample ever is a change; after a reset a repeat of the last value is not."""
    series = SampleSeries([2])
    series.add(0, 0.0, 4.0)
    series.advance(100)
    series.add(100, 100.0, 4.0)
    assert series.view(2).samples == 1
    assert series.view(2).changes == 0


@pytest.mark.parametrize(("value", "total"), [(1e308, math.inf), (-1e308, -math.inf)])
def test_total_past_the_largest_float(value: float, total: float) -> None:
    series = SampleSeries([3])
    assert series.add(0, 0.0, value)
    assert series.add(0, 0.5, value)
    assert series.view(3).total == total  # the float sum: inf, as IEEE addition would give


# -- unit tests: latency histogram --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "slot"),
    [
        (0.0, 0),
        (-5.0, 0),
        (MIN_LATENCY_MS / 2, 0),
        (math.nextafter(MIN_LATENCY_MS, 0.0), 0),
        (MIN_LATENCY_MS, 1),
        (MAX_LATENCY_MS, HIST_SLOTS - 1),
        (1e12, HIST_SLOTS - 1),
        (math.inf, HIST_SLOTS - 1),
    ],
)
def test_latency_slot_edges(value: float, slot: int) -> None:
    assert latency_slot(value) == slot


def test_slot_value_round_trip_and_order() -> None:
    values = [slot_value(k) for k in range(HIST_SLOTS)]
    assert values[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(values))
    # Slot 1 is the partial bucket [MIN, gamma^i]: its representative lies just below MIN,
    # so only the full buckets map their representative back to themselves.
    assert [latency_slot(v) for v in values[2:]] == list(range(2, HIST_SLOTS))
    assert values[1] <= MIN_LATENCY_MS * (1 + ALPHA)
    assert values[-1] >= MAX_LATENCY_MS * (1 - ALPHA)


@given(
    a=st.floats(min_value=-1.0, max_value=1e10, allow_nan=False),
    b=st.floats(min_value=-1.0, max_value=1e10, allow_nan=False),
)
def test_latency_slot_is_monotonic(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert 0 <= latency_slot(low) <= latency_slot(high) <= HIST_SLOTS - 1


@given(value=st.floats(min_value=MIN_LATENCY_MS, max_value=MAX_LATENCY_MS, exclude_max=True))
def test_slot_value_is_within_alpha(value: float) -> None:
    assert abs(slot_value(latency_slot(value)) - value) <= QUANTILE_TOLERANCE * value


@pytest.mark.parametrize("value", [0.0, MIN_LATENCY_MS, 0.01, 1.0, 3.7, 812.0, 1e6, 9.9e7])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.99, 1.0])
def test_quantile_of_a_single_value(value: float, q: float) -> None:
    series = RequestSeries([1], track_latency=True)
    series.add(0, 1, 0, 0, (value,))
    got = series.view(1).quantile(q)
    assert got == slot_value(latency_slot(value))
    assert got is not None
    assert abs(got - value) <= QUANTILE_TOLERANCE * value


@pytest.mark.parametrize(
    ("value", "expected"),
    [(MIN_LATENCY_MS / 2, 0.0), (1e9, slot_value(HIST_SLOTS - 1))],
)
def test_quantile_outside_the_histogram_range(value: float, expected: float) -> None:
    """Below MIN counts as zero, above MAX is clamped to the top slot (documented)."""
    series = RequestSeries([1], track_latency=True)
    series.add(0, 1, 0, 0, (value,))
    assert series.view(1).quantile(0.5) == expected


# -- unit tests: memory bound -------------------------------------------------------------

ADDS = 100_000


def test_request_memory_is_bounded_by_the_ring() -> None:
    rng = random.Random(7)
    series = RequestSeries([2, 5], track_latency=True)
    buckets = (40, 41, 42)
    latencies: list[float] = []
    for i in range(ADDS):
        value = 10 ** rng.uniform(-2, 7)
        latencies.append(value)
        assert series.add(buckets[i % 3], 1, i % 2, 0, (value,))
    assert len(series._count) == len(series._errors) == len(series._slow) == 5
    assert series._hist is not None
    assert len(series._hist) == 5
    # Each bucket's latency record is compacted before it passes COMPACT_AT entries.
    assert all(h is None or len(h) < COMPACT_AT for h in series._hist)
    assert len(series._open) < COMPACT_AT
    view = series.view(5)
    assert view.histogram is not None
    assert len(view.histogram.slots) < HIST_SLOTS + 32
    assert (view.count, view.errors, view.latencies) == (ADDS, ADDS // 2, ADDS)
    assert len(series.dump()["rows"]) == 3
    latencies.sort()
    for q in QUANTILES:
        exact = latencies[int(q * (ADDS - 1))]
        got = view.quantile(q)
        assert got is not None
        assert abs(got - exact) <= QUANTILE_TOLERANCE * exact


def test_sample_memory_is_bounded_by_the_ring() -> None:
    series = SampleSeries([3, 60])
    for i in range(ADDS):
        assert series.add(1000 + i % 3, 1000.0 + i % 3, float(i % 5))
    assert len(series._samples) == len(series._total) == len(series._changes) == 60
    assert series.view(60).samples == ADDS
    assert series.view(60).total == sum(float(i % 5) for i in range(ADDS))
    assert len(series.dump()["rows"]) == 3


def test_compaction_keeps_one_entry_per_slot_and_splits_counts_beyond_32_bits() -> None:
    # Entries are `slot << 32 | count`; a count that does not fit takes two entries.
    mask = (1 << 32) - 1
    raw = [(3 << 32) | 7, (900 << 32) | mask, (3 << 32) | 1, (900 << 32) | 5]
    pairs = sorted((e >> 32, e & mask) for e in compacted(vec[i64](raw)))
    assert pairs == [(3, 8), (900, 5), (900, mask)]


def test_a_bucket_count_beyond_32_bits_survives_a_snapshot() -> None:
    series = RequestSeries([5], track_latency=True)
    series.load({"head": 10, "rows": [[9, 1, 0, 0, [[400, 2**33 + 5]]], [10, 1, 0, 0, []]]})
    view = series.view(5)
    assert view.latencies == 2**33 + 5
    assert series.dump()["rows"][0] == [9, 1, 0, 0, [[400, 2**33 + 5]]]
    series.advance(14)  # bucket 9 leaves the window: every entry is subtracted
    assert view.latencies == 0
    assert view.quantile(0.5) is None
