"""Flag delivery: how fast the SDKs obey a rollback, and what serving them costs.

Two measurements, each against a real `rolloutd run` on 127.0.0.1 (no brokers: the steps
are walked with admin commands, which decide and commit like any event):

* rollback -> off. One rollout at 25% (step 1 held an hour). Each round: `retry` back to
  25%, wait until the SDK returns `on` for a key inside the 25%, then `rollback`; t0 = the
  rollback decision's `ts` (the daemon's wall clock, when it decided), then the SDK is
  evaluated in a loop (1 ms apart) for that key until it returns `off`.
  - OpenFeature + flagd provider, in-process file mode on the written file (the provider
    polls the file's mtime every `deadline_ms`, 500 ms by default): reported are decision
    -> file mtime (the daemon's commit and atomic write), file mtime -> the provider's
    PROVIDER_CONFIGURATION_CHANGED event, and decision -> the first `off`.
  - The Unleash Python SDK polling /api/client/features with refresh_interval 1 s (its
    smallest: the interval is whole seconds; the SDK's default is 15 s): decision -> the
    first `off`.
  Each latency is also given as a fraction of the SDK's own poll interval, the reference
  of the same run (the expected mean of a poll at a random phase is half of it).

* serving cost. 1,000 rollouts (start immediately, 5%, so every flag has a fractional
  split), and a client with `--concurrency` keep-alive connections (aiohttp) sending
  `--requests` requests, alternating endpoints in rounds (/healthz, features, flagd,
  features with If-None-Match, ...), best round of `--rounds` per endpoint. The ratio is
  requests/s of each endpoint over /healthz on the same server in the same run.

Run: .venv/bin/python bench/bench_delivery.py [--quick] [--only latency|serving]
         [--rounds N] [--requests N] [--concurrency N]
--quick: 5 rollbacks per SDK, 2 serving rounds of 1,000 requests (< 1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from brokers import free_port  # noqa: E402
from rolloutd.bucketing import in_rollout  # noqa: E402

RUN = [sys.executable, "-m", "rolloutd", "run"]
TOKEN = "bench-admin-token"
CLIENT_TOKEN = "bench-client-token"
FLAG = "new_co"
SERVICE = """
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:{port}", token: "{token}"}}
delivery:
  flagd: {{file: "{file}", http: true}}
  unleash: {{client_tokens: ["{client_token}"]}}
"""
LATENCY_CONFIG = (
    """
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 25, hold: 1h}}, {{percent: 100}}]
"""
    + SERVICE
)


class Daemon:
    def __init__(self, directory: Path, config: str, port: int) -> None:
        self.path = directory / "rolloutd.yaml"
        self.path.write_text(config)
        self.base = f"http://127.0.0.1:{port}"
        self.log = directory / "daemon.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*RUN, "--config", str(self.path), "--log-level", "WARNING"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while not self._up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def _up(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def command(self, name: str) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.base}/api/v1/rollouts/co/{name}",
            method="POST",
            data=b"{}",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body: dict[str, Any] = json.loads(response.read())
        return body

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


@contextmanager
def daemon(config: str) -> Iterator[tuple[Daemon, Path]]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as raw:
        directory = Path(raw)
        port = free_port()
        text = config.format(
            state=directory / "s.db",
            port=port,
            token=TOKEN,
            file=directory / "flags.flagd.json",
            client_token=CLIENT_TOKEN,
        )
        running = Daemon(directory, text, port)
        try:
            yield running, directory
        finally:
            running.stop()


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> float:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.001)
    return time.time()


# A user inside the 25% for the Unleash SDK (in_rollout); flagd buckets differently, so its
# bench picks its own.
INSIDE = next(f"user-{i}" for i in range(1000) if in_rollout(FLAG, f"user-{i}", 25))


def rollback_rounds(
    running: Daemon,
    rounds: int,
    interval: float,
    on: Callable[[], bool],
    after: Callable[[], None] | None = None,
) -> list[tuple[float, float]]:
    """(decision ts, first-off wall time) of each round. The rollback comes at a random
    phase of the SDK's poll (seeing `on` happens just after a poll: deciding at once would
    always wait a whole interval)."""
    results = []
    phases = random.Random(12)
    for _ in range(rounds):
        wait_until(on)
        time.sleep(phases.uniform(0, interval))
        decided = running.command("rollback")["decisions"][0]["ts"]
        off_at = wait_until(lambda: not on())
        results.append((decided, off_at))
        if after is not None:
            after()
        running.command("retry")
    return results


def bench_flagd(rounds: int) -> dict[str, Any]:
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEvent

    changes: list[float] = []
    lock = threading.Lock()

    def changed(_details: Any) -> None:
        with lock:
            changes.append(time.time())

    with daemon(LATENCY_CONFIG) as (running, directory):
        file = directory / "flags.flagd.json"
        provider = FlagdProvider(
            resolver_type=ResolverType.FILE, offline_flag_source_path=str(file)
        )
        api.set_provider(provider)
        api.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed)
        client = api.get_client()
        wait_until(
            lambda: client.get_boolean_details(FLAG, False).flag_metadata.get("percent") == 25
        )
        context = next(
            EvaluationContext(targeting_key=key)
            for key in (f"user-{i}" for i in range(1000))
            if client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=key))
        )
        mtimes: list[float] = []
        events: list[float] = []

        def on() -> bool:
            return bool(client.get_boolean_value(FLAG, False, context))

        def noted() -> None:
            mtime = file.stat().st_mtime
            mtimes.append(mtime)

            def later() -> list[float]:
                with lock:
                    return [c for c in changes if c >= mtime]

            wait_until(lambda: bool(later()))  # the event may be handled after the store
            events.append(min(later()))

        try:
            poll = provider.config.deadline_ms / 1000
            results = rollback_rounds(running, rounds, poll, on, noted)
        finally:
            api.remove_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, changed)
            api.shutdown()
    return {
        "poll_interval_s": poll,
        "decision_to_file_ms": [1000 * (m - d) for (d, _), m in zip(results, mtimes, strict=True)],
        "file_to_event_ms": [1000 * (e - m) for m, e in zip(mtimes, events, strict=True)],
        "decision_to_off_ms": [1000 * (off - d) for d, off in results],
    }


def bench_unleash(rounds: int) -> dict[str, Any]:
    from UnleashClient import UnleashClient
    from UnleashClient.utils import InstanceAllowType

    with daemon(LATENCY_CONFIG) as (running, directory):
        client = UnleashClient(
            url=f"{running.base}/api",
            app_name="bench",
            refresh_interval=1,
            metrics_interval=60,
            custom_headers={"Authorization": CLIENT_TOKEN},
            cache_directory=str(directory / "unleash-cache"),
            multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
        )
        client.initialize_client()
        try:
            results = rollback_rounds(
                running, rounds, 1.0, lambda: bool(client.is_enabled(FLAG, {"userId": INSIDE}))
            )
        finally:
            client.destroy()
    return {"poll_interval_s": 1.0, "decision_to_off_ms": [1000 * (o - d) for d, o in results]}


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    return (
        f"median {statistics.median(ordered):7.1f}  min {ordered[0]:7.1f}  "
        f"max {ordered[-1]:7.1f} ms"
    )


def report_latency(name: str, figures: dict[str, Any]) -> None:
    interval = figures["poll_interval_s"]
    print(f"{name} (poll interval {interval:g} s):")
    for key, values in figures.items():
        if key == "poll_interval_s":
            continue
        share = statistics.median(values) / 1000 / interval
        print(f"  {key:22s} {summary(values)}  median/interval {share:.2f}")


# -- serving --------------------------------------------------------------------------


def serving_config(rollouts: int) -> str:
    steps = "[{{percent: 5, hold: 1h}}, {{percent: 100}}]"
    lines = [f"  - {{{{name: r{i}, flag: flag_{i}, steps: {steps}}}}}" for i in range(rollouts)]
    return "rollouts:\n" + "\n".join(lines) + SERVICE


async def hammer(url: str, headers: dict[str, str], count: int, concurrency: int) -> float:
    """Requests/s of `count` requests over `concurrency` keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with session.get(url, headers=headers) as response:
                    await response.read()
                    if response.status not in (200, 304):
                        raise SystemExit(f"{url}: {response.status}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))  # warm the connections
        remaining = count
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


def bench_serving(rollouts: int, rounds: int, requests: int, concurrency: int) -> None:
    with daemon(serving_config(rollouts)) as (running, _):
        auth = {"Authorization": CLIENT_TOKEN}
        with urllib.request.urlopen(
            urllib.request.Request(running.base + "/api/client/features", headers=auth)
        ) as response:
            size, etag = len(response.read()), response.headers["ETag"]
        with urllib.request.urlopen(running.base + "/flagd/flags.json") as response:
            flagd_size = len(response.read())
        endpoints = {
            "/healthz": ("/healthz", {}),
            "/api/client/features": ("/api/client/features", auth),
            "/api/client/features 304": (
                "/api/client/features",
                {**auth, "If-None-Match": etag},
            ),
            "/flagd/flags.json": ("/flagd/flags.json", {}),
        }
        best: dict[str, float] = dict.fromkeys(endpoints, 0.0)
        for _ in range(rounds):
            for name, (path, headers) in endpoints.items():
                rate = asyncio.run(hammer(running.base + path, headers, requests, concurrency))
                best[name] = max(best[name], rate)
    print(
        f"serving, {rollouts} flags (features {size:,} bytes, flagd {flagd_size:,} bytes), "
        f"{concurrency} connections, best of {rounds} x {requests} requests:"
    )
    for name, rate in best.items():
        print(f"  {name:28s} {rate:8.0f} req/s  ratio to /healthz {rate / best['/healthz']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["latency", "serving"])
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=1000)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    logging.getLogger("openfeature").setLevel(logging.CRITICAL)  # the file watcher's noise
    logging.getLogger("UnleashClient").setLevel(logging.CRITICAL)
    if args.only in (None, "latency"):
        rounds = args.rounds or (5 if args.quick else 20)
        report_latency("OpenFeature + flagd, file mode", bench_flagd(rounds))
        report_latency("Unleash SDK, polling", bench_unleash(rounds))
    if args.only in (None, "serving"):
        rounds = args.rounds or (2 if args.quick else 3)
        requests = args.requests or (1000 if args.quick else 5000)
        bench_serving(args.rollouts, rounds, requests, args.concurrency)


if __name__ == "__main__":
    main()
