"""The admin API, /metrics and the admin CLI against a real daemon process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers import free_port

TOKEN = "s3cret-admin-token"
CONFIG = """
triggers:
  errors: {{metric: error_rate, window: 30s, op: ">", threshold: 0.1, min_samples: 10}}
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 5, hold: 1h}}, {{percent: 50, hold: 1h}}, {{percent: 100}}]
    triggers: [errors]
  - name: later
    flag: later_flag
    start: manual
    steps: [{{percent: 100}}]
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:{port}"{token}}}
"""


class Api:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def call(
        self, path: str, method: str = "GET", body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
        )
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()


def start_daemon(tmp: Path, token: str | None) -> tuple[subprocess.Popen[bytes], Api, Path]:
    port = free_port()
    config = tmp / "rolloutd.yaml"
    token_part = f', token: "{token}"' if token else ""
    config.write_text(CONFIG.format(state=tmp / "s.db", port=port, token=token_part))
    log = tmp / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolloutd", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    api = Api(port)
    deadline = time.monotonic() + 20
    while True:
        try:
            if api.call("/healthz")[0] == 200:
                break
        except (urllib.error.URLError, ConnectionError):
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return proc, api, log


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Api, Path]]:
    proc, api, log = start_daemon(tmp_path, TOKEN)
    yield api, log
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def cli(*args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ROLLOUTD_TOKEN"}
    if token is not None:
        env["ROLLOUTD_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "rolloutd", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_health_readiness_and_rollouts(daemon: tuple[Api, Path]) -> None:
    api, _ = daemon
    assert api.call("/healthz")[1]["ok"] is True
    status, ready = api.call("/readyz")
    assert (status, ready["ready"]) == (200, True)
    status, body = api.call("/api/v1/rollouts")
    assert status == 200
    co = next(r for r in body["rollouts"] if r["name"] == "co")
    assert (co["phase"], co["percent"], co["step"]) == ("progressing", 5, 1)
    assert co["triggers"][0]["name"] == "errors"
    assert [d["reason"] for d in co["recent_decisions"]] == ["start", "start"]
    assert api.call("/api/v1/rollouts/nope")[0] == 404


def test_mutations_need_the_token_and_refusals_are_409(daemon: tuple[Api, Path]) -> None:
    api, log = daemon
    assert api.call("/api/v1/rollouts/co/promote", "POST")[0] == 401
    assert api.call("/api/v1/rollouts/co/promote", "POST", token="wrong")[0] == 401
    status, body = api.call("/api/v1/rollouts/co/promote", "POST", {"actor": "alice"}, TOKEN)
    assert status == 200
    assert [(d["kind"], d.get("percent"), d["actor"]) for d in body["decisions"]] == [
        ("percent", 50, "alice")
    ]
    status, body = api.call("/api/v1/rollouts/co/resume", "POST", {"actor": "bob"}, TOKEN)
    assert status == 409
    assert "does not apply in phase progressing" in body["error"]
    assert body["decisions"][0]["kind"] == "refused"
    status, body = api.call("/api/v1/rollouts/co/set_percent", "POST", {"percent": 500}, TOKEN)
    assert status == 400
    assert api.call("/api/v1/rollouts/co/explode", "POST", {}, TOKEN)[0] == 404
    assert TOKEN not in log.read_text()


def test_metrics_expose_rollouts_and_pass_promtool(
    daemon: tuple[Api, Path], tmp_path: Path
) -> None:
    api, _ = daemon
    status, text = api.call("/metrics")
    assert status == 200
    assert 'rolloutd_rollout_percent{flag="new_co",rollout="co"} 5.0' in text
    assert 'rolloutd_rollout_phase{phase="progressing",rollout="co"} 1.0' in text
    assert 'rolloutd_trigger_state{rollout="co",trigger="errors"} 0.0' in text
    assert "rolloutd_ready 1.0" in text
    assert 'rolloutd_decisions_total{kind="percent"} 1.0' in text
    assert "# HELP rolloutd_decision_latency_seconds" in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/setup.sh installs Debian's prometheus)")
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_status_and_commands(daemon: tuple[Api, Path]) -> None:
    api, _ = daemon
    url = api.base
    result = cli("status", "--url", url)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("co "))
    assert row.split()[:5] == ["co", "new_co", "progressing", "5%", "1/3"]
    result = cli("pause", "co", "--url", url)
    assert result.returncode == 1
    assert "needs a token" in result.stderr
    result = cli("pause", "co", "--url", url, "--actor", "carol", token=TOKEN)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["phase"] == "paused"
    result = cli("pause", "co", "--url", url, token=TOKEN)
    assert result.returncode == 3
    assert "refused" in result.stderr
    detail = cli("status", "co", "--url", url)
    assert "paused" in detail.stdout
    assert "recent decisions" in detail.stdout


def test_cli_says_when_the_daemon_is_not_there() -> None:
    result = cli("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "cannot reach rolloutd" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_a_token_mutations_are_refused(tmp_path: Path) -> None:
    proc, api, _ = start_daemon(tmp_path, None)
    try:
        status, body = api.call("/api/v1/rollouts/co/pause", "POST", {})
        assert status == 403
        assert "no http.token" in body["error"]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
