"""Reload (SIGHUP and file watch) and the sd_notify protocol, on a real daemon process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers import free_port

ROLLOUT = """
  - name: {name}
    flag: {name}_flag
    steps: [{{percent: 5, hold: 1h}}, {{percent: 100}}]
    triggers:
      - {{name: errors, metric: error_rate, window: {window}, op: ">", threshold: 0.1}}
"""


def config(tmp: Path, port: int, rollouts: list[tuple[str, str]]) -> str:
    body = "".join(ROLLOUT.format(name=n, window=w) for n, w in rollouts)
    return (
        f'rollouts:{body}state: {{path: "{tmp / "s.db"}"}}\nhttp: {{listen: "127.0.0.1:{port}"}}\n'
    )


class FakeSystemd:
    """A datagram socket standing in for $NOTIFY_SOCKET, recording what the daemon says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, check: Callable[[list[str]], bool], deadline: float = 20.0) -> None:
        end = time.monotonic() + deadline
        while not check(self.messages):
            assert time.monotonic() < end, self.messages
            with contextlib.suppress(TimeoutError):
                self.messages.append(self.sock.recv(4096).decode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    path = tmp_path / "rolloutd.yaml"
    path.write_text(config(tmp_path, port, [("co", "30s")]))
    systemd = FakeSystemd(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "400000"}
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolloutd", "run", "--config", str(path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        systemd.wait_for(lambda m: any("READY=1" in x for x in m))
        yield {
            "proc": proc,
            "path": path,
            "port": port,
            "systemd": systemd,
            "tmp": tmp_path,
            "log": log,
        }
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        systemd.close()


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        text: str = response.read().decode()
    return text


def names(port: int) -> list[str]:
    return [r["name"] for r in json.loads(get(port, "/api/v1/rollouts"))["rollouts"]]


def test_valid_reload_applies_the_diff_and_keeps_unchanged_state(running: dict[str, Any]) -> None:
    port, systemd = running["port"], running["systemd"]
    before = json.loads(get(port, "/api/v1/rollouts/co"))
    running["path"].write_text(config(running["tmp"], port, [("co", "30s"), ("new", "10s")]))
    running["proc"].send_signal(signal.SIGHUP)
    systemd.wait_for(lambda m: sum("READY=1" in x for x in m) >= 2)
    reload_at = next(i for i, m in enumerate(systemd.messages) if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in systemd.messages[reload_at]
    assert any("READY=1" in m for m in systemd.messages[reload_at + 1 :])
    assert names(port) == ["co", "new"]
    after = json.loads(get(port, "/api/v1/rollouts/co"))
    assert after["recent_decisions"] == before["recent_decisions"]  # untouched: no restart
    added = json.loads(get(port, "/api/v1/rollouts/new"))
    assert [d["kind"] for d in added["recent_decisions"]] == ["config", "percent", "phase"]
    assert "rolloutd_config_reload_success 1.0" in get(port, "/metrics")


def test_invalid_reload_keeps_the_old_config_and_says_why(running: dict[str, Any]) -> None:
    port, systemd = running["port"], running["systemd"]
    running["path"].write_text(
        "rollouts:\n  - name: co\n    flag: x\n    steps: [{percent: 500}]\n"
    )
    running["proc"].send_signal(signal.SIGHUP)
    systemd.wait_for(lambda m: any("config reload rejected" in x for x in m))
    assert names(port) == ["co"]
    assert "rolloutd_config_reload_success 0.0" in get(port, "/metrics")
    log = running["log"].read_text()
    assert "rollouts[0].steps[0].percent" in log


def test_a_changed_file_is_reloaded_without_a_signal(running: dict[str, Any]) -> None:
    port = running["port"]
    time.sleep(0.01)  # a distinct modification time
    running["path"].write_text(config(running["tmp"], port, [("co", "30s"), ("other", "10s")]))
    deadline = time.monotonic() + 15
    while names(port) != ["co", "other"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_removed_rollout_stops_with_a_decision(running: dict[str, Any]) -> None:
    port, systemd = running["port"], running["systemd"]
    running["path"].write_text(config(running["tmp"], port, [("solo", "10s")]))
    running["proc"].send_signal(signal.SIGHUP)
    systemd.wait_for(lambda m: sum("READY=1" in x for x in m) >= 2)
    assert names(port) == ["solo"]
    lines = [json.loads(x) for x in running["log"].read_text().splitlines() if x.startswith("{")]
    removed = [x for x in lines if x.get("kind") == "config" and x.get("change") == "removed"]
    assert [x["rollout"] for x in removed] == ["co"]


def test_watchdog_and_stopping(running: dict[str, Any]) -> None:
    systemd = running["systemd"]
    systemd.wait_for(lambda m: sum("WATCHDOG=1" in x for x in m) >= 2)
    running["proc"].send_signal(signal.SIGTERM)
    assert running["proc"].wait(timeout=20) == 0
    systemd.wait_for(lambda m: any("STOPPING=1" in x for x in m))
