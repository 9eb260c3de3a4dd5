"""Engine memory: peak RSS with every window full, and proof that it does not grow with events.

Each run is a fresh child process that builds the engine, then generates events on the fly
(one chunk at a time, never the whole stream) and feeds them through decode + engine. It
reads VmRSS (/proc/self/status) once the engine is built, once every window has filled
(warm-up: the longest window plus one bucket of simulated time), every 100k events after
that, and at the end; peak is VmHWM and ru_maxrss. If memory is bounded by the windows, runs
of 1M and 5M events end at the same RSS. Target: peak < 300 MB with 1,000 rollouts x
2 cohorts x 5-minute windows, half of them tracking latency.

The default rate (2,000 events per simulated second) makes a 1M-event run cover 500 s, so
the 5-minute windows fill inside it. Denser traffic fills more histogram cells per bucket:
`--rate 20000 --events 1000000 5000000 7000000 12000000` shows the footprint at the engine
benchmark's density (the windows fill after 6M events there).

Run: .venv/bin/python bench/bench_memory.py [--events N [N ...]] [--rollouts N] [--seed S]
     .venv/bin/python bench/bench_memory.py --quick
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from gen_events import WINDOW, EventStream, Workload
from rolloutd.core.engine import Engine
from rolloutd.core.events import Rejection, decode_one

TARGET_MB = 300.0
CHECK_EVERY = 100_000
MB = 1024 * 1024


def _status_kb(field_name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def rss_mb() -> float:
    return _status_kb("VmRSS") * 1024 / MB


@dataclass(slots=True)
class Measurement:
    events: int
    simulated_s: float
    rss_start: float = 0.0  # interpreter and imports, before the engine is built
    rss_built: float = 0.0  # engine built, no events yet
    rss_warm: float | None = None  # every window full; None if the run is shorter
    rss_end: float = 0.0
    rss_after_warm_min: float | None = None
    rss_after_warm_max: float | None = None
    peak_hwm: float = 0.0  # VmHWM
    peak_maxrss: float = 0.0  # ru_maxrss
    hist_cells: int = 0  # latency histogram cells held in the rings at the end
    decisions: int = 0
    samples: list[float] = field(default_factory=list)


def measure(workload: Workload, events: int) -> Measurement:
    """Feed `events` generated events through a fresh engine, reading RSS along the way."""
    result = Measurement(events, workload.seconds(events), rss_mb())
    engine = Engine(workload.spec())
    result.rss_built = rss_mb()
    warm_at = int((WINDOW + engine.bucket) * workload.rate)
    done = 0
    for chunk in EventStream(workload).chunks(events):
        for line in chunk:
            event = decode_one(line)
            if isinstance(event, Rejection):
                raise ValueError(f"the generator wrote an invalid event: {event}")
            result.decisions += len(engine.handle(event))
        before, done = done, done + len(chunk)
        if before < warm_at <= done:
            result.rss_warm = rss_mb()
        if done > warm_at and done // CHECK_EVERY != before // CHECK_EVERY:
            result.samples.append(rss_mb())
    result.rss_end = rss_mb()
    if result.samples:
        result.rss_after_warm_min = min(result.samples)
        result.rss_after_warm_max = max(result.samples)
    result.peak_hwm = _status_kb("VmHWM") * 1024 / MB
    result.peak_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
    result.hist_cells = histogram_cells(engine)
    return result


def histogram_cells(engine: Engine) -> int:
    """Diagnostic only (reads private fields): entries in every latency ring (slot and count)."""
    cells = 0
    for route in getattr(engine, "_routes", {}).values():
        for feed in route.feeds:
            ring = getattr(feed.series, "_hist", None) or ()
            cells += sum(len(h) for h in ring if h)
    return cells


def run_child(workload: Workload, events: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--events",
        str(events),
        "--rollouts",
        str(workload.rollouts),
        "--seed",
        str(workload.seed),
        "--rate",
        str(workload.rate),
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE)


def collect(workload: Workload, counts: list[int], jobs: int) -> list[Measurement]:
    """One child per count, at most `jobs` at a time (RSS is per process, so they may overlap)."""
    results: list[Measurement] = []
    for start in range(0, len(counts), jobs):
        children = [run_child(workload, n) for n in counts[start : start + jobs]]
        for child in children:
            out, _ = child.communicate()
            if child.returncode != 0:
                raise RuntimeError(f"child exited with {child.returncode}")
            results.append(msgspec.json.decode(out, type=Measurement))
    return results


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_COLUMNS = (
    ("events", 10),
    ("sim s", 7),
    ("start MB", 10),
    ("built MB", 10),
    ("warm MB", 9),
    ("end MB", 8),
    ("after warm MB", 15),
    ("peak MB", 9),
    ("hist cells", 12),
)


def _print_row(cells: list[str]) -> None:
    print("".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True)))


def report(workload: Workload, results: list[Measurement]) -> bool:
    print(
        f"workload: {workload.rollouts} rollouts x 2 cohorts, {WINDOW:.0f} s windows, half with "
        f"latency histograms; {workload.rate:,.0f} events per simulated s, seed {workload.seed}"
    )
    _print_row([name for name, _ in _COLUMNS])
    for r in results:
        spread = "-"
        if r.rss_after_warm_min is not None:
            spread = f"{_mb(r.rss_after_warm_min)}-{_mb(r.rss_after_warm_max)}"
        _print_row(
            [
                f"{r.events:,}",
                f"{r.simulated_s:,.0f}",
                _mb(r.rss_start),
                _mb(r.rss_built),
                _mb(r.rss_warm),
                _mb(r.rss_end),
                spread,
                _mb(max(r.peak_hwm, r.peak_maxrss)),
                f"{r.hist_cells:,}",
            ]
        )
    peak = max(max(r.peak_hwm, r.peak_maxrss) for r in results)
    peak_ok = peak < TARGET_MB
    verdict = "MET" if peak_ok else "NOT MET"
    print(f"target peak RSS < {TARGET_MB:.0f} MB: {verdict} (peak {peak:.1f} MB)")
    for r in results:
        if r.rss_warm is not None:
            print(
                f"{r.events:,} events: end - warm-up {r.rss_end - r.rss_warm:+.1f} MB over "
                f"{r.events - round((WINDOW + 1) * workload.rate):,} events after warm-up"
            )
    warm = [r for r in results if r.rss_warm is not None]
    if len(warm) >= 2:
        first, last = warm[0], warm[-1]
        growth = last.rss_end - first.rss_end
        print(
            f"end RSS, {last.events:,} vs {first.events:,} events: {growth:+.1f} MB "
            f"({growth / first.rss_end:+.1%})"
        )
    else:
        print("fewer than two runs filled their windows: no run-to-run comparison")
    return peak_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=[1_000_000, 5_000_000],
        help="one fresh process per count",
    )
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2_000.0, help="events per simulated second")
    parser.add_argument("--jobs", type=int, default=2, help="children run at once")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="100 rollouts, 300 events/simulated s, 100k and 200k events",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.rollouts, args.rate, args.events = 100, 300.0, [100_000, 200_000]
    workload = Workload(args.rollouts, args.seed, args.rate)
    if args.child:
        result = measure(workload, args.events[0])
        sys.stdout.buffer.write(msgspec.json.encode(result) + b"\n")
        return 0
    report(workload, collect(workload, sorted(args.events), args.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
