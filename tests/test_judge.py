"""The statistical judge (`rolloutd.core.judge`): known answers and invariants.

Known answers are worked by hand in each test's docstring; the invariants are checked with
hypothesis over random error histories.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolloutd.core.judge import (
    CountTest,
    GridCountTest,
    KeyedErrors,
    MeanTest,
    SampleRatioTest,
)

arms = st.lists(st.integers(0, 1), max_size=60)
shares = st.floats(0.01, 0.99)


def test_count_test_by_hand() -> None:
    """k = 2, rho = 0.5 (a0 = a1 = 1).

    canary: (1 + 0) / (2 + 0) / 0.5 = 1;  canary: (1 + 1) / 3 / 0.5 = 4/3;
    control: (1 + 0) / 4 / 0.5 = 1/2, so E = 4/3 * 1/2 = 2/3 and max E = 4/3.
    """
    test = CountTest(k=2.0)
    test.observe(0, 0.5)
    assert test.e_value == pytest.approx(1.0)
    test.observe(0, 0.5)
    assert test.e_value == pytest.approx(4 / 3)
    test.observe(1, 0.5)
    assert test.e_value == pytest.approx(2 / 3)
    assert test.p_value == pytest.approx(3 / 4)
    assert test.errors == (2, 1)
    assert test.share() == pytest.approx(2 / 3)


def test_count_test_small_share_by_hand() -> None:
    """k = 1, rho = 0.25: canary (0.25 / 1) / 0.25 = 1, canary (1.25 / 2) / 0.25 = 2.5."""
    test = CountTest(k=1.0)
    test.observe(0, 0.25, n=2)
    assert test.e_value == pytest.approx(2.5)
    assert test.worse(0.5, 0.25)
    assert not test.worse(0.1, 0.25)


def _beta_ratio(k: float, rho: float, c0: int, c1: int) -> float:
    a0, a1 = k * rho, k * (1 - rho)
    log_b = (
        math.lgamma(a0 + c0)
        + math.lgamma(a1 + c1)
        - math.lgamma(a0 + a1 + c0 + c1)
        - math.lgamma(a0)
        - math.lgamma(a1)
        + math.lgamma(a0 + a1)
    )
    return log_b - c0 * math.log(rho) - c1 * math.log(1 - rho)


@given(arms, shares, st.floats(0.1, 200.0))
def test_count_test_is_the_beta_function_ratio(history: list[int], rho: float, k: float) -> None:
    """E = B(a0 + c0, a1 + c1) / B(a0, a1) / (rho^c0 (1 - rho)^c1), whatever the order."""
    test = CountTest(k)
    for arm in history:
        test.observe(arm, rho)
    c0, c1 = test.errors
    assert test.log_e == pytest.approx(_beta_ratio(k, rho, c0, c1), abs=1e-9)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(1, 20)), max_size=20), shares)
def test_count_test_batch_equals_single_updates(batches: list[tuple[int, int]], rho: float) -> None:
    batched, single = CountTest(5.0), CountTest(5.0)
    for arm, n in batches:
        batched.observe(arm, rho, n)
        for _ in range(n):
            single.observe(arm, rho)
    assert batched.log_e == pytest.approx(single.log_e, abs=1e-8)
    assert batched.max_log_e == pytest.approx(single.max_log_e, abs=1e-8)


def test_no_errors_is_no_evidence() -> None:
    for test in (CountTest(), GridCountTest(), SampleRatioTest()):
        assert test.e_value == 1.0
        assert test.p_value == 1.0
        assert test.share() == 0.0
    mean = MeanTest(tau=0.01)
    mean.observe_counts(0, 0, 1000)
    mean.observe_counts(1, 0, 1000)
    assert mean.log_lambda == 0.0
    assert mean.interval(0.05) == (-math.inf, math.inf)


@given(arms, shares)
def test_grid_with_delta_zero_is_identically_one(history: list[int], rho: float) -> None:
    test = GridCountTest(grid=(0.0,))
    for arm in history:
        test.observe(arm, rho)
        assert test.log_e == pytest.approx(0.0, abs=1e-12)


def test_grid_single_point_by_hand() -> None:
    """delta = log 2 at rho = 0.5: p = 2/3; canary LR = 4/3, control LR = 2/3.

    Two canary errors and one control error: 4/3 * 4/3 * 2/3 = 32/27.
    """
    test = GridCountTest(grid=(math.log(2.0),))
    for arm in (0, 0, 1):
        test.observe(arm, 0.5)
    assert test.e_value == pytest.approx(32 / 27)


def test_grid_mixture_by_hand_across_a_ramp() -> None:
    """Grid {log 2, -log 2}, weights 1/2 each; one canary error at rho = 0.2, one at 0.5.

    At rho = 0.2: p(+) = 0.2 * 2 / (0.4 + 0.8) = 1/3, LR = 5/3; p(-) = 0.1/0.9 = 1/9,
    LR = 5/9. At rho = 0.5: LR(+) = 4/3, LR(-) = (1/3)/(1/2) = 2/3.
    E = (5/3 * 4/3 + 5/9 * 2/3) / 2 = (20/9 + 10/27) / 2 = 35/27.
    """
    test = GridCountTest(grid=(math.log(2.0), -math.log(2.0)))
    test.observe(0, 0.2)
    test.observe(0, 0.5)
    assert test.e_value == pytest.approx(35 / 27)
    assert test.expected_canary() == pytest.approx(0.7)
    assert test.worse(0.8)  # log(35/27) = 0.26 >= -log(0.8) = 0.22, 2 canary > 0.7
    assert not test.worse(0.05)


@given(st.lists(st.tuples(st.integers(0, 1), shares, st.integers(1, 5)), max_size=40))
def test_p_value_never_increases_and_dump_round_trips(
    events: list[tuple[int, float, int]],
) -> None:
    tests: tuple[CountTest | GridCountTest, ...] = (CountTest(), GridCountTest(), SampleRatioTest())
    last = [1.0, 1.0, 1.0]
    for arm, rho, n in events:
        for i, test in enumerate(tests):
            test.observe(arm, rho, n)
            assert test.p_value <= last[i]
            last[i] = test.p_value
    for test in tests:
        copy = type(test)()
        copy.load(json.loads(json.dumps(test.dump())))
        assert copy.dump() == test.dump()
        copy.observe(0, 0.3)
        test.observe(0, 0.3)
        assert copy.log_e == pytest.approx(test.log_e)


def test_grid_detects_and_brackets_a_doubling() -> None:
    """A canary at twice control's rate at share 1/3 sends half the errors."""
    test = GridCountTest()
    for _ in range(400):
        test.observe(0, 1 / 3)
        test.observe(1, 1 / 3)
    assert test.worse(0.05)
    assert test.estimate() == pytest.approx(2.0, rel=0.15)
    low, high = test.bounds(0.05)
    assert low <= 2.0 <= high
    assert low > 1.0


def test_grid_bounds_contain_the_estimate_and_shrink() -> None:
    """Under no difference (errors in the planned 1:3 ratio) the set narrows with n."""
    test = GridCountTest()
    widths = []
    for n in (40, 400, 4000):
        test.reset()
        for _ in range(n // 4):
            test.observe(0, 0.25)
            test.observe(1, 0.25, 3)
        low, high = test.bounds(0.05)
        assert low <= test.estimate() <= high
        widths.append(math.log(high) - math.log(low))
    assert widths[0] > widths[1] > widths[2]


def test_mean_test_by_hand() -> None:
    """Canary {1, 3}: mean 2, variance 1; control {0, 0}: variance 0; n = 2 each, tau = 1.

    V = 1/2, d = 2: log Lambda = 0.5 log(0.5/1.5) + 1 * 4 / (2 * 0.5 * 1.5) = -log(3)/2 + 8/3.
    Interval at alpha = 0.05: 2 ± sqrt(0.5 * 1.5 / 1 * (log 3 - 2 log 0.05)).
    """
    test = MeanTest(tau=1.0)
    test.observe(0, 1.0)
    test.observe(0, 3.0)
    test.observe(1, 0.0, n=2)
    assert test.difference() == pytest.approx(2.0)
    assert test.variance() == pytest.approx(0.5)
    assert test.log_lambda == pytest.approx(-0.5 * math.log(3) + 8 / 3)
    half = math.sqrt(0.75 * (math.log(3) - 2 * math.log(0.05)))
    low, high = test.interval(0.05)
    assert low == pytest.approx(2 - half)
    assert high == pytest.approx(2 + half)
    assert test.worse(0.2, 1)  # log Lambda = 2.12 >= -log(0.2) = 1.61
    assert not test.worse(0.2, -1)
    assert not test.worse(0.1, 1)  # 2.12 < -log(0.1) = 2.30
    assert test.samples == (2, 2)


def test_mean_test_proportions_by_hand() -> None:
    """Canary 2 of 10 (p = 0.2, p(1-p)/n = 0.016), control 1 of 10 (0.009): V = 0.025."""
    test = MeanTest(tau=0.1)
    test.observe_counts(0, 2, 10)
    test.observe_counts(1, 1, 10)
    assert test.variance() == pytest.approx(0.025)
    assert test.difference() == pytest.approx(0.1)
    t2, v = 0.01, 0.025
    expected = 0.5 * math.log(v / (v + t2)) + t2 * 0.01 / (2 * v * (v + t2))
    assert test.log_lambda == pytest.approx(expected)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), max_size=80))
def test_mean_test_counts_equal_single_values(values: list[tuple[int, int]]) -> None:
    counts, single = MeanTest(0.1), MeanTest(0.1)
    last = 1.0
    for arm, value in values:
        counts.observe_counts(arm, value, 1)
        single.observe(arm, float(value))
        assert single.p_value <= last
        last = single.p_value
    assert counts.log_lambda == pytest.approx(single.log_lambda, abs=1e-9)
    copy = MeanTest(1.0)
    copy.load(json.loads(json.dumps(single.dump())))
    assert copy.dump() == single.dump()


def test_mean_interval_width_shrinks_like_sqrt_log_n_over_n() -> None:
    """Same 2% vs 1% rates at n and 16n: the width ratio is near 1/4 (times a log factor)."""
    widths = []
    for n in (1000, 16000):
        test = MeanTest(0.01)
        test.observe_counts(0, n // 50, n)
        test.observe_counts(1, n // 100, n)
        low, high = test.interval(0.05)
        assert low <= test.difference() <= high
        widths.append(high - low)
    assert 0.2 < widths[1] / widths[0] < 0.4


def test_sample_ratio_mismatch_both_ways() -> None:
    for canary in (600, 400):
        test = SampleRatioTest()
        test.observe(0, 0.5, canary)
        test.observe(1, 0.5, 1000 - canary)
        assert test.mismatch(0.05)
    fair = SampleRatioTest()
    for _ in range(500):
        fair.observe(0, 0.5)
        fair.observe(1, 0.5)
    assert not fair.mismatch(0.05)


def test_keyed_errors_count_one_per_key_per_bucket() -> None:
    keyed = KeyedErrors()
    assert keyed.first("u1", 5)
    assert not keyed.first("u1", 5)
    assert keyed.first("u2", 5)
    assert keyed.first("u1", 6)
    assert not keyed.first("u2", 5)  # an earlier bucket: its keys are gone, not counted
    copy = KeyedErrors()
    copy.load(json.loads(json.dumps(keyed.dump())))
    assert not copy.first("u1", 6)
    assert copy.first("u2", 6)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="k must"):
        CountTest(0.0)
    with pytest.raises(ValueError, match="tau must"):
        MeanTest(0.0)
    with pytest.raises(ValueError, match="weights"):
        GridCountTest(grid=(0.1, 0.2), weights=(1.0,))


# -- a batch read at its end ----------------------------------------------------------------


def test_a_batch_is_read_at_its_end_only() -> None:
    # The canary's part of a bucket first would peek: the evidence after it is not a point
    # the p-value may be read at. Both halves together give the same e-value as one by one.
    for make in (CountTest, GridCountTest):
        batched, single = make(), make()
        batched.observe_both(0.1, 3, 0)
        batched.observe_both(0.1, 0, 30)
        peeked = batched.max_log_e
        single.observe_both(0.1, 3, 30)
        assert single.log_e == pytest.approx(batched.log_e)
        assert single.max_log_e < peeked  # the peek after the canary's 3 errors was higher
        assert single.max_log_e == max(0.0, single.log_e)


def test_the_mean_test_reads_once_per_batch() -> None:
    test = MeanTest(tau=0.01)
    test.observe_counts(0, 30, 100, read=False)
    assert test.log_lambda == 0.0  # not read yet
    test.observe_counts(1, 0, 100)
    read = test.log_lambda
    assert read > 0.0
    assert test.max_log_lambda == read
