"""Simulated traffic for demos, scenario tests and benchmarks.

Simulated users are split between cohorts with `in_rollout()`, exactly as an application
reading the flag would split them, so the canary's share of traffic follows the percent the
engine decides. Each second, each cohort reports one pre-aggregated `requests` event with a
sample of latencies. A seeded random generator makes every run the same.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rolloutd.bucketing import in_rollout
from rolloutd.core.engine import Engine
from rolloutd.core.events import Rejection, decode_one
from rolloutd.core.spec import EngineSpec


@dataclass(frozen=True, slots=True)
class Health:
    """How a cohort behaves at one moment."""

    error_rate: float = 0.002
    latency_ms: float = 80.0  # median; latencies are log-normal around it


# (cohort, seconds since start) -> health
HealthModel = Callable[[str, float], Health]


def steady(_cohort: str, _t: float) -> Health:
    return Health()


@dataclass
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
        events: list[dict[str, Any]] = []
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


def closed_loop(
    spec: EngineSpec,
    simulators: list[TrafficSimulator],
    start: float,
    seconds: int,
) -> Iterator[dict[str, Any]]:
    """Events of `seconds` of traffic, each second split by the percent decided so far.

    The engine runs alongside the traffic so the canary grows as the rollout advances, the
    way real traffic would follow a real flag.
    """
    engine = Engine(spec)
    for i in range(seconds):
        ts = start + i
        engine.advance(ts)
        for sim in simulators:
            percent = engine.rollout(sim.rollout).percent
            for fields in sim.second(ts, float(i), percent):
                decoded = decode_one(json.dumps(fields))
                assert not isinstance(decoded, Rejection), decoded
                engine.handle(decoded)
                yield fields


def incident_health(spike_at: float) -> HealthModel:
    """Healthy on both sides until `spike_at`; then the canary fails 6% of requests."""

    def health(cohort: str, t: float) -> Health:
        if cohort == "canary" and t >= spike_at:
            return Health(error_rate=0.06, latency_ms=95.0)
        return Health()

    return health


INCIDENT_START = 1_763_719_200.0  # 2025-11-21T10:00:00Z


def incident_events(spec: EngineSpec) -> Iterator[dict[str, Any]]:
    """The bundled demo: checkout-v2 walks 5% -> 25% -> 50%, then the canary spikes."""
    sim = TrafficSimulator(
        rollout="checkout-v2",
        flag="new_checkout",
        rate=200,
        latency_samples=10,
        health=incident_health(spike_at=330.0),
    )
    return closed_loop(spec, [sim], INCIDENT_START, 420)


def regression_health(ratio: float) -> HealthModel:
    """Control fails 1% of requests; the canary `ratio` times as many, from the start."""

    def health(cohort: str, _t: float) -> Health:
        return Health(error_rate=0.01 * ratio if cohort == "canary" else 0.01)

    return health


def judge_events(spec: EngineSpec) -> Iterator[dict[str, Any]]:
    """The judge's scenario: checkout-v2 at 5% with twice control's error rate (2% against
    1%), 200 requests a second, ten minutes."""
    sim = TrafficSimulator(
        rollout="checkout-v2",
        flag="new_checkout",
        rate=200,
        latency_samples=5,
        health=regression_health(2.0),
        seed=4,
    )
    return closed_loop(spec, [sim], INCIDENT_START, 600)


SCENARIOS = {"checkout-incident": incident_events, "checkout-judge": judge_events}


def main() -> None:
    """Regenerate a bundled scenario:
    `python -m rolloutd.tools.simulate CONFIG OUT [checkout-incident|checkout-judge]`."""
    from rolloutd.config import load_config

    config_path, out_path = sys.argv[1], sys.argv[2]
    scenario = SCENARIOS[sys.argv[3] if len(sys.argv) > 3 else "checkout-incident"]
    spec = load_config(config_path).to_spec()
    with open(out_path, "w", encoding="utf-8") as out:
        for fields in scenario(spec):
            out.write(json.dumps(fields, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
