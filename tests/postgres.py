"""A real PostgreSQL for the tests: Debian's server binaries, a cluster of the test
session's own in a temp dir, listening on a free loopback port.

* The binaries are found under /usr/lib/postgresql/<major>/bin (`scripts/setup.sh` installs
  the `postgresql` package and stops its packaged cluster).
* initdb and the server refuse to run as root: as root the temp dir is chowned to the
  `postgres` user and both run through `setpriv` under its ids. setpriv execs the command
  in place (runuser would fork it), so the pid the fixture started is the server's own and
  `stop()` signals exactly that pid (SIGINT: a fast shutdown), SIGKILL after a timeout.
* Trust authentication on loopback, fsync off (a test cluster need not survive a power
  loss), the unix socket inside the temp dir. `database()` makes a fresh database and
  returns its URL, so tests sharing the cluster never share state.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg

from brokers import HOST, free_port

USER = "rolloutd"


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        raise RuntimeError("no PostgreSQL server (run scripts/setup.sh to install postgresql)")
    return found[-1].parent


class Postgres:
    start_timeout = 30.0

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="rolloutd-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        user = pwd.getpwnam("postgres")
        ids = [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        return ["setpriv", *ids, "--", *argv]

    def start(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        bin_dir = postgres_bin()
        initdb = [str(bin_dir / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust"]
        subprocess.run(
            self._as_owner([*initdb, "-E", "UTF8", "--no-sync"]),
            check=True,
            capture_output=True,
            cwd=self.dir,
        )
        server = [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        settings = {"listen_addresses": HOST, "unix_socket_directories": str(self.dir)}
        settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        for name, value in settings.items():
            server += ["-c", f"{name}={value}"]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self._as_owner(server), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.url("postgres"), connect_timeout=1).close()
                return
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not start: {self.log_path.read_text()[-2000:]}")

    def url(self, db: str) -> str:
        return f"postgresql://{USER}@{HOST}:{self.port}/{db}"

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
