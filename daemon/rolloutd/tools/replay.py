"""Replay: run the engine over a JSON-lines event file in virtual time.

Time runs from the first event to the last (nothing after EOF); the engine ticks every bucket
boundary in between. Output is the decision stream as JSON lines, byte for byte the same for
the same input. Invalid lines are reported on stderr with their line number and skipped; a
summary at the end counts them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from rolloutd.app import gc_tuning
from rolloutd.core.decisions import Decision, RefusedDecision, encode
from rolloutd.core.engine import Engine, EngineStats
from rolloutd.core.events import Rejection, decode_one
from rolloutd.core.spec import EngineSpec

MAX_REPORTED = 100  # invalid lines reported one by one; the rest only counted


@dataclass(slots=True)
class ReplaySummary:
    lines: int = 0
    blank: int = 0
    invalid: Counter[str] = field(default_factory=Counter)
    decisions: int = 0
    refused: int = 0
    engine: EngineStats = field(default_factory=EngineStats)

    def render(self) -> str:
        bad = sum(self.invalid.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.invalid.items()))
        stats = self.engine
        text = (
            f"replay: {self.lines} lines, {stats.events} events, {bad} invalid"
            + (f" ({reasons})" if reasons else "")
            + f", {stats.late} late, {stats.too_old} too old for any window,"
            f" {stats.unrouted} for no configured rollout, {stats.ignored} read by no trigger;"
            f" {self.decisions} decisions ({self.refused} refused)"
        )
        return text


def replay(
    spec: EngineSpec,
    lines: Iterable[bytes],
    out: IO[bytes],
    err: IO[str],
) -> ReplaySummary:
    """Replay `lines` through a fresh engine, writing decisions to `out`, problems to `err`."""
    engine = Engine(spec)
    gc_tuning.tune()
    summary = ReplaySummary(engine=engine.stats)
    for number, line in enumerate(lines, start=1):
        summary.lines = number
        if not line.strip():
            summary.blank += 1
            continue
        event = decode_one(line)
        if isinstance(event, Rejection):
            summary.invalid[event.reason] += 1
            if sum(summary.invalid.values()) <= MAX_REPORTED:
                err.write(f"line {number}: {event.reason}: {event.detail}\n")
            continue
        _emit(engine.handle(event), out, err, summary)
    return summary


def _emit(decisions: list[Decision], out: IO[bytes], err: IO[str], summary: ReplaySummary) -> None:
    for decision in decisions:
        out.write(encode(decision) + b"\n")
        summary.decisions += 1
        if isinstance(decision, RefusedDecision):
            summary.refused += 1
            err.write(f"refused at {decision.ts}: {decision.rollout}: {decision.reason}\n")
