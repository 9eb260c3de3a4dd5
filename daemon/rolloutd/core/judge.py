"""Sequential statistical judge: is the canary worse than control, decided per event.

Rules:
* Pure math: no I/O, no clock, standard library `math` only. State is O(1) per cohort
  (GridCountTest: O(grid)), every evidence value is kept in log space, and every class has
  `dump()` (JSON-able list), `load(data)` and `reset()`.
* Always valid: each statistic is an e-process (a nonnegative supermartingale of mean <= 1
  under "no difference"), so P(ever E >= 1/alpha) <= alpha however often it is read
  (Ville's inequality). `p_value` is min over time of 1/E, non-increasing.
* CountTest (Lindon & Malek, NeurIPS 2022, "Anytime-valid inference for multinomial count
  data"): under "no difference" each error comes from the canary with probability rho, the
  canary's planned share of requests. Beta mixture of concentration k centred on rho; per
  error from arm i (rho_0 = rho, rho_1 = 1 - rho):
  E <- E * ((k rho_i + c_i) / (k + N)) / rho_i, then c_i += 1, N += 1.
  A batch of n errors from one arm uses the lgamma closed form of n single updates. The
  formula assumes a fixed rho: when rho changes the test keeps multiplying with the new rho
  and the counts so far, which is NOT valid across ramp steps; use GridCountTest there.
* GridCountTest: mixture over the log rate ratio delta on a fixed grid (weights w_j). With
  p_tj = rho_t e^delta_j / (rho_t e^delta_j + 1 - rho_t), an error from the canary has
  LR_j = p_tj / rho_t, from control LR_j = (1 - p_tj) / (1 - rho_t); E = sum_j w_j prod LR_j.
  rho may change between observations (a predictable share keeps it valid across steps).
  Confidence set: the candidate deltas (grid and 0) whose own test
  E(delta_i) = sum_j w_j prod LR_j / LR_i stays < 1/alpha, i.e. the test inverted at each
  delta (an always-valid confidence sequence); `bounds` returns its hull as rate ratios.
* MeanTest (Johari, Pekelis, Walsh, "Always Valid Inference"): mixture SPRT for
  d = mean_canary - mean_control with V = s0^2/n0 + s1^2/n1 (population variances, so 0/1
  values give p(1-p)/n) and mixing variance tau^2:
  Lambda = sqrt(V/(V+tau^2)) exp(tau^2 d^2 / (2 V (V+tau^2))). V = 0 is no evidence.
  Its p-value is a running minimum updated on each observe, valid when read after every
  update. tau is given by the caller in the metric's units: about the smallest effect worth
  catching (for an error rate of 1%, tau = 0.005 to 0.01).
* Overdispersion: one key emitting many errors breaks the Poisson model; KeyedErrors counts
  at most one error per key per bucket, keeping only the current bucket's keys.
* Compiled with the engine (mypyc, engine_build.COMPILED_MODULES): typed attributes and
  `__slots__`, no `Any` outside dump/load, `Final` constants; the same source runs
  interpreted under ROLLOUTD_PURE=1 and decides the same.
* Batches: within a batch from one arm at one rho the log-evidence path is convex in the
  number of updates, so its maximum is at an end point and `max_log_e` stays exact.
"""

from __future__ import annotations

import math
from typing import Any, Final

_INF: Final = math.inf


def _log_threshold(alpha: float) -> float:
    return -math.log(alpha)


class _Counted:
    """What both count tests show: the log e-value, its running maximum, the counts."""

    __slots__ = ("_c0", "_c1", "_log_e", "_max_log_e")

    def __init__(self) -> None:
        self._c0 = 0
        self._c1 = 0
        self._log_e = 0.0
        self._max_log_e = 0.0

    @property
    def log_e(self) -> float:
        return self._log_e

    @property
    def e_value(self) -> float:
        return math.exp(min(self._log_e, 700.0))

    @property
    def max_log_e(self) -> float:
        return self._max_log_e

    @property
    def errors(self) -> tuple[int, int]:
        return (self._c0, self._c1)

    @property
    def p_value(self) -> float:
        return min(1.0, math.exp(-self._max_log_e))

    def share(self) -> float:
        """The canary's share of errors (0.0 with none)."""
        total = self._c0 + self._c1
        return self._c0 / total if total else 0.0


class CountTest(_Counted):
    """Dirichlet-multinomial (Beta mixture) test for two arms: 0 = canary, 1 = control."""

    __slots__ = ("_k",)

    def __init__(self, k: float = 100.0) -> None:
        if k <= 0:
            raise ValueError("k must be > 0")
        super().__init__()
        self._k = k

    def reset(self) -> None:
        self._c0 = self._c1 = 0
        self._log_e = self._max_log_e = 0.0

    def observe(self, arm: int, rho: float, n: int = 1) -> None:
        """Record `n` errors from `arm` while the canary's planned share is `rho`."""
        if n <= 0:
            return
        rho_i = rho if arm == 0 else 1.0 - rho
        c = self._c0 if arm == 0 else self._c1
        total = self._c0 + self._c1
        a = self._k * rho_i + c
        if n == 1:
            step = math.log(a / ((self._k + total) * rho_i))
        else:
            step = (
                math.lgamma(a + n)
                - math.lgamma(a)
                - math.lgamma(self._k + total + n)
                + math.lgamma(self._k + total)
                - n * math.log(rho_i)
            )
        self._log_e += step
        if arm == 0:
            self._c0 += n
        else:
            self._c1 += n
        if self._log_e > self._max_log_e:
            self._max_log_e = self._log_e

    def observe_both(self, rho: float, n0: int, n1: int) -> None:
        """A batch of `n0` canary and `n1` control errors at one share, read at its end only
        (the product over a batch does not depend on its order)."""
        top = self._max_log_e
        if n0 > 0:
            self.observe(0, rho, n0)
        if n1 > 0:
            self.observe(1, rho, n1)
        self._max_log_e = max(top, self._log_e)

    def worse(self, alpha: float, rho: float) -> bool:
        return self._log_e >= _log_threshold(alpha) and self.share() > rho

    def dump(self) -> list[Any]:
        return [self._k, self._c0, self._c1, self._log_e, self._max_log_e]

    def load(self, data: list[Any]) -> None:
        k, c0, c1, log_e, max_log_e = data
        self._k = float(k)
        self._c0, self._c1 = int(c0), int(c1)
        self._log_e, self._max_log_e = float(log_e), float(max_log_e)


DEFAULT_GRID: Final = tuple(
    s * math.log(r) for r in (1.1, 1.25, 1.5, 2.0, 3.0, 5.0) for s in (-1.0, 1.0)
)


class GridCountTest(_Counted):
    """Mixture over the log rate ratio on a fixed grid; keeps its evidence across ramp steps."""

    __slots__ = ("_expected0", "_grid", "_log_w", "_loglik", "_rho", "_step0", "_step1")

    def __init__(
        self, grid: tuple[float, ...] = DEFAULT_GRID, weights: tuple[float, ...] | None = None
    ) -> None:
        if not grid:
            raise ValueError("grid must not be empty")
        w = weights if weights is not None else tuple(1.0 for _ in grid)
        if len(w) != len(grid) or min(w) <= 0:
            raise ValueError("weights: one positive weight per grid point")
        total = math.fsum(w)
        super().__init__()
        self._grid = tuple(grid)
        self._log_w = [math.log(x / total) for x in w]
        self._rho = -1.0
        self._step0: list[float] = []
        self._step1: list[float] = []
        self.reset()

    def reset(self) -> None:
        self._c0 = self._c1 = 0
        self._expected0 = 0.0
        # log prod LR_j per grid point (without its weight): the log-likelihood ratio vs 0.
        self._loglik = [0.0 for _ in self._grid]
        self._log_e = self._max_log_e = 0.0

    def _set_rho(self, rho: float) -> None:
        # Per-rho constants, cached while rho is unchanged.
        self._rho = rho
        self._step0 = []
        self._step1 = []
        for d in self._grid:
            p = rho * math.exp(d) / (rho * math.exp(d) + 1.0 - rho)
            self._step0.append(math.log(p / rho))
            self._step1.append(math.log((1.0 - p) / (1.0 - rho)))

    def observe(self, arm: int, rho: float, n: int = 1) -> None:
        """Record `n` events from `arm` while the canary's planned share is `rho`."""
        if n > 0:
            self.observe_both(rho, n if arm == 0 else 0, n if arm == 1 else 0)

    def observe_both(self, rho: float, n0: int, n1: int) -> None:
        """A batch of `n0` canary and `n1` control events at one share, read at its end
        only (the product over a batch does not depend on its order)."""
        if n0 <= 0 and n1 <= 0:
            return
        if rho != self._rho:
            self._set_rho(rho)
        loglik = self._loglik
        step0, step1, log_w = self._step0, self._step1, self._log_w
        top = -_INF
        for j in range(len(loglik)):
            a = loglik[j] + n0 * step0[j] + n1 * step1[j]
            loglik[j] = a
            if a + log_w[j] > top:
                top = a + log_w[j]
        total = 0.0
        for j in range(len(loglik)):
            total += math.exp(loglik[j] + log_w[j] - top)
        self._log_e = top + math.log(total)
        self._c0 += n0
        self._c1 += n1
        self._expected0 += (n0 + n1) * rho
        if self._log_e > self._max_log_e:
            self._max_log_e = self._log_e

    def expected_canary(self) -> float:
        """Canary events expected under "no difference": the sum of rho over events."""
        return self._expected0

    def worse(self, alpha: float) -> bool:
        """E >= 1/alpha and more canary events than the planned shares predict."""
        return self._log_e >= _log_threshold(alpha) and self._c0 > self._expected0

    def estimate(self) -> float:
        """The rate ratio exp(posterior mean of delta) under the grid prior."""
        post = [w + a for w, a in zip(self._log_w, self._loglik, strict=True)]
        top = max(post)
        num = den = 0.0
        for d, lp in zip(self._grid, post, strict=True):
            x = math.exp(lp - top)
            num += x * d
            den += x
        return math.exp(num / den)

    def bounds(self, alpha: float) -> tuple[float, float]:
        """Hull of the always-valid confidence set for the rate ratio (see module rules)."""
        limit = _log_threshold(alpha)
        kept = [0.0] if self._log_e < limit else []
        kept += [
            d for d, a in zip(self._grid, self._loglik, strict=True) if self._log_e - a < limit
        ]
        return (math.exp(min(kept)), math.exp(max(kept)))

    def dump(self) -> list[Any]:
        return [
            list(self._grid),
            self._log_w,
            self._c0,
            self._c1,
            self._expected0,
            self._loglik,
            self._log_e,
            self._max_log_e,
        ]

    def load(self, data: list[Any]) -> None:
        grid, log_w, c0, c1, expected0, loglik, log_e, max_log_e = data
        self._grid = tuple(float(x) for x in grid)
        self._log_w = [float(x) for x in log_w]
        self._c0, self._c1 = int(c0), int(c1)
        self._expected0 = float(expected0)
        self._loglik = [float(x) for x in loglik]
        self._log_e, self._max_log_e = float(log_e), float(max_log_e)
        self._rho = -1.0


SRM_GRID: Final = tuple(
    s * math.log(r) for r in (1.02, 1.05, 1.1, 1.25, 1.5, 2.0) for s in (-1.0, 1.0)
)


class SampleRatioTest(GridCountTest):
    """The grid test on exposure counts (requests or users) against the planned share."""

    __slots__ = ()

    def __init__(
        self, grid: tuple[float, ...] = SRM_GRID, weights: tuple[float, ...] | None = None
    ) -> None:
        super().__init__(grid, weights)

    def mismatch(self, alpha: float) -> bool:
        """The split differs from the planned share, in either direction."""
        return self._log_e >= _log_threshold(alpha)


class MeanTest:
    """Mixture SPRT for a difference in means or proportions, canary (0) minus control (1)."""

    __slots__ = ("_log_lambda", "_m2", "_max_log_lambda", "_mean", "_n", "_tau2")

    def __init__(self, tau: float) -> None:
        if tau <= 0:
            raise ValueError("tau must be > 0")
        self._tau2 = tau * tau
        self._n = [0, 0]
        self._mean = [0.0, 0.0]
        self._m2 = [0.0, 0.0]
        self._log_lambda = self._max_log_lambda = 0.0

    def reset(self) -> None:
        self._n = [0, 0]
        self._mean = [0.0, 0.0]
        self._m2 = [0.0, 0.0]
        self._log_lambda = self._max_log_lambda = 0.0

    def observe(self, arm: int, value: float, n: int = 1) -> None:
        """Record `n` observations of `value` from `arm`."""
        self._merge(arm, n, value, 0.0)

    def observe_counts(self, arm: int, successes: int, n: int, read: bool = True) -> None:
        """Record `n` 0/1 observations of which `successes` are 1 (for proportions).
        `read=False`: the batch goes on (the other arm's part follows), so this point is
        not one the p-value may be read at."""
        if n > 0:
            mean = successes / n
            self._merge(arm, n, mean, successes * (1.0 - mean), read)

    def observe_summary(self, arm: int, n: int, mean: float, m2: float, read: bool = True) -> None:
        """Record `n` observations of `arm` given as their mean and sum of squared
        deviations from it (what a batch summarised with Welford's update holds)."""
        self._merge(arm, n, mean, m2, read)

    def _merge(self, arm: int, n: int, mean: float, m2: float, read: bool = True) -> None:
        # Chan et al.'s pairwise combination of (count, mean, sum of squared deviations).
        if n > 0:
            n_a = self._n[arm]
            total = n_a + n
            delta = mean - self._mean[arm]
            self._mean[arm] += delta * n / total
            self._m2[arm] += m2 + delta * delta * n_a * n / total
            self._n[arm] = total
        if not read:
            return  # read where the batch ends (a batch that went on may end with n = 0)
        self._log_lambda = self._compute()
        if self._log_lambda > self._max_log_lambda:
            self._max_log_lambda = self._log_lambda

    def variance(self) -> float:
        """V = s0^2/n0 + s1^2/n1 (0.0 until both arms have observations)."""
        n0, n1 = self._n
        if n0 == 0 or n1 == 0:
            return 0.0
        return max(0.0, self._m2[0]) / (n0 * n0) + max(0.0, self._m2[1]) / (n1 * n1)

    def _compute(self) -> float:
        v = self.variance()
        if v <= 0.0:
            return 0.0
        d = self.difference()
        t2 = self._tau2
        return 0.5 * math.log(v / (v + t2)) + t2 * d * d / (2.0 * v * (v + t2))

    def difference(self) -> float:
        return self._mean[0] - self._mean[1]

    @property
    def samples(self) -> tuple[int, int]:
        return (self._n[0], self._n[1])

    @property
    def log_lambda(self) -> float:
        return self._log_lambda

    @property
    def max_log_lambda(self) -> float:
        return self._max_log_lambda

    @property
    def p_value(self) -> float:
        return min(1.0, math.exp(-self._max_log_lambda))

    def interval(self, alpha: float) -> tuple[float, float]:
        """The confidence sequence for d at the current sample (unbounded while V = 0)."""
        v = self.variance()
        if v <= 0.0:
            return (-_INF, _INF)
        t2 = self._tau2
        half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) - 2.0 * math.log(alpha)))
        d = self.difference()
        return (d - half, d + half)

    def worse(self, alpha: float, direction: int) -> bool:
        """Lambda >= 1/alpha with d on the bad side: +1 higher is worse, -1 lower is worse."""
        return self._log_lambda >= _log_threshold(alpha) and self.difference() * direction > 0

    def dump(self) -> list[Any]:
        return [self._tau2, self._n, self._mean, self._m2, self._log_lambda, self._max_log_lambda]

    def load(self, data: list[Any]) -> None:
        tau2, n, mean, m2, log_lambda, max_log_lambda = data
        self._tau2 = float(tau2)
        self._n = [int(x) for x in n]
        self._mean = [float(x) for x in mean]
        self._m2 = [float(x) for x in m2]
        self._log_lambda, self._max_log_lambda = float(log_lambda), float(max_log_lambda)


class KeyedErrors:
    """At most one error per key per bucket; memory is the keys of the current bucket."""

    __slots__ = ("_bucket", "_keys")

    def __init__(self) -> None:
        self._bucket = -1
        self._keys: set[str] = set()

    def reset(self) -> None:
        self._bucket = -1
        self._keys = set()

    def first(self, key: str, bucket: int) -> bool:
        """True for the key's first error in `bucket`; an earlier bucket's error is not counted."""
        if bucket > self._bucket:
            self._bucket = bucket
            self._keys = set()
        elif bucket < self._bucket or key in self._keys:
            return False
        self._keys.add(key)
        return True

    def dump(self) -> list[Any]:
        return [self._bucket, sorted(self._keys)]

    def load(self, data: list[Any]) -> None:
        bucket, keys = data
        self._bucket = int(bucket)
        self._keys = {str(k) for k in keys}
