"""Logs are structured, and no secret of the config ever reaches them."""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from rolloutd.app import logs
from rolloutd.config import parse_config

SECRET = "tok-5f2c9a71d3"


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Any:
    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    yield lines
    logs.set_secrets([])
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def start_json_logs() -> None:
    # Configured inside the test: the handler binds the stderr that capsys replaced.
    logs.configure("INFO", "json")
    logs.set_secrets([SECRET])


def test_lines_are_json_with_level_logger_and_time(json_logs: Any) -> None:
    start_json_logs()
    logging.getLogger("rolloutd.test").warning("hello %s", "world")
    (line,) = json_logs()
    assert line["event"] == "hello world"
    assert line["level"] == "warning"
    assert line["logger"] == "rolloutd.test"
    assert line["timestamp"].endswith("Z")


def test_secrets_are_redacted_in_messages_fields_and_tracebacks(json_logs: Any) -> None:
    start_json_logs()
    log = logging.getLogger("rolloutd.test")
    log.info("unknown rollout %r", SECRET)
    structlog.get_logger("rolloutd.decisions").info("decision", rollout=SECRET, kind="refused")
    try:
        raise RuntimeError(f"connect failed with password {SECRET}")
    except RuntimeError:
        log.exception("broker error")
    lines = json_logs()
    text = json.dumps(lines)
    assert SECRET not in text
    assert lines[0]["event"] == "unknown rollout '***'"
    assert lines[1]["rollout"] == "***"
    assert "password ***" in lines[2]["exception"]
    assert "locals" not in lines[2]["exception"].lower()


def test_secrets_of_finds_every_secret_in_a_config() -> None:
    config = parse_config(
        """
rollouts: [{name: a, flag: f, steps: [{percent: 100}]}]
http: {token: "${T}"}
sources:
  kafka:
    bootstrap_servers: "k:9092"
    security: {protocol: SASL_PLAINTEXT, sasl_mechanism: PLAIN, username: u, password: "${P}"}
alerts:
  - {name: team, type: slack, webhook_url: "${S}"}
  - {name: hook, type: webhook, url: "http://127.0.0.1:1/x", headers: {X-Key: "${H}"}}
""",
        env={
            "T": "token-1111",
            "P": "password-2222",
            "S": "https://hooks/slack-3333",
            "H": "hdr-4444",
        },
    )
    assert sorted(logs.secrets_of(config)) == sorted(
        ["token-1111", "password-2222", "https://hooks/slack-3333", "hdr-4444"]
    )


def test_a_hostile_event_cannot_leak_the_token_through_the_daemon_log(
    tansu: Any, tmp_path: Path
) -> None:
    from test_daemon import GUARDED, TOPICS, Daemon, Kafka, config_text

    tansu.create_topics(TOPICS)
    http = f'{{listen: "127.0.0.1:0", token: "{SECRET}"}}'
    config = config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED, http=http)
    daemon = Daemon(tmp_path, config)
    daemon.start("--log-format", "json")
    try:
        import asyncio

        async def go() -> None:
            async with Kafka(tansu.bootstrap) as kafka:
                await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
                await kafka.send(
                    {"ts": time.time(), "type": "command", "rollout": SECRET, "command": "pause"},
                    topic="rollout.commands",
                )
                await kafka.wait_for(
                    "rollout.decisions", lambda d: any(x["kind"] == "refused" for x in d)
                )

        asyncio.run(go())
        assert daemon.signal(signal.SIGTERM) == 0
    finally:
        daemon.stop()
    output = daemon.output()
    assert SECRET not in output
    refused = [json.loads(x) for x in output.splitlines() if '"refused"' in x]
    assert refused
    assert refused[0]["rollout"] == "***"
