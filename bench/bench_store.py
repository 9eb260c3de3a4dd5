"""State store: commit latency and file size for typical and worst-case batches.

Each scenario starts from a store holding 1,000 rollouts of ~5 KB, then commits the same kind
of batch again and again (engine blob, offsets, one outbox item, the previous item confirmed):
* all 1,000 rollouts rewritten (worst case: every rollout changed in one batch);
* 10 rollouts rewritten;
* 1 rollout rewritten (the common case: one event moved one rollout).
Commit times include WAL auto-checkpoints as they fall. Sizes are taken after the last commit;
`close + open + load` is a restart of the daemon on that file.

Run: .venv/bin/python bench/bench_store.py [--rollouts N] [--blob BYTES] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from rolloutd.adapters.store import Batch, Store


def blobs(count: int, size: int, names: list[str]) -> dict[str, bytes]:
    # Half random, half repeated: roughly what a serialized rollout state looks like.
    return {name: os.urandom(size // 2) + b"\x00" * (size - size // 2) for name in names[:count]}


def run(path: Path, changed: int, commits: int, names: list[str], size: int) -> list[str]:
    with Store.open(path, fresh=True) as store:
        store.commit(Batch(engine=b"e" * 2048, rollouts=blobs(len(names), size, names)))
        times: list[float] = []
        last: list[int] = []
        for n in range(commits):
            batch = Batch(
                engine=os.urandom(2048),
                rollouts=blobs(changed, size, names[n % 7 :] + names[: n % 7]),
                offsets={("rollout.metrics", 0): n},
                outbox=[("kafka:rollout.flags", b"flag", b'{"percent": 5}' * 8, False)],
                done=last,
            )
            start = time.perf_counter()
            last = store.commit(batch)
            times.append(time.perf_counter() - start)
        stats = store.stats()
    start = time.perf_counter()
    with Store.open(path) as store:
        store.load()
    reopen = time.perf_counter() - start
    times.sort()
    return [
        f"{changed:>8}",
        f"{commits:>7}",
        f"{statistics.median(times) * 1e3:>9.2f}",
        f"{times[int(len(times) * 0.95)] * 1e3:>8.2f}",
        f"{stats['file_bytes'] / 1e6:>8.2f}",
        f"{stats['wal_bytes'] / 1e6:>7.2f}",
        f"{path.stat().st_size / 1e6:>10.2f}",
        f"{reopen * 1e3:>11.1f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=1000)
    parser.add_argument("--blob", type=int, default=5000, help="bytes per rollout blob")
    parser.add_argument("--dir", default=None, help="where the file goes (default: a temp dir)")
    args = parser.parse_args()
    names = [f"rollout-{i:05d}" for i in range(args.rollouts)]
    print(f"{args.rollouts} rollouts of {args.blob} B; sizes while open, then after close")
    print(" changed commits median ms   p95 ms  file MB  wal MB  closed MB reopen+load ms")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for changed, commits in ((args.rollouts, 30), (10, 300), (1, 1000)):
            print(" ".join(run(Path(tmp) / "state.db", changed, commits, names, args.blob)))


if __name__ == "__main__":
    main()
