"""Instructions per event in `Engine.handle`, for callgrind (deterministic on a noisy machine).

Builds the bench workload's engine (as bench_engine.py does, default seed), decodes the first
N lines of its event file, then handles them; callgrind counts only inside `Engine.handle`
(compiled: its C wrapper), so decoding costs nothing. Instructions per event = the total
callgrind reports / N. Two runs with different N and the difference of their totals give
the steady-state cost without the warm-up (every rollout starting, windows filling).

Run (from the repo, compiled engine):
  valgrind --tool=callgrind --collect-atstart=no \
    --toggle-collect='CPyPy_engine___Engine___handle' \
    .venv/bin/python bench/callgrind_handle.py 400000
  callgrind_annotate callgrind.out.<pid> | head
"""

from __future__ import annotations

import sys

from bench_engine import decode_all, load_lines
from gen_events import Workload
from rolloutd.core.engine import Engine


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv else 100_000
    workload = Workload(1000, 1, 20_000.0)
    events = decode_all(load_lines(workload, count, None))
    engine = Engine(workload.spec())
    decisions = 0
    for event in events:
        decisions += len(engine.handle(event))
    print(f"{len(events):,} events handled, {decisions:,} decisions", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
