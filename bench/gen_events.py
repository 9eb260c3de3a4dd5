"""A seeded benchmark workload: an engine spec with many rollouts and the event stream they see.

Rules:
* Deterministic: the same (rollouts, seed, rate) always gives the same spec and the same bytes.
* Streaming: events come in chunks of JSON lines, so a run of any length holds one chunk.
* Realistic shape: both cohorts, mostly single `request` events, batched `requests` events,
  latencies on some of them, a few gauges, a few late events, time advancing at `rate`
  events per simulated second so bucket boundaries tick. 2% of the rollouts have a bad
  canary (1% errors, 1% slow) and roll back, and 0.5% see gauge spikes and pause, so the
  run also decides things.

Run: .venv/bin/python bench/gen_events.py --events 1000000 --out /tmp/events.jsonl
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from rolloutd.core.spec import Baseline, EngineSpec, RolloutSpec, StepSpec, TriggerSpec

GENERATOR_VERSION = 1  # bump when the bytes change, so cached files are regenerated
T0 = 1763719200.0
WINDOW = 300.0  # the request triggers' window: 5 minutes

STEPS = (StepSpec(1, 15.0), StepSpec(5, 15.0), StepSpec(25, 15.0), StepSpec(100))
ERROR_RATE = TriggerSpec(
    name="error-rate",
    metric="error_rate",
    op=">",
    window=WINDOW,
    threshold=0.01,
    baseline=Baseline("control", 2.0),
    for_=10.0,
    min_samples=100,
    after_completion=True,
)
LATENCY_P99 = TriggerSpec(
    name="latency-p99",
    metric="latency_p99",
    op=">",
    window=WINDOW,
    threshold=250.0,
    baseline=Baseline("control", 1.5),
    for_=30.0,
    min_samples=100,
)
QUEUE_DEPTH = TriggerSpec(
    name="queue-depth",
    metric="gauge:queue_depth",
    op=">",
    window=60.0,
    threshold=1000.0,
    action="pause",
    severity="warning",
)


def rollout_name(index: int) -> str:
    return f"svc-{index:04d}"


def tracks_latency(index: int) -> bool:
    """Half the rollouts carry a latency trigger (so both their cohorts keep histograms)."""
    return index % 2 == 0


def has_gauge(index: int) -> bool:
    return index % 50 == 0


def build_spec(rollouts: int) -> EngineSpec:
    """Every rollout guards its error rate against control; half also p99; 2% a gauge."""
    specs = []
    for index in range(rollouts):
        triggers = [ERROR_RATE]
        if tracks_latency(index):
            triggers.append(LATENCY_P99)
        if has_gauge(index):
            triggers.append(QUEUE_DEPTH)
        name = rollout_name(index)
        specs.append(RolloutSpec(name, f"flag-{name}", STEPS, tuple(triggers), bake=30.0))
    return EngineSpec(rollouts=tuple(specs))


@dataclass(frozen=True, slots=True)
class Workload:
    rollouts: int = 1000
    seed: int = 1
    rate: float = 20_000.0  # events per simulated second

    def spec(self) -> EngineSpec:
        return build_spec(self.rollouts)

    def seconds(self, events: int) -> float:
        return events / self.rate


class EventStream:
    """The events of a workload, in order, as JSON lines (no newline)."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._rng = random.Random(workload.seed)
        self._names = [rollout_name(i) for i in range(workload.rollouts)]
        self._gauged = [i for i in range(workload.rollouts) if has_gauge(i)]
        self._encode = msgspec.json.Encoder().encode
        self._index = 0

    def chunks(self, events: int, size: int = 10_000) -> Iterator[list[bytes]]:
        """`events` more events, `size` at a time."""
        left = events
        while left > 0:
            n = min(size, left)
            yield [self._encode(self._next()) for _ in range(n)]
            left -= n

    def _next(self) -> dict[str, object]:
        rng = self._rng
        ts = T0 + self._index / self.workload.rate
        self._index += 1
        if rng.random() < 0.002:  # a little late, but well inside every window
            ts -= rng.uniform(1.0, 5.0)
        roll = rng.random()
        if roll < 0.01 and self._gauged:
            return self._gauge(ts, rng.choice(self._gauged))
        index = rng.randrange(len(self._names))
        cohort = "canary" if rng.random() < 0.5 else "control"
        if roll < 0.72:
            return self._request(ts, index, cohort)
        return self._requests(ts, index, cohort)

    def _request(self, ts: float, index: int, cohort: str) -> dict[str, object]:
        rng = self._rng
        event: dict[str, object] = {
            "ts": round(ts, 4),
            "type": "request",
            "rollout": self._names[index],
            "cohort": cohort,
            "ok": rng.random() >= _error_rate(index, cohort),
        }
        if rng.random() < 0.6:
            event["latency_ms"] = self._latency(index, cohort)
        return event

    def _requests(self, ts: float, index: int, cohort: str) -> dict[str, object]:
        rng = self._rng
        count = rng.randrange(1, 200)
        errors = min(count, int(count * _error_rate(index, cohort) + rng.random()))
        event: dict[str, object] = {
            "ts": round(ts, 4),
            "type": "requests",
            "rollout": self._names[index],
            "cohort": cohort,
            "count": count,
            "errors": errors,
        }
        if rng.random() < 0.5:
            samples = min(count, rng.randrange(5, 11))
            event["latency_ms"] = [self._latency(index, cohort) for _ in range(samples)]
        return event

    def _gauge(self, ts: float, index: int) -> dict[str, object]:
        rng = self._rng
        spike = index % 200 == 0 and rng.random() < 0.05
        value = rng.uniform(1000.0, 2000.0) if spike else rng.uniform(100.0, 500.0)
        return {
            "ts": round(ts, 4),
            "type": "gauge",
            "rollout": self._names[index],
            "cohort": "canary",
            "name": "queue_depth",
            "value": round(value, 1),
        }

    def _latency(self, index: int, cohort: str) -> float:
        slow = 3.0 if cohort == "canary" and index % 100 == 74 else 1.0
        return round(slow * self._rng.lognormvariate(_LOG_MEDIAN_MS, 0.5), 1)


_LOG_MEDIAN_MS = math.log(80.0)


def _error_rate(index: int, cohort: str) -> float:
    """0.3% everywhere, except the canaries of about 1% of the rollouts (8%)."""
    return 0.08 if cohort == "canary" and index % 100 == 37 else 0.003


def write_events(path: Path, workload: Workload, events: int) -> None:
    tmp = path.with_suffix(".part")
    with tmp.open("wb") as out:
        for chunk in EventStream(workload).chunks(events):
            out.write(b"\n".join(chunk))
            out.write(b"\n")
    tmp.replace(path)


def cached_events(workload: Workload, events: int) -> Path:
    """A JSON-lines file of the workload's first `events` events, generated once per machine."""
    folder = Path(tempfile.gettempdir()) / "rolloutd-bench"
    folder.mkdir(exist_ok=True)
    name = (
        f"events-v{GENERATOR_VERSION}-n{events}-r{workload.rollouts}"
        f"-s{workload.seed}-rate{workload.rate:g}.jsonl"
    )
    path = folder / name
    if not path.exists():
        write_events(path, workload, events)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20_000.0, help="events per simulated second")
    parser.add_argument("--out", type=Path, help="output file (default: stdout)")
    args = parser.parse_args()
    workload = Workload(args.rollouts, args.seed, args.rate)
    if args.out is not None:
        write_events(args.out, workload, args.events)
        return 0
    for chunk in EventStream(workload).chunks(args.events):
        sys.stdout.buffer.write(b"\n".join(chunk) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
