"""A judge trigger's runtime: the sequential tests of `judge.py` fed by one rollout's events.

Rules:
* One `JudgeRuntime` per judge trigger, fed every request event of its two cohorts (the
  trigger's `cohort`, arm 0, and `against`, arm 1) by the engine, whatever the windows keep.
  It is cumulative from the rollout's start (or retry): `reset` starts it again, with the
  trigger states; windows do not apply to it.
* The canary's planned share `rho` is the rollout's percent / 100 when the event is taken:
  under "no difference" an error comes from the canary with probability rho. At 0% or 100%
  there is no split, and the judge takes nothing.
* A bucket at a time: events are taken as they come (`take`, O(1)) into the open bucket's
  batch, and the tests see the batch when the bucket closes (`flush`, at the engine's bucket
  boundary). A batch knows its bucket, so a flush takes only closed buckets' batches, however
  often the route slides (after a restore the first slide is unconditional). The guarantee
  needs the order of errors to be random under "no difference", and within a bucket it is
  not: batches and partitions arrive by cohort, so a reading after the canary's batch and
  before control's would peek. A whole bucket is exchangeable
  (each test's product over it does not depend on the order), so reading at its end keeps
  the guarantee; the judge decides at most one bucket after the evidence.
* Tests: `counts` observes errors (the grid mixture by default, which keeps its evidence
  across ramp steps; `dirichlet` is the fixed-share Beta mixture, restarted at each change
  of share, since its guarantee holds for one share only); `proportion` the error share per
  request, `mean` the request latencies (mixture SPRT, `tau` in the metric's units).
* Direction: "worse" is more errors, a higher error rate or a higher mean latency on the
  canary's side; for availability a lower one (the proportion of OK requests, so that the
  estimate and its bounds are in availability's units).
* The sample-ratio check (`srm_alpha`) tests the requests' split against rho. While it shows
  a mismatch the judge's verdict is not trusted: the judge reads insufficient data, and the
  check itself is a trigger of its own (`<name>:srm`, alert by default), which blocks the
  gate while firing.
* `per_key`: a request that carries a `key` counts at most one error per key per bucket
  (one unit emitting thousands of errors would otherwise break the Poisson model).
* Compiled with the engine (mypyc, engine_build.COMPILED_MODULES): typed attributes and
  `__slots__`, no `Any` outside dump/load, `Final` constants; the same source runs
  interpreted under ROLLOUTD_PURE=1 and decides the same.
* A reading is (value, bound, samples, verdict): value the e-value (or Lambda), bound
  1/alpha, samples the canary's requests; verdict None while either cohort has fewer than
  `min_samples` requests or the split is broken, else whether the canary is worse.
"""

from __future__ import annotations

import math
from typing import Any, Final

from rolloutd.core.decisions import Evidence
from rolloutd.core.judge import CountTest, GridCountTest, KeyedErrors, MeanTest, SampleRatioTest
from rolloutd.core.spec import JudgeSpec, TriggerSpec

COUNTS: Final = 0
PROPORTION: Final = 1
MEAN: Final = 2
_TESTS: Final = {"counts": COUNTS, "proportion": PROPORTION, "mean": MEAN}


class JudgeRuntime:
    """The tests of one judge trigger and what they have seen."""

    __slots__ = (
        "alpha",
        "batch",
        "canary",
        "control",
        "counts",
        "direction",
        "dirichlet",
        "keyed",
        "mean",
        "min_samples",
        "requests",
        "rho",
        "spec",
        "spilled",
        "srm",
        "srm_alpha",
        "test",
    )

    def __init__(self, trig: TriggerSpec) -> None:
        judge = trig.judge
        assert judge is not None
        self.spec: JudgeSpec = judge
        self.canary = trig.cohort
        self.control = judge.against
        self.alpha = judge.alpha
        self.min_samples = trig.min_samples
        self.test = _TESTS[judge.test]
        self.direction = -1 if trig.metric == "availability" else 1
        self.dirichlet = judge.mixture == "dirichlet"
        self.counts: CountTest | GridCountTest | None = None
        self.mean: MeanTest | None = None
        if self.test == COUNTS:
            self.counts = CountTest(judge.concentration) if self.dirichlet else GridCountTest()
        else:
            self.mean = MeanTest(judge.tau)
        self.srm = SampleRatioTest() if judge.srm_alpha is not None else None
        self.srm_alpha = judge.srm_alpha if judge.srm_alpha is not None else 0.0
        self.keyed = KeyedErrors() if judge.per_key else None
        self.requests = [0, 0]
        self.rho = -1.0  # the share the Dirichlet test was started at
        self.batch = Batch(-1.0, -1)  # the open bucket's events at one share
        self.spilled: list[Batch] = []  # the open bucket's events at earlier shares

    def arm(self, cohort: str) -> int:
        """0 for the canary's cohort, 1 for the control's, -1 for any other."""
        if cohort == self.canary:
            return 0
        if cohort == self.control:
            return 1
        return -1

    def take(
        self,
        arm: int,
        count: int,
        errors: int,
        latencies: tuple[float, ...],
        rho: float,
        key: str | None = None,
        bucket: int = 0,
        at: int = 0,
    ) -> None:
        """`count` requests of `arm` with `errors` errors, while the canary's share is rho,
        into the batch of bucket `at` (the engine's, now; `bucket` is the event's)."""
        if count <= 0 or not 0.0 < rho < 1.0:
            return
        batch = self.batch
        if rho != batch.rho:  # one batch per share; the flush at each slide ends a bucket
            if batch.taken:
                self.spilled.append(batch)
            batch = self.batch = Batch(rho, at)
        if errors and key is not None and self.keyed is not None:
            errors = 1 if self.keyed.first(key, bucket) else 0
        batch.taken = True
        batch.requests[arm] += count
        batch.errors[arm] += errors
        if self.test == MEAN:
            for value in latencies:
                batch.add_latency(arm, value)

    def flush(self, head: int) -> None:
        """The batches of buckets before `head` into the tests, in the order taken (takes
        come at the engine's bucket, which never goes back: the closed ones lead)."""
        open_batches: list[Batch] = []
        for batch in (*self.spilled, self.batch):
            if not batch.taken:
                continue
            if batch.bucket < head:
                self._observe(batch)
            else:
                open_batches.append(batch)
        if open_batches:
            self.batch = open_batches.pop()
            self.spilled = open_batches
        else:
            self.batch = Batch(-1.0, -1)
            self.spilled = []

    def _observe(self, batch: Batch) -> None:
        rho = batch.rho
        if self.dirichlet and rho != self.rho:
            assert isinstance(self.counts, CountTest)
            self.counts.reset()  # its guarantee holds for one share only
            self.rho = rho
        requests, errors = batch.requests, batch.errors
        self.requests[0] += requests[0]
        self.requests[1] += requests[1]
        if self.srm is not None:
            self.srm.observe_both(rho, requests[0], requests[1])
        if self.counts is not None:
            self.counts.observe_both(rho, errors[0], errors[1])
            return
        mean = self.mean
        assert mean is not None
        for arm in (0, 1):  # read once, after both arms
            count, last = requests[arm], arm == 1
            if self.test == PROPORTION:
                ones = count - errors[arm] if self.direction < 0 else errors[arm]  # avail.: OKs
                mean.observe_counts(arm, ones, count, last)
            else:
                n, avg, m2 = batch.n[arm], batch.mean[arm], batch.m2[arm]
                mean.observe_summary(arm, n, avg, m2, last)

    def mismatch(self) -> bool:
        """The sample-ratio check sees a split that is not the planned one."""
        return self.srm is not None and self.srm.mismatch(self.srm_alpha)

    def srm_reading(self) -> tuple[float, float, int, bool | None]:
        srm = self.srm
        assert srm is not None
        samples = self.requests[0] + self.requests[1]
        value = math.exp(min(srm.log_e, 700.0))
        verdict = None if samples < self.min_samples else srm.mismatch(self.srm_alpha)
        return value, 1.0 / self.srm_alpha, samples, verdict

    def reading(self) -> tuple[float, float, int, bool | None]:
        value = math.exp(min(self._log_e(), 700.0))
        canary, control = self.requests
        if canary < self.min_samples or control < self.min_samples or self.mismatch():
            return value, 1.0 / self.alpha, canary, None
        return value, 1.0 / self.alpha, canary, self._worse()

    def _log_e(self) -> float:
        if self.counts is not None:
            return self.counts.log_e
        assert self.mean is not None
        return self.mean.log_lambda

    def _worse(self) -> bool:
        counts = self.counts
        if counts is not None:
            if isinstance(counts, CountTest):
                return counts.worse(self.alpha, self.rho)
            return counts.worse(self.alpha)
        assert self.mean is not None
        return self.mean.worse(self.alpha, self.direction)

    def evidence(self, srm: bool = False) -> Evidence:
        """What a decision shows of the judge (or, `srm`, of its sample-ratio check)."""
        samples = {self.canary: self.requests[0], self.control: self.requests[1]}
        if srm:
            check = self.srm
            assert check is not None
            low, high = check.bounds(self.srm_alpha)
            return Evidence(
                test="srm",
                alpha=self.srm_alpha,
                e_value=_finite(math.exp(min(check.log_e, 700.0))),
                p_value=check.p_value,
                estimate=check.estimate(),
                lower=low,
                upper=high,
                samples=samples,
            )
        counts = self.counts
        if counts is not None:
            if isinstance(counts, GridCountTest):
                estimate: float | None = counts.estimate()
                low_b, high_b = counts.bounds(self.alpha)
                lower: float | None = low_b
                upper: float | None = high_b
            else:
                estimate, lower, upper = None, None, None
            return Evidence(
                test="counts",
                alpha=self.alpha,
                e_value=_finite(counts.e_value),
                p_value=counts.p_value,
                estimate=estimate,
                lower=lower,
                upper=upper,
                samples=samples,
                errors={self.canary: counts.errors[0], self.control: counts.errors[1]},
            )
        mean = self.mean
        assert mean is not None
        low_m, high_m = mean.interval(self.alpha)
        return Evidence(
            test=self.spec.test,
            alpha=self.alpha,
            e_value=_finite(math.exp(min(mean.log_lambda, 700.0))),
            p_value=mean.p_value,
            estimate=mean.difference(),
            lower=None if math.isinf(low_m) else low_m,
            upper=None if math.isinf(high_m) else high_m,
            samples=samples,
        )

    def reset(self) -> None:
        if self.counts is not None:
            self.counts.reset()
        if self.mean is not None:
            self.mean.reset()
        if self.srm is not None:
            self.srm.reset()
        if self.keyed is not None:
            self.keyed.reset()
        self.requests = [0, 0]
        self.rho = -1.0
        self.batch = Batch(-1.0, -1)
        self.spilled = []

    def dump(self) -> list[Any]:
        return [
            self.requests,
            self.rho,
            self.counts.dump() if self.counts is not None else None,
            self.mean.dump() if self.mean is not None else None,
            self.srm.dump() if self.srm is not None else None,
            self.keyed.dump() if self.keyed is not None else None,
            [b.dump() for b in (*self.spilled, self.batch) if b.taken],
        ]

    def load(self, data: list[Any]) -> None:
        requests, rho, counts, mean, srm, keyed, *rest = data  # rest: the open bucket
        self.requests = [int(requests[0]), int(requests[1])]
        self.rho = float(rho)
        if counts is not None and self.counts is not None:
            self.counts.load(counts)
        if mean is not None and self.mean is not None:
            self.mean.load(mean)
        if srm is not None and self.srm is not None:
            self.srm.load(srm)
        if keyed is not None and self.keyed is not None:
            self.keyed.load(keyed)
        batches = [Batch.load(b) for b in rest[0]] if rest else []
        self.batch = batches.pop() if batches else Batch(-1.0, -1)
        self.spilled = batches


class Batch:
    """What one bucket brought at one share: requests and errors per arm, and the
    latencies' count, mean and sum of squared deviations (Welford) for the mean test."""

    __slots__ = ("bucket", "errors", "m2", "mean", "n", "requests", "rho", "taken")

    def __init__(self, rho: float, bucket: int) -> None:
        self.rho = rho
        self.bucket = bucket  # the engine's bucket when taken; -1: unknown (closed at once)
        self.taken = False
        self.requests = [0, 0]
        self.errors = [0, 0]
        self.n = [0, 0]
        self.mean = [0.0, 0.0]
        self.m2 = [0.0, 0.0]

    def add_latency(self, arm: int, value: float) -> None:
        n = self.n[arm] + 1
        delta = value - self.mean[arm]
        self.mean[arm] += delta / n
        self.m2[arm] += delta * (value - self.mean[arm])
        self.n[arm] = n

    def dump(self) -> list[Any]:
        return [self.rho, self.requests, self.errors, self.n, self.mean, self.m2, self.bucket]

    @classmethod
    def load(cls, data: list[Any]) -> Batch:
        rho, requests, errors, n, mean, m2, *rest = data  # rest: the bucket (absent before)
        batch = cls(float(rho), int(rest[0]) if rest else -1)
        batch.taken = True
        batch.requests = [int(x) for x in requests]
        batch.errors = [int(x) for x in errors]
        batch.n = [int(x) for x in n]
        batch.mean = [float(x) for x in mean]
        batch.m2 = [float(x) for x in m2]
        return batch


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 1e300
