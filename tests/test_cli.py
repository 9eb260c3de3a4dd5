"""`rolloutd check-config` and `rolloutd config-schema` through the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SECRETS = {
    "KAFKA_PASSWORD": "kafka-pw-123",
    "MQTT_PASSWORD": "mqtt-pw-456",
    "ROLLOUTD_TOKEN": "tok-789",
    "PD_ROUTING_KEY": "pd-key-abc",
    "SLACK_WEBHOOK_URL": "https://hooks.example.invalid/T000/B000/secretpath",
    "AM_TOKEN": "am-token-def",
    "HOOK_SECRET": "hook-secret-ghi",
    "UNLEASH_CLIENT_TOKEN": "unleash-client-jkl",
}


def rolloutd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command with `env` added; the caller's own token and URL are never passed on."""
    clean = {k: v for k, v in os.environ.items() if k not in ("ROLLOUTD_TOKEN", "ROLLOUTD_URL")}
    return subprocess.run(
        [sys.executable, "-m", "rolloutd", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**clean, **(env or {})},
    )


def test_check_config_explains_the_example_and_prints_no_secret() -> None:
    result = rolloutd("check-config", str(ROOT / "config" / "rolloutd.yaml"), env=SECRETS)
    assert result.returncode == 0, result.stderr
    assert ": ok" in result.stdout
    assert "rollout" in result.stdout
    for secret in SECRETS.values():
        assert secret not in result.stdout + result.stderr


def test_check_config_names_every_error_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "triggers:\n"
        "  spike: {metric: error_rate, window: 5 minutes, op: '>', threshold: 0.1}\n"
        "rollouts:\n"
        "  - name: a\n"
        "    flag: f\n"
        "    steps: [{percent: 150, hold: 1m}, {percent: 100}]\n"
        "    triggers: [spike, nope]\n"
    )
    result = rolloutd("check-config", str(bad))
    assert result.returncode == 1
    assert "triggers.spike.window" in result.stderr
    assert "rollouts[0].steps[0].percent" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr


def test_check_config_reports_a_missing_secret_by_name_only() -> None:
    env = {k: v for k, v in SECRETS.items() if k != "ROLLOUTD_TOKEN"}
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rolloutd",
            "check-config",
            str(ROOT / "config" / "rolloutd.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**clean, **env},
    )
    assert result.returncode == 1
    assert "http.token" in result.stderr
    assert "ROLLOUTD_TOKEN" in result.stderr


def test_config_schema_is_json_schema_for_the_file() -> None:
    result = rolloutd("config-schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["type"] == "object"
    assert {"triggers", "rollouts"} <= set(schema["properties"])
