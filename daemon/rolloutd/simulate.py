"""Simulated traffic for demos, scenario tests and benchmarks.

Simulated users are split between cohorts with `in_rollout()`, exactly as an application
reading the flag would split them, so the canary's share of traffic follows the percent the
engine decides. Each second, each cohort reports one pre-aggregated `requests` event with a
sample of latencies. A seeded random generator makes every run the same.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rolloutd.bucketing import in_rollout


@dataclass(frozen=True, slots=True)
class Health:
    """How a cohort behaves at one moment."""

    error_rate: float = 0.002
    latency_ms: float = 80.0  # median; latencies are log-normal around it


# (cohort, seconds since start) -> health
HealthModel = Callable[[str, float], Health]


def steady(_cohort: str, _t: float) -> Health:
    return Health()


@dataclass(slots=True)
class TrafficSimulator:
    rollout: str
    flag: str
    rate: int = 200  # requests per second, all cohorts together
    latency_samples: int = 20  # latencies reported per batch
    health: HealthModel = steady
    seed: int = 7

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._user = 0

    def second(self, ts: float, t: float, percent: float) -> list[dict[str, Any]]:
        """The events of one second of traffic starting at `ts` (`t` seconds in)."""
        rng = self._rng
        split = {"canary": 0, "control": 0}
        for _ in range(self.rate):
            key = f"user-{rng.randrange(1_000_000)}"
            split["canary" if in_rollout(self.flag, key, percent) else "control"] += 1
        events = []
        for cohort, count in split.items():
            if count == 0:
                continue
            health = self.health(cohort, t)
            errors = sum(1 for _ in range(count) if rng.random() < health.error_rate)
            samples = min(count, self.latency_samples)
            latencies = [
                round(health.latency_ms * rng.lognormvariate(0.0, 0.35), 1) for _ in range(samples)
            ]
            events.append(
                {
                    "ts": round(ts + 0.5 + 0.01 * len(events), 3),
                    "type": "requests",
                    "rollout": self.rollout,
                    "cohort": cohort,
                    "count": count,
                    "errors": errors,
                    "latency_ms": latencies,
                }
            )
        return events
