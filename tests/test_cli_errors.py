"""User errors through the real command: one line on stderr, no traceback, a documented code.

Exit codes (README, "Exit codes"): 1 a failure, 2 bad configuration or environment (so
systemd's RestartPreventExitStatus=2 stops retrying), 3 a command the daemon refused.
"""

from __future__ import annotations

import http.server
import signal
import socket
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from brokers import free_port
from test_cli import rolloutd
from test_http import TOKEN, Api, start_daemon

CONFIG = """
triggers:
  errors: {{metric: error_rate, window: 30s, op: ">", threshold: 0.1}}
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 5, hold: 1h}}, {{percent: 100}}]
    triggers: [errors]
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:{port}"}}
"""


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single stderr line of a failed command (asserting the code and the shape)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def run_with_state(tmp_path: Path, state: Path, *extra: str) -> str:
    config = tmp_path / "rolloutd.yaml"
    config.write_text(CONFIG.format(state=state, port=free_port()))
    result = rolloutd("run", "--config", str(config), *extra)
    assert result.stdout == ""
    return one_line(result, 2)


# -- the daemon's start ----------------------------------------------------------------------
def test_a_missing_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "nowhere" / "state.db"
    line = run_with_state(tmp_path, state)
    assert str(state.parent) in line
    assert "does not exist" in line
    assert "--fresh" not in line  # --fresh cannot create a directory
    assert not state.parent.exists()


def test_a_state_directory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    state = tmp_path / "plain" / "state.db"
    line = run_with_state(tmp_path, state)
    assert str(tmp_path / "plain") in line
    assert "is not a directory" in line


def test_a_state_path_that_is_a_directory(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    state.mkdir()
    line = run_with_state(tmp_path, state)
    assert str(state) in line
    assert "is a directory" in line


@pytest.mark.parametrize("content", [b"", b"garbage " * 512, b"SQLite format 3\x00" + b"\xff" * 84])
def test_a_corrupt_state_file(tmp_path: Path, content: bytes) -> None:
    state = tmp_path / "state.db"
    state.write_bytes(content)
    line = run_with_state(tmp_path, state)
    assert str(state) in line
    assert "--fresh" in line  # here it helps: the file is kept aside as *.bak
    assert state.read_bytes() == content  # nothing was touched


def test_a_foreign_sqlite_database(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with sqlite3.connect(state) as conn:
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    line = run_with_state(tmp_path, state)
    assert str(state) in line
    assert "not a rolloutd state store" in line


@pytest.mark.parametrize("level", ["LOUD", "", "verbose"])
def test_a_bad_log_level(tmp_path: Path, level: str) -> None:
    line = run_with_state(tmp_path, tmp_path / "state.db", "--log-level", level)
    assert f"--log-level {level!r}" in line
    assert "DEBUG" in line
    assert not (tmp_path / "state.db").exists()  # refused before anything was opened


def test_log_levels_are_case_insensitive(tmp_path: Path) -> None:
    config = tmp_path / "rolloutd.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "nowhere" / "s.db", port=free_port()))
    result = rolloutd("run", "--config", str(config), "--log-level", "debug")
    assert "does not exist" in one_line(result, 2)  # past the level, stopped by the state


def test_an_invalid_config_is_exit_2_naming_the_path(tmp_path: Path) -> None:
    config = tmp_path / "rolloutd.yaml"
    config.write_text("rollouts: [{name: a, flag: f, steps: [{percent: 500}]}]\n")
    result = rolloutd("run", "--config", str(config))
    assert result.returncode == 2
    assert "rollouts[0].steps[0].percent" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_of_a_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "rolloutd.yaml"
    config.write_text(CONFIG.format(state=tmp_path / "s.db", port=1))
    missing = tmp_path / "events.jsonl"
    line = one_line(rolloutd("replay", "--config", str(config), str(missing)), 2)
    assert str(missing) in line
    assert "Errno" not in line


# -- the admin commands ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    proc, api, _ = start_daemon(tmp_path_factory.mktemp("daemon"), TOKEN)
    yield api
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0


def url_forms(api: Api) -> list[str]:
    port = api.base.rsplit(":", 1)[1]
    return [
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{port}/",
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f" http://localhost:{port}/ ",
    ]


def test_every_url_form_reaches_the_daemon(daemon: Api) -> None:
    for url in url_forms(daemon):
        result = rolloutd("status", "--url", url)
        assert result.returncode == 0, (url, result.stderr)
        assert any(line.split()[:1] == ["co"] for line in result.stdout.splitlines())
        env = {"ROLLOUTD_URL": url}
        result = rolloutd("status", "co", env=env)
        assert result.returncode == 0, (url, result.stderr)
        assert "recent decisions" in result.stdout


def test_a_mutation_through_a_scheme_less_url(daemon: Api) -> None:
    url = daemon.base.removeprefix("http://")
    result = rolloutd("pause", "co", "--url", url, "--token", TOKEN)
    assert result.returncode == 0, result.stderr
    result = rolloutd("resume", "co", "--url", url, env={"ROLLOUTD_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1:9108", "http://[::1", ":::", "127.0.0.1:99999", "http://h:1/?q=1"]
)
def test_a_bad_url_is_a_usage_error(url: str) -> None:
    line = one_line(rolloutd("status", "--url", url), 2)
    assert repr(url) in line


def test_a_wrong_token_is_refused(daemon: Api) -> None:
    result = rolloutd("pause", "co", "--url", daemon.base, "--token", "not-the-token")
    line = one_line(result, 1)
    assert "token refused" in line
    assert daemon.base in line
    assert "set --token" not in line
    assert "not-the-token" not in line


def test_a_missing_token_says_how_to_give_one(daemon: Api) -> None:
    line = one_line(rolloutd("pause", "co", "--url", daemon.base), 1)
    assert "--token" in line
    assert "ROLLOUTD_TOKEN" in line
    assert "refused" not in line


def test_a_refused_command_is_exit_3(daemon: Api) -> None:
    line = one_line(rolloutd("resume", "co", "--url", daemon.base, "--token", TOKEN), 3)
    assert "refused" in line


def test_an_unknown_rollout(daemon: Api) -> None:
    for args in (("status", "nope"), ("pause", "nope", "--token", TOKEN), ("status", "a/b c")):
        line = one_line(rolloutd(*args, "--url", daemon.base), 1)
        assert "no rollout named" in line


def test_an_unreachable_daemon_is_named_by_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (("status",), ("promote", "co", "--token", TOKEN)):
        line = one_line(rolloutd(*args, "--url", url), 1)
        assert f"cannot reach rolloutd at {url}" in line


class _NotRolloutd(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        # The list is not JSON at all; one rollout is JSON, but not what rolloutd answers.
        body = b"<html>a web server</html>" if self.path.endswith("s") else b'{"x": 1}'
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stranger() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotRolloutd)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_something_else_at_the_url(stranger: str) -> None:
    line = one_line(rolloutd("status", "--url", stranger), 1)
    assert stranger in line
    assert "JSON" in line
    line = one_line(rolloutd("status", "co", "--url", stranger), 1)
    assert stranger in line
    assert "unexpected answer" in line


def test_systemd_stops_retrying_on_exit_2(tmp_path: Path) -> None:
    """The code a bad state file gives is the one the unit will not restart on."""
    unit = Path(__file__).parent.parent / "deploy" / "systemd" / "rolloutd.service"
    prevent = [
        line.partition("=")[2].split()
        for line in unit.read_text().splitlines()
        if line.startswith("RestartPreventExitStatus=")
    ]
    assert prevent == [["2"]]
    state = tmp_path / "state.db"
    state.write_bytes(b"garbage " * 64)
    config = tmp_path / "rolloutd.yaml"
    config.write_text(CONFIG.format(state=state, port=free_port()))
    assert rolloutd("run", "--config", str(config)).returncode == int(prevent[0][0])


def test_a_listen_address_in_use_is_logged_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        config = tmp_path / "rolloutd.yaml"
        config.write_text(CONFIG.format(state=tmp_path / "s.db", port=port))
        result = rolloutd("run", "--config", str(config), "--log-format", "json")
    assert result.returncode == 1  # may pass on a retry, once the port is free
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if "task failed" in line]
    assert len(failed) == 1
    assert f"http.listen 127.0.0.1:{port}" in failed[0]
