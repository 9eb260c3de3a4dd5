"""Decode throughput: the bare typed msgspec decoder vs `decode_one` (with its checks).

Run: .venv/bin/python bench/bench_decode.py [N]
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable

import msgspec

from rolloutd.core.events import Event, decode_one

_TYPED: msgspec.json.Decoder[Event] = msgspec.json.Decoder(Event)


def make_lines(n: int, seed: int = 1) -> list[bytes]:
    """`n` valid events of every type, mostly requests, as JSON lines."""
    rng = random.Random(seed)
    t0 = 1763719200.0
    lines: list[dict[str, object]] = []
    for i in range(n):
        ts: object = round(t0 + i * 0.01, 3)
        cohort = rng.choice(("canary", "control"))
        roll = rng.random()
        if roll < 0.6:
            event: dict[str, object] = {
                "type": "request",
                "ok": rng.random() > 0.01,
                "latency_ms": round(rng.expovariate(0.02), 2),
            }
        elif roll < 0.8:
            count = rng.randrange(1, 500)
            samples = [round(rng.expovariate(0.02), 2) for _ in range(5)]
            errors = rng.randrange(0, count // 10 + 1)
            event = {"type": "requests", "count": count, "errors": errors, "latency_ms": samples}
        elif roll < 0.9:
            ts = "2025-11-21T10:00:02.250Z"
            event = {"type": "gauge", "name": "migration_progress", "value": rng.random()}
        elif roll < 0.999:
            event = {"type": "counter", "name": "validation_failures", "value": rng.randrange(3)}
        else:
            event = {"type": "command", "command": "promote", "actor": "alice"}
        lines.append({"ts": ts, "rollout": "checkout-v2", "cohort": cohort, **event})
    return [msgspec.json.encode(line) for line in lines]


def _rate(lines: list[bytes], decode: Callable[[bytes], object]) -> float:
    start = time.perf_counter()
    for line in lines:
        decode(line)
    return len(lines) / (time.perf_counter() - start)


def decode_only_rate(lines: list[bytes]) -> float:
    """Events/s of a loop that only calls the typed msgspec decoder (best of 3 runs)."""
    return max(_rate(lines, _TYPED.decode) for _ in range(3))


def decode_one_rate(lines: list[bytes]) -> float:
    """Events/s of a loop over `decode_one` (best of 3 runs)."""
    return max(_rate(lines, decode_one) for _ in range(3))


if __name__ == "__main__":
    lines = make_lines(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
    print(f"{len(lines)} events")
    print(f"decode-only: {decode_only_rate(lines):,.0f} events/s")
    print(f"decode_one:  {decode_one_rate(lines):,.0f} events/s")
