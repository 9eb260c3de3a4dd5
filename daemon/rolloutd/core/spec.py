"""What the engine is asked to do: plain frozen values built from a validated config.

Rules: the core never sees YAML or pydantic. `rolloutd.config` validates a file and turns it
into these specs; tests and benchmarks may build them directly. Durations are seconds, times
are unix seconds, and a time zone is a tzinfo the edge has already resolved.
"""

from __future__ import annotations

from dataclasses import dataclass

from rolloutd.core.breaker import BreakerSpec
from rolloutd.core.schedule import CronWindow

COMPARISON_OPS = (">", ">=", "<", "<=")
PRESENCE_OPS = ("unchanged", "absent")
REQUEST_METRICS = (
    "error_rate",
    "availability",
    "request_rate",
    "latency_p50",
    "latency_p90",
    "latency_p95",
    "latency_p99",
)
# What a judge compares between canary and control (`JudgeSpec`); latency_mean only there.
JUDGE_METRICS = ("error_rate", "availability", "latency_mean")
JUDGE_TESTS = ("counts", "proportion", "mean")
ACTIONS = ("rollback", "pause", "alert")
SEVERITIES = ("critical", "warning", "info")


@dataclass(frozen=True, slots=True)
class Baseline:
    """Relative bound: `factor` x the same metric, same window, in another cohort."""

    cohort: str
    factor: float


@dataclass(frozen=True, slots=True)
class JudgeSpec:
    """A sequential test of canary against control instead of a bound (core/judging.py).

    `test`: counts (errors, anytime-valid Poisson test), proportion or mean (mixture SPRT).
    `srm_of`: set on the sample-ratio check that a judge trigger with `srm_alpha` brings
    along, naming that trigger; the check reads the judge's exposure counts."""

    test: str = "counts"
    against: str = "control"
    alpha: float = 0.05
    mixture: str = "grid"  # counts: grid (keeps evidence across steps) | dirichlet
    concentration: float = 100.0  # dirichlet: k
    tau: float = 0.01  # proportion / mean: the mixing standard deviation
    per_key: bool = False  # counts: at most one error per key per bucket
    srm_alpha: float | None = None
    srm_of: str | None = None


@dataclass(frozen=True, slots=True)
class TriggerSpec:
    name: str
    metric: str  # one of REQUEST_METRICS, or "gauge:<name>" / "counter:<name>"
    op: str  # one of COMPARISON_OPS or PRESENCE_OPS
    window: float
    cohort: str = "canary"
    threshold: float | None = None
    baseline: Baseline | None = None
    for_: float = 0.0
    min_samples: int = 0
    action: str = "rollback"
    severity: str = "critical"
    # Keep this trigger armed after the rollout completed (guarding at 100% for good).
    after_completion: bool = False
    judge: JudgeSpec | None = None

    @property
    def metric_kind(self) -> str:
        """ "request", "gauge" or "counter"."""
        head, sep, _ = self.metric.partition(":")
        return head if sep else "request"

    @property
    def metric_name(self) -> str:
        """The gauge or counter name, or the request metric itself."""
        _, sep, tail = self.metric.partition(":")
        return tail if sep else self.metric


@dataclass(frozen=True, slots=True)
class StepSpec:
    percent: float
    hold: float = 0.0


@dataclass(frozen=True, slots=True)
class RolloutSpec:
    name: str
    flag: str
    steps: tuple[StepSpec, ...]
    triggers: tuple[TriggerSpec, ...] = ()
    start: str = "immediately"  # "immediately" | "manual"
    bake: float = 0.0
    # An immediately-rollout starts at the first evaluation point at or after this time.
    start_at: float | None = None
    # Steps advance (hold elapsed) only inside this window; everything else acts at any time.
    advance_window: CronWindow | None = None


@dataclass(frozen=True, slots=True)
class EngineSpec:
    rollouts: tuple[RolloutSpec, ...] = ()
    breakers: tuple[BreakerSpec, ...] = ()
    bucket: float = 1.0  # bucket resolution in seconds; every window is a whole number of buckets
