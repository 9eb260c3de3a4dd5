"""The reference's judges: plain bookkeeping over core/judge.py's statistics.

A judge keeps every request it took, with the bucket it was taken in and the canary's share
then, and at each reading feeds fresh tests (whose formulas have their known answers in
test_judge.py) with the buckets closed by then, a batch per bucket and share. No running
state, no open batch, nothing compiled: the engine's `JudgeRuntime` must show the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rolloutd.core.decisions import Evidence
from rolloutd.core.events import Request, Requests
from rolloutd.core.judge import CountTest, GridCountTest, MeanTest, SampleRatioTest
from rolloutd.core.spec import TriggerSpec


@dataclass
class Taken:
    """Requests a judge took: in engine bucket `bucket`, while the canary's share was rho."""

    bucket: int
    rho: float
    arm: int  # 0 the canary's cohort, 1 the control's
    count: int
    errors: int
    latencies: tuple[float, ...]


@dataclass
class Tests:
    """A judge's statistics fed with everything taken in buckets closed by the reading."""

    counts: CountTest | GridCountTest | None
    mean: MeanTest | None
    srm: SampleRatioTest | None
    requests: list[int]
    share: float  # the share of the last batch (the Dirichlet test's)


def welford(values: list[float]) -> tuple[int, float, float]:
    """Count, mean and sum of squared deviations, one value at a time in arrival order."""
    n, mean, m2 = 0, 0.0, 0.0
    for value in values:
        n += 1
        delta = value - mean
        mean += delta / n
        m2 += delta * (value - mean)
    return n, mean, m2


def finite(value: float) -> float:
    return value if math.isfinite(value) else 1e300


class RefJudge:
    """One judge trigger's requests since the rollout's start (or retry)."""

    def __init__(self, spec: TriggerSpec) -> None:
        assert spec.judge is not None
        assert spec.judge.srm_of is None
        self.spec = spec
        self.judge = spec.judge
        self.taken: list[Taken] = []
        self.counted_keys: list[tuple[int, str]] = []  # (event bucket, key) of counted errors

    def reset(self) -> None:
        self.taken, self.counted_keys = [], []

    def take(self, event: Request | Requests, rho: float, bucket: int, event_bucket: int) -> None:
        judge = self.judge
        arm = {self.spec.cohort: 0, judge.against: 1}.get(event.cohort, -1)
        if isinstance(event, Request):
            count, errors, key = 1, 0 if event.ok else 1, event.key
            latencies: tuple[float, ...] = () if event.latency_ms is None else (event.latency_ms,)
        else:
            count, errors, key, latencies = event.count, event.errors, None, event.latency_ms
        if arm < 0 or count <= 0 or not 0.0 < rho < 1.0:
            return  # another cohort, nothing, or no split (0% or 100%)
        if errors and key is not None and judge.per_key:
            # One error per key per bucket; one from a bucket older than a counted one is
            # not counted either.
            newest = max((b for b, _ in self.counted_keys), default=-1)
            first = event_bucket >= newest and (event_bucket, key) not in self.counted_keys
            if first:
                self.counted_keys.append((event_bucket, key))
            errors = 1 if first else 0
        self.taken.append(Taken(bucket, rho, arm, count, errors, latencies))

    def batches(self, head: int) -> list[list[Taken]]:
        """What buckets before `head` took, a batch per run of one bucket and one share."""
        out: list[list[Taken]] = []
        for item in self.taken:
            if item.bucket >= head:
                continue  # its bucket is still open: the tests see it once it closed
            last = out[-1][-1] if out else None
            if last is not None and (last.bucket, last.rho) == (item.bucket, item.rho):
                out[-1].append(item)
            else:
                out.append([item])
        return out

    def tests(self, head: int) -> Tests:
        judge = self.judge
        dirichlet = judge.mixture == "dirichlet"
        counts: CountTest | GridCountTest | None = None
        mean: MeanTest | None = None
        if judge.test == "counts":
            counts = CountTest(judge.concentration) if dirichlet else GridCountTest()
        else:
            mean = MeanTest(judge.tau)
        srm = SampleRatioTest() if judge.srm_alpha is not None else None
        tests = Tests(counts, mean, srm, [0, 0], -1.0)
        for batch in self.batches(head):
            rho = batch[0].rho
            requests = [sum(t.count for t in batch if t.arm == arm) for arm in (0, 1)]
            errors = [sum(t.errors for t in batch if t.arm == arm) for arm in (0, 1)]
            if isinstance(counts, CountTest) and rho != tests.share:
                counts.reset()  # the fixed-share test starts again at each new share
            tests.share = rho
            tests.requests = [tests.requests[0] + requests[0], tests.requests[1] + requests[1]]
            if srm is not None:
                srm.observe_both(rho, requests[0], requests[1])
            if counts is not None:
                counts.observe_both(rho, errors[0], errors[1])
                continue
            assert mean is not None
            for arm in (0, 1):  # read once, after both arms
                if judge.test == "proportion":
                    availability = self.spec.metric == "availability"
                    ones = requests[arm] - errors[arm] if availability else errors[arm]
                    mean.observe_counts(arm, ones, requests[arm], arm == 1)
                else:
                    lats = [v for t in batch if t.arm == arm for v in t.latencies]
                    n, avg, m2 = welford(lats)
                    mean.observe_summary(arm, n, avg, m2, arm == 1)
        return tests

    def read(self, head: int, srm_check: bool) -> tuple[float, float, int, bool | None]:
        """(value, bound, samples, verdict) of the judge or of its sample-ratio check."""
        tests = self.tests(head)
        judge, canary, control = self.judge, tests.requests[0], tests.requests[1]
        least = self.spec.min_samples
        mismatch = tests.srm is not None and tests.srm.mismatch(judge.srm_alpha or 0.0)
        if srm_check:
            assert tests.srm is not None
            assert judge.srm_alpha is not None
            samples = canary + control
            verdict = None if samples < least else mismatch
            return math.exp(min(tests.srm.log_e, 700.0)), 1.0 / judge.srm_alpha, samples, verdict
        if tests.counts is not None:
            log_e = tests.counts.log_e
            if isinstance(tests.counts, CountTest):
                worse = tests.counts.worse(judge.alpha, tests.share)
            else:
                worse = tests.counts.worse(judge.alpha)
        else:
            assert tests.mean is not None
            log_e = tests.mean.log_lambda
            direction = -1 if self.spec.metric == "availability" else 1
            worse = tests.mean.worse(judge.alpha, direction)
        trusted = canary >= least and control >= least and not mismatch
        return math.exp(min(log_e, 700.0)), 1.0 / judge.alpha, canary, worse if trusted else None

    def evidence(self, head: int, srm_check: bool) -> Evidence:
        tests, judge = self.tests(head), self.judge
        samples = {self.spec.cohort: tests.requests[0], judge.against: tests.requests[1]}
        if srm_check:
            srm, srm_alpha = tests.srm, judge.srm_alpha
            assert srm is not None
            assert srm_alpha is not None
            low, high = srm.bounds(srm_alpha)
            e_value = finite(math.exp(min(srm.log_e, 700.0)))
            return Evidence(
                test="srm",
                alpha=srm_alpha,
                e_value=e_value,
                p_value=srm.p_value,
                estimate=srm.estimate(),
                lower=low,
                upper=high,
                samples=samples,
            )
        counts = tests.counts
        if counts is not None:
            estimate: float | None = None
            lower: float | None = None
            upper: float | None = None
            if isinstance(counts, GridCountTest):  # the Dirichlet test estimates nothing
                estimate, (lower, upper) = counts.estimate(), counts.bounds(judge.alpha)
            return Evidence(
                test="counts",
                alpha=judge.alpha,
                e_value=finite(counts.e_value),
                p_value=counts.p_value,
                estimate=estimate,
                lower=lower,
                upper=upper,
                samples=samples,
                errors={self.spec.cohort: counts.errors[0], judge.against: counts.errors[1]},
            )
        mean = tests.mean
        assert mean is not None
        low_m, high_m = mean.interval(judge.alpha)
        return Evidence(
            test=judge.test,
            alpha=judge.alpha,
            e_value=finite(math.exp(min(mean.log_lambda, 700.0))),
            p_value=mean.p_value,
            estimate=mean.difference(),
            lower=None if math.isinf(low_m) else low_m,
            upper=None if math.isinf(high_m) else high_m,
            samples=samples,
        )
