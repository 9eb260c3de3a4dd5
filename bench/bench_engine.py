"""Engine throughput: decode + engine over a generated event file, next to decode alone.

Three loops over the same JSON lines, in one process:
* decode only: the typed msgspec decoder and nothing else (the floor: bench_decode's
  `decode_only_rate`, best of 3 passes);
* decode + engine: the daemon's intake loop (`rolloutd.core.intake.take`, compiled with the
  engine): the typed decoder, then `Engine.handle` at the event's time, per payload, with
  the daemon's guard (the future-timestamp check, a skip on an exception);
* engine only: `Engine.handle` over events decoded beforehand.
Every engine run starts from a fresh engine. The floor is timed on each chunk of lines just
before the engine takes that chunk, so a ratio compares the two on the same bytes at the same
moment: on a shared machine the absolute rates drift by up to 2x, the ratios much less. The
run with the best engine rate is shown, with its own floor. Target: decode + engine
>= 500k events/s on one core, and >= 25% of the decode-only rate.

Run: .venv/bin/python bench/bench_engine.py [--events N] [--rollouts N] [--seed S] [--quick]
     .venv/bin/python bench/bench_engine.py --breakdown     (engine only, per kind of trigger)
     .venv/bin/python bench/bench_engine.py --judges        (half the rollouts also judged)
     .venv/bin/python bench/bench_engine.py --profile cprofile|pyinstrument
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench_decode import decode_only_rate
from gen_events import (
    ERROR_RATE,
    LATENCY_P99,
    QUEUE_DEPTH,
    Workload,
    cached_events,
    has_gauge,
    tracks_latency,
)
from rolloutd.app import gc_tuning
from rolloutd.core.decisions import Decision
from rolloutd.core.engine import Engine
from rolloutd.core.events import Event, Rejection, decode_one
from rolloutd.core.intake import take
from rolloutd.core.spec import EngineSpec, JudgeSpec, TriggerSpec

TARGET_RATE = 500_000.0
TARGET_RATIO = 0.25
CHUNK = 20_000  # lines per paired slice (decode-only, then engine)
MAX_BYTES = 1 << 20  # the daemon's default payload limit


@dataclass(slots=True)
class Run:
    rate: float  # events per second through the loop under test
    floor: float  # decode-only events per second over the same chunks
    decisions: list[Decision] = field(default_factory=list)
    phases: Counter[str] = field(default_factory=Counter)

    @property
    def ratio(self) -> float:
        return self.rate / self.floor


def _pipeline(engine: Engine, lines: Sequence[bytes], made: list[Decision]) -> float:
    # The daemon's guarded loop: nothing is later than it allows here, so every event is
    # checked and taken.
    start = time.perf_counter()
    taken = take(engine, lines, None, MAX_BYTES, float("inf"))
    elapsed = time.perf_counter() - start
    if taken.rejected or taken.failed:
        raise AssertionError(f"the generator wrote an invalid event: {taken.rejected[:1]}")
    made.extend(taken.decisions())
    return elapsed


def _engine_only(engine: Engine, events: Sequence[Event], made: list[Decision]) -> float:
    start = time.perf_counter()
    for event in events:
        out = engine.handle(event)
        if out:
            made.extend(out)
    return time.perf_counter() - start


def run(spec: EngineSpec, lines: Sequence[bytes], events: Sequence[Event] | None = None) -> Run:
    """One pass with a fresh engine: decode + engine, or engine only when `events` is given.

    Each chunk is first timed through the decode-only floor, then through the engine.
    """
    engine = Engine(spec)
    made: list[Decision] = []
    floor_s = engine_s = 0.0
    gc.collect()
    gc_tuning.tune()  # as `rolloutd replay` and the daemon do
    for start in range(0, len(lines), CHUNK):
        part = list(lines[start : start + CHUNK])
        floor_s += len(part) / decode_only_rate(part)
        if events is None:
            engine_s += _pipeline(engine, part, made)
        else:
            engine_s += _engine_only(engine, events[start : start + CHUNK], made)
    phases = Counter(r.phase for r in engine.rollouts)
    return Run(len(lines) / engine_s, len(lines) / floor_s, made, phases)


def best(runs: list[Run]) -> Run:
    counts = {len(r.decisions) for r in runs}
    if len(counts) != 1:
        raise AssertionError(f"runs disagree on the number of decisions: {counts}")
    return max(runs, key=lambda r: r.rate)


def decode_all(lines: Sequence[bytes]) -> list[Event]:
    events = []
    for line in lines:
        event = decode_one(line)
        assert not isinstance(event, Rejection)
        events.append(event)
    return events


def load_lines(workload: Workload, events: int, path: Path | None) -> list[bytes]:
    if path is None:
        path = cached_events(workload, events)
    return path.read_bytes().splitlines()[:events]


def describe(workload: Workload, n: int) -> str:
    rollouts = workload.rollouts
    latency = sum(1 for i in range(rollouts) if tracks_latency(i))
    gauges = sum(1 for i in range(rollouts) if has_gauge(i))
    return (
        f"workload: {n:,} events, {rollouts} rollouts ({latency} with a p99 trigger, {gauges} "
        f"with a gauge trigger), {workload.rate:,.0f} events per simulated s "
        f"({workload.seconds(n):,.0f} s simulated), seed {workload.seed}"
    )


def _row(label: str, rate: float, ratio: str) -> None:
    print(f"{label:<30}{rate:>12,.0f}{1e6 / rate:>10.2f}{ratio:>16}")


def report(pipeline: list[Run], engine_only: list[Run]) -> bool:
    shown, alone = best(pipeline), best(engine_only)
    print(f"{'loop':<30}{'events/s':>12}{'us/event':>10}{'vs decode-only':>16}")
    _row("decode only (floor)", shown.floor, "100.0%")
    _row("decode + engine", shown.rate, f"{shown.ratio:.1%}")
    _row("engine only (pre-decoded)", alone.rate, f"{alone.ratio:.1%}")
    spread = ", ".join(f"{r.ratio:.1%}" for r in pipeline)
    print(f"decode + engine vs decode-only, every run: {spread}")
    kinds = Counter(d.kind for d in shown.decisions)
    listed = ", ".join(f"{k} {v}" for k, v in kinds.items())
    print(f"decisions: {len(shown.decisions)} ({listed})")
    print(f"phases at the end: {', '.join(f'{k} {v}' for k, v in sorted(shown.phases.items()))}")
    met = shown.rate >= TARGET_RATE and shown.ratio >= TARGET_RATIO
    print(
        f"target decode + engine >= {TARGET_RATE:,.0f}/s and >= {TARGET_RATIO:.0%} of decode-only: "
        f"{'MET' if met else 'NOT MET'} ({shown.rate:,.0f}/s, {shown.ratio:.1%})"
    )
    return met


def without(spec: EngineSpec, drop: set[str]) -> EngineSpec:
    """The spec with the named triggers taken out of every rollout."""
    rollouts = tuple(
        replace(r, triggers=tuple(t for t in r.triggers if t.name not in drop))
        for r in spec.rollouts
    )
    return replace(spec, rollouts=rollouts)


JUDGE = TriggerSpec(
    name="worse",
    metric="error_rate",
    op=">=",
    window=1.0,
    min_samples=100,
    judge=JudgeSpec(srm_alpha=0.001),
)
JUDGE_SRM = replace(
    JUDGE, name="worse:srm", action="alert", judge=JudgeSpec(srm_alpha=0.001, srm_of="worse")
)


def with_judges(spec: EngineSpec) -> EngineSpec:
    """Every other rollout also carries a judge (grid counts) and its sample-ratio check."""
    rollouts = tuple(
        replace(r, triggers=(*r.triggers, JUDGE, JUDGE_SRM)) if i % 2 else r
        for i, r in enumerate(spec.rollouts)
    )
    return replace(spec, rollouts=rollouts)


def judges(spec: EngineSpec, lines: Sequence[bytes], repeat: int) -> None:
    """Decode + engine with and without judges, alternating, each against its own floor."""
    judged = with_judges(spec)
    plain_runs, judged_runs = [], []
    for _ in range(repeat):
        plain_runs.append(run(spec, lines))
        judged_runs.append(run(judged, lines))
    plain, with_j = best(plain_runs), best(judged_runs)
    print(f"\n{'decode + engine':<30}{'events/s':>12}{'us/event':>10}{'vs decode-only':>16}")
    _row("without judges", plain.rate, f"{plain.ratio:.1%}")
    _row("half the rollouts judged", with_j.rate, f"{with_j.ratio:.1%}")
    pairs = zip(plain_runs, judged_runs, strict=True)
    spread = ", ".join(f"{a.ratio:.1%} / {b.ratio:.1%}" for a, b in pairs)
    print(f"without / with judges vs decode-only, every run: {spread}")
    kept = with_j.ratio / plain.ratio
    fired = Counter(
        getattr(d, "trigger", "") for d in with_j.decisions if getattr(d, "state", "") == "firing"
    )
    print(f"decisions with judges: {len(with_j.decisions)}; firing by trigger: {dict(fired)}")
    print(
        f"target: judges cost <= 1/3 of the engine's throughput (kept >= 66.7%): "
        f"{'MET' if kept >= 2 / 3 else 'NOT MET'} (kept {kept:.1%})"
    )


def breakdown(
    spec: EngineSpec, lines: Sequence[bytes], events: Sequence[Event], repeat: int
) -> None:
    """Engine-only rates as kinds of trigger are added: where the per-event time goes."""
    variants: tuple[tuple[str, set[str]], ...] = (
        ("no triggers (routing only)", {ERROR_RATE.name, LATENCY_P99.name, QUEUE_DEPTH.name}),
        ("error-rate only", {LATENCY_P99.name, QUEUE_DEPTH.name}),
        ("error-rate + gauge", {LATENCY_P99.name}),
        ("error-rate + gauge + p99 (all)", set()),
    )
    print(f"{'engine only, triggers':<32}{'events/s':>12}{'us/event':>10}{'vs decode-only':>16}")
    for label, drop in variants:
        shown = best([run(without(spec, drop), lines, events) for _ in range(repeat)])
        print(f"{label:<32}{shown.rate:>12,.0f}{1e6 / shown.rate:>10.2f}{shown.ratio:>16.1%}")


def profile(spec: EngineSpec, lines: Sequence[bytes], tool: str, top: int) -> None:
    """Profile one decode + engine pass and print the hotspots."""
    engine = Engine(spec)
    if tool == "pyinstrument":
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        profiler.start()
        _pipeline(engine, lines, [])
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False, show_all=False))
        return
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    _pipeline(engine, lines, [])
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20_000.0, help="events per simulated second")
    parser.add_argument("--repeat", type=int, default=3, help="runs per loop; the best is shown")
    parser.add_argument("--file", type=Path, help="replay this JSON-lines file instead")
    parser.add_argument("--quick", action="store_true", help="100k events, 1 run: seconds")
    parser.add_argument(
        "--breakdown", action="store_true", help="also time the engine per kind of trigger"
    )
    parser.add_argument(
        "--judges", action="store_true", help="only: decode + engine with half the rollouts judged"
    )
    parser.add_argument("--profile", choices=("cprofile", "pyinstrument"))
    parser.add_argument("--top", type=int, default=30, help="cProfile rows to print")
    args = parser.parse_args()
    if args.quick:
        args.events, args.repeat = 100_000, 1
    workload = Workload(args.rollouts, args.seed, args.rate)
    spec = workload.spec()
    lines = load_lines(workload, args.events, args.file)
    print(describe(workload, len(lines)))
    if args.profile:
        profile(spec, lines, args.profile, args.top)
        return 0
    if args.judges:
        judges(spec, lines, args.repeat)
        return 0
    pipeline = [run(spec, lines) for _ in range(args.repeat)]
    events = decode_all(lines)
    engine_only = [run(spec, lines, events) for _ in range(args.repeat)]
    report(pipeline, engine_only)
    if args.breakdown:
        breakdown(spec, lines, events, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
