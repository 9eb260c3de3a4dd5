"""Two daemons on one PostgreSQL state, on a real Tansu and a real PostgreSQL (both started
here on free loopback ports: tests/brokers.py, tests/postgres.py).

* failover: two `rolloutd run` with `state: {url, lease: --lease}` (default 10s, the
  config's default) and one rollout held at 10% for a day. Each round: SIGKILL the leader,
  then at once produce a `resume` command to `rollout.commands` (refused: the rollout is
  progressing, and a refusal is an audited decision); the time is from the SIGKILL to the
  bench consumer reading that refusal on `rollout.decisions`, stamped with a generation
  above the killed leader's. That is the lease running out (up to --lease after the last
  renewal), the standby's next poll (a third of the lease), its reading the state, joining
  Kafka at the stored offsets and deciding: between 2/3 and 4/3 of the lease, plus the
  start. Each kill waits a random part of the lease first, so it lands at any phase of the
  leader's renewals and the standby's polls (killing just after the standby's poll showed
  would always meet them at the same point). The killed daemon is started again and stands
  by for the next round (which kills the other one). Median and max over --runs rounds.

* throughput: bench_e2e's measurement (a real `rolloutd run` consuming N pre-filled events
  of 200 rollouts, decisions to Kafka; see bench/bench_e2e.py) with the state in SQLite and
  in PostgreSQL (a new database each run), alternating SQLite, PostgreSQL, ... --pairs
  times in the same session; the ratio PostgreSQL / SQLite of the medians. Goal >= 0.8.

  `--checkpoint 0` commits every Kafka batch (the store's worst case) instead of the
  default 1 s.

Run: .venv/bin/python bench/bench_ha.py [--quick] [--only failover|throughput]
         [--runs 10] [--lease 10] [--events N] [--pairs 2] [--checkpoint S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import bench_e2e  # noqa: E402
from brokers import Tansu, free_port  # noqa: E402
from postgres import Postgres  # noqa: E402

COMMANDS, DECISIONS, METRICS, FLAGS = (
    "rollout.commands",
    "rollout.decisions",
    "rollout.metrics",
    "rollout.flags",
)
TARGET_RATIO = 0.8
RUN = [sys.executable, "-m", "rolloutd", "run"]
ROLLOUT = """rollouts:
  - name: co
    flag: new_co
    steps: [{percent: 10, hold: 24h}, {percent: 100}]
"""


class Member:
    """One `rolloutd run` of the pair, its log in its own folder."""

    def __init__(self, workdir: Path, bootstrap: str, url: str, lease: float) -> None:
        workdir.mkdir(parents=True)
        self.port = free_port()
        self.config = workdir / "rolloutd.yaml"
        self.config.write_text(
            ROLLOUT
            + "sources:\n"
            + f'  kafka: {{bootstrap_servers: "{bootstrap}", group_id: null,'
            + " auto_offset_reset: earliest}\n"
            + "sinks:\n  kafka: {}\n"
            + f'state: {{url: "{url}", lease: {lease}s}}\n'
            + f'http: {{listen: "127.0.0.1:{self.port}"}}\n'
        )
        self.log = workdir / "rolloutd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*RUN, "--config", str(self.config), "--log-level", "WARNING"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def readyz(self) -> tuple[int, dict[str, Any]]:
        try:
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return 0, {}

    def role(self) -> str:
        status, body = self.readyz()
        if status == 200:
            return "leader"
        if "standby" in body.get("reasons", {}).get("leader", ""):
            return "standby"
        return "starting"

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


async def until_role(member: Member, role: str, deadline: float = 120.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await asyncio.to_thread(member.role) == role:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"never {role}\n{member.tail()}")


async def failover_rounds(
    bootstrap: str, pair: list[Member], runs: int, lease: float, seed: int = 1
) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await producer.start()
    await reader.start()
    try:
        part = TopicPartition(DECISIONS, 0)
        reader.assign([part])
        await reader.seek_to_beginning(part)
        pair[0].start()
        await until_role(pair[0], "leader")
        pair[1].start()
        await until_role(pair[1], "standby")
        generation = 1
        gaps = []
        rng = random.Random(seed)
        for n in range(runs):
            # A kill at a random phase of the lease: right after the standby's poll shows
            # would always meet its renewals and polls at the same point.
            await asyncio.sleep(rng.uniform(0.0, lease))
            leader, standby = pair[n % 2], pair[(n + 1) % 2]
            command = {"type": "command", "rollout": "co", "command": "resume", "actor": f"r{n}"}
            leader.kill()
            killed = time.perf_counter()
            await producer.send_and_wait(
                COMMANDS, json.dumps({"ts": time.time(), **command}).encode()
            )
            seen = await refusal(reader, f"r{n}", generation, deadline=120.0)
            gaps.append(time.perf_counter() - killed)
            generation = seen
            print(f"  round {n + 1}: {gaps[-1]:.2f} s (generation {seen})", flush=True)
            leader.start()
            await until_role(leader, "standby")
            await until_role(standby, "leader")
        return gaps
    finally:
        await producer.stop()
        await reader.stop()


async def refusal(reader: AIOKafkaConsumer, actor: str, above: int, deadline: float) -> int:
    """Wait for the refused command of `actor` from a generation above `above`; its generation."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        fetched = await reader.getmany(timeout_ms=20)
        for batch in fetched.values():
            for message in batch:
                decision = json.loads(message.value)
                if decision.get("kind") == "refused" and decision.get("actor") == actor:
                    generation = int(decision["generation"])
                    if generation > above:
                        return generation
    raise TimeoutError(f"no refusal of {actor} within {deadline:.0f} s")


def measure_failover(args: argparse.Namespace, workdir: Path) -> list[float]:
    with Tansu() as tansu, Postgres() as postgres:
        tansu.create_topics([METRICS, COMMANDS, FLAGS, DECISIONS])
        url = postgres.database()
        pair = [Member(workdir / name, tansu.bootstrap, url, args.lease) for name in "ab"]
        try:
            return asyncio.run(failover_rounds(tansu.bootstrap, pair, args.runs, args.lease))
        finally:
            for member in pair:
                member.stop()


class StateDaemon(bench_e2e.Daemon):
    """bench_e2e's daemon with `state.checkpoint` set, and its state in PostgreSQL when a URL
    is given (a new database: no --fresh)."""

    def __init__(
        self, workdir: Path, spec: str, bootstrap: str, checkpoint: float, url: str | None
    ) -> None:
        super().__init__(workdir, spec, bootstrap, "WARNING")
        self.url = url
        text = self.config.read_text()
        line = next(x for x in text.splitlines() if x.startswith("state:"))
        place = f'path: "{workdir / "state.db"}"' if url is None else f'url: "{url}", lease: 10s'
        state = f"state: {{{place}, checkpoint: {checkpoint:g}s}}"
        self.config.write_text(text.replace(line, state))

    def argv(self) -> list[str]:
        return [a for a in super().argv() if a != "--fresh" or self.url is None]


def throughput_once(
    args: argparse.Namespace, workdir: Path, postgres: Postgres | None
) -> tuple[float, float]:
    """(daemon events/s, its ratio to the bare consumer) for one run."""
    with Tansu() as tansu:
        tansu.create_topics([METRICS])
        tansu.create_topics([COMMANDS, FLAGS, DECISIONS])
        fill = asyncio.run(bench_e2e.prefill(tansu.bootstrap, args.events, 200, 1, 1))
        floor = asyncio.run(bench_e2e.bare_consume(tansu.bootstrap, 1, fill.messages))
        spec = bench_e2e.throughput_spec(200)
        url = postgres.database() if postgres is not None else None
        daemon = StateDaemon(workdir, spec, tansu.bootstrap, args.checkpoint, url)
        assert tansu.pid is not None
        limit = 120 + args.events / 10_000
        run = asyncio.run(bench_e2e.run_daemon(tansu.bootstrap, daemon, 1, tansu.pid, limit))
    if run.exit_code != 0:
        raise RuntimeError(f"daemon exit code {run.exit_code}\n{run.log_tail}")
    rate = fill.events / (run.t1 - run.t0)
    return rate, rate / floor.rate


def measure_throughput(args: argparse.Namespace, workdir: Path) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    with Postgres() as postgres:
        for n in range(args.pairs):
            for kind in rates:
                place = workdir / f"{kind}-{n}"
                place.mkdir()
                rate, ratio = throughput_once(args, place, postgres if kind != "sqlite" else None)
                rates[kind].append(rate)
                print(f"  {kind:10} {rate:10,.0f} events/s ({ratio:.0%} of the bare consumer)")
    return rates


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 100k events, 1 pair")
    parser.add_argument("--only", choices=("failover", "throughput"))
    parser.add_argument("--runs", type=int, help="failover rounds (10; quick 3)")
    parser.add_argument("--lease", type=float, default=10.0, help="state.lease, seconds")
    parser.add_argument("--events", type=int, help="pre-filled events (300k; quick 100k)")
    parser.add_argument("--pairs", type=int, help="SQLite/PostgreSQL runs each (2; quick 1)")
    parser.add_argument(
        "--checkpoint", type=float, default=1.0, help="state.checkpoint, s (0: every batch)"
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (3 if args.quick else 10)
    args.events = args.events or (100_000 if args.quick else 300_000)
    args.pairs = args.pairs or (1 if args.quick else 2)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="rolloutd-bench-ha-") as tmp:
        base = Path(tmp)
        if args.only in (None, "failover"):
            print(f"failover, lease {args.lease:g} s, {args.runs} rounds:")
            gaps = measure_failover(args, base / "failover")
            median = statistics.median(gaps)
            print(
                f"SIGKILL -> first decision of the new leader: median {median:.2f} s,"
                f" max {max(gaps):.2f} s, min {min(gaps):.2f} s (lease {args.lease:g} s)"
            )
        if args.only in (None, "throughput"):
            print(
                f"throughput, {args.events:,} events, 200 rollouts, 1 partition, "
                f"checkpoint {args.checkpoint:g} s:"
            )
            (base / "throughput").mkdir()
            rates = measure_throughput(args, base / "throughput")
            sqlite, pg = (statistics.median(rates[k]) for k in ("sqlite", "postgresql"))
            ratio = pg / sqlite
            ok &= ratio >= TARGET_RATIO
            print(
                f"PostgreSQL / SQLite state: {ratio:.2f} (medians {pg:,.0f} / {sqlite:,.0f} "
                f"events/s; goal >= {TARGET_RATIO})"
            )
    print(f"goal {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
