"""False positives and power of the judge's tests.

False positives, on null streams (no real difference):

Each stream is a sequence of errors drawn directly (for the count tests only errors matter):
an error comes from the canary with probability rho, the planned share. The tests are read
after every error; a stream is a false positive if a test ever decides "worse". Shares 5%,
25% and a ramp 5 -> 25 -> 50 (equal numbers of errors per step). MeanTest is fed the same
stream as proportions: every error stands for 1 / base_rate requests split in the planned
ratio (canary n = rho * requests), read after every error.

Power (`--power`): per-second traffic as the engine sees it (RATE requests a second, each
to the canary with the share; errors at 1%, x the ratio on the canary), the grid count test
fed a bucket at a time as the engine feeds it. Requests needed to decide "worse" for 1.5x,
2x and 5x at shares 5% and 25% (median over the runs; a run that has not decided within
the horizon counts as never), next to threshold triggers on the canary's error rate (1m and
5m windows, read once the window is full and holds 100 requests) whose threshold is tuned
on null streams of the same traffic so that the share of null streams that ever fire
within the horizon is alpha.

Run: .venv/bin/python bench/bench_judge.py [--quick] [--streams N] [--errors N] [--power]
"""

from __future__ import annotations

import argparse
import math
import random
import sys

from rolloutd.core.judge import CountTest, GridCountTest, MeanTest

ALPHA = 0.05
BASE_RATE = 0.01
TAU = 0.01
SCENARIOS = {"5%": (0.05,), "25%": (0.25,), "ramp 5/25/50": (0.05, 0.25, 0.5)}


def one_stream(seed: int, shares: tuple[float, ...], errors: int) -> tuple[bool, bool, bool]:
    rng = random.Random(seed)
    count, grid, mean = CountTest(), GridCountTest(), MeanTest(TAU)
    hit = [False, False, False]
    per_step = errors // len(shares)
    gap = round(1 / BASE_RATE)
    for rho in shares:
        for _ in range(per_step):
            arm = 0 if rng.random() < rho else 1
            count.observe(arm, rho)
            grid.observe(arm, rho)
            canary = rho * gap
            mean.observe_counts(0, 1 if arm == 0 else 0, max(1, math.floor(canary)))
            mean.observe_counts(1, 1 if arm == 1 else 0, max(1, math.floor(gap - canary)))
            hit[0] = hit[0] or count.worse(ALPHA, rho)
            hit[1] = hit[1] or grid.worse(ALPHA)
            hit[2] = hit[2] or mean.worse(ALPHA, 1)
    return hit[0], hit[1], hit[2]


RATE = 200  # requests a second, both cohorts
HORIZON = 1800  # seconds: the longest a step is watched
WINDOWS = (60, 300)
MIN_SAMPLES = 100


def binomial(rng: random.Random, n: int, p: float) -> int:
    """A Binomial(n, p) draw by inversion (exact; fast for the small means used here)."""
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    if n <= 0 or p <= 0.0:
        return 0
    u = rng.random()
    pmf = (1.0 - p) ** n
    cdf, k, odds = pmf, 0, p / (1.0 - p)
    while u > cdf and k < n:
        pmf *= (n - k) / (k + 1) * odds
        k += 1
        cdf += pmf
    return k


def traffic(seed: int, rho: float, ratio: float) -> list[tuple[int, int, int, int]]:
    """Per second: canary requests, canary errors, control requests, control errors."""
    rng = random.Random(seed)
    out = []
    for _ in range(HORIZON):
        canary = binomial(rng, RATE, rho)
        control = RATE - canary
        out.append(
            (
                canary,
                binomial(rng, canary, BASE_RATE * ratio),
                control,
                binomial(rng, control, BASE_RATE),
            )
        )
    return out


def windowed_rates(stream: list[tuple[int, int, int, int]], window: int) -> list[float]:
    """The canary's error rate over the last `window` seconds, each second; 0 (insufficient
    data) until the window is full and holds MIN_SAMPLES requests, so the small samples of
    the first seconds do not force the threshold up."""
    rates, n, e = [], 0, 0
    for i, (canary, errors, _c, _e) in enumerate(stream):
        n += canary
        e += errors
        if i >= window:
            old = stream[i - window]
            n -= old[0]
            e -= old[1]
        rates.append(e / n if n >= MIN_SAMPLES and i >= window - 1 else 0.0)
    return rates


def judge_second(stream: list[tuple[int, int, int, int]], rho: float) -> int | None:
    """The second at whose end the grid test decides "worse", or None."""
    test = GridCountTest()
    for i, (_n0, e0, _n1, e1) in enumerate(stream):
        test.observe(0, rho, e0)
        test.observe(1, rho, e1)
        if test.worse(ALPHA):
            return i
    return None


def tuned(rho: float, streams: int) -> dict[int, float]:
    """Per window: the threshold that null streams exceed with probability alpha."""
    maxima: dict[int, list[float]] = {w: [] for w in WINDOWS}
    for seed in range(streams):
        stream = traffic(10_000 + seed, rho, 1.0)
        for w in WINDOWS:
            maxima[w].append(max(windowed_rates(stream, w)))
    return {w: sorted(m)[math.ceil((1 - ALPHA) * len(m)) - 1] for w, m in maxima.items()}


def first_above(rates: list[float], threshold: float) -> int | None:
    return next((i for i, r in enumerate(rates) if r > threshold), None)


def median_requests(seconds: list[int | None]) -> str:
    done = sorted(s for s in seconds if s is not None)
    if len(done) * 2 <= len(seconds):
        return f"> {HORIZON * RATE:,} ({len(done)}/{len(seconds)})"
    middle = done[len(seconds) // 2] if len(seconds) % 2 else done[len(seconds) // 2 - 1]
    return f"{(middle + 1) * RATE:,} ({len(done)}/{len(seconds)})"


def power(runs: int, null_streams: int) -> None:
    print(f"Power: {RATE} requests/s, {BASE_RATE:.0%} errors, horizon {HORIZON} s, alpha {ALPHA};")
    print(f"thresholds tuned on {null_streams} null streams; median over {runs} runs")
    print("(requests until the decision, and how many runs decided)\n")
    print("| share | ratio | judge (grid counts) | threshold, 1m window | threshold, 5m window |")
    print("|---|---|---|---|---|")
    for rho in (0.05, 0.25):
        thresholds = tuned(rho, null_streams)
        null_hits = {w: 0 for w in WINDOWS}
        judge_null = 0
        for seed in range(runs):  # the tuned rate checked on fresh null streams
            stream = traffic(20_000 + seed, rho, 1.0)
            judge_null += judge_second(stream, rho) is not None
            for w in WINDOWS:
                null_hits[w] += first_above(windowed_rates(stream, w), thresholds[w]) is not None
        for ratio in (1.5, 2.0, 5.0):
            judge, below = [], {w: [] for w in WINDOWS}
            for seed in range(runs):
                stream = traffic(seed, rho, ratio)
                judge.append(judge_second(stream, rho))
                for w in WINDOWS:
                    below[w].append(first_above(windowed_rates(stream, w), thresholds[w]))
            cells = [median_requests(judge)] + [median_requests(below[w]) for w in WINDOWS]
            print(f"| {rho:.0%} | {ratio}x | " + " | ".join(cells) + " |")
        shown = ", ".join(f"{w // 60}m > {thresholds[w]:.4f}" for w in WINDOWS)
        fresh = ", ".join(f"{w // 60}m {null_hits[w] / runs:.3f}" for w in WINDOWS)
        print(
            f"| {rho:.0%} | thresholds | | {shown} | null share fired on fresh streams: "
            f"judge {judge_null / runs:.3f}, {fresh} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--errors", type=int, default=5000)
    parser.add_argument("--power", action="store_true", help="the power table instead")
    parser.add_argument("--runs", type=int, default=400)
    args = parser.parse_args()
    if args.power:
        runs = 40 if args.quick else args.runs
        power(runs, 200 if args.quick else 1000)
        return
    streams, errors = (200, 1000) if args.quick else (args.streams, args.errors)
    print(f"`{' '.join(['python', *sys.argv])}`: {streams} null streams of {errors} errors")
    print(f"(base error rate {BASE_RATE}, tau {TAU}), alpha {ALPHA}\n")
    print("| share | CountTest | GridCountTest | MeanTest |")
    print("|---|---|---|---|")
    for name, shares in SCENARIOS.items():
        hits = [0, 0, 0]
        for seed in range(streams):
            for i, hit in enumerate(one_stream(seed, shares, errors)):
                hits[i] += hit
        cells = []
        for h in hits:
            p = h / streams
            cells.append(f"{p:.4f} ± {math.sqrt(p * (1 - p) / streams):.4f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
