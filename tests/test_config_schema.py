"""`rolloutd config-schema` against every shipped config, with a real JSON Schema validator.

The schema describes the file as written (before `${VAR}` expansion): what the loader
accepts, the schema accepts, and every property says what it is for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rolloutd.config import ConfigError, parse_config

ROOT = Path(__file__).parent.parent
# Every rolloutd config the project ships (compose and Grafana files are not ours).
SHIPPED = sorted(
    [
        *ROOT.glob("config/*.yaml"),
        *ROOT.glob("daemon/rolloutd/tools/scenarios/*.yaml"),
        ROOT / "deploy" / "rolloutd.yaml",
    ]
)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "rolloutd", "config-schema"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(validator: jsonschema.Draft202012Validator, data: object) -> list[str]:
    """Where each error is: inside an anyOf (say an optional section) the deepest one."""
    found = []
    for error in validator.iter_errors(data):
        while error.context:
            error = max(error.context, key=lambda sub: len(sub.absolute_path))
        found.append("/".join(map(str, error.absolute_path)) or "(top)")
    return found


def test_the_shipped_configs_are_all_there() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in SHIPPED}
    assert {"config/rolloutd.yaml", "config/demo.yaml", "deploy/rolloutd.yaml"} <= names
    assert any(name.startswith("daemon/rolloutd/tools/scenarios/") for name in names)
    assert all(path.is_file() for path in SHIPPED)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_shipped_config_validates(
    validator: jsonschema.Draft202012Validator, path: Path
) -> None:
    assert problems(validator, yaml.safe_load(path.read_text())) == []


def properties(node: Any, at: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (path, property schema) anywhere in the schema, $defs included."""
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            yield f"{at}.{name}", sub
        for key, sub in node.items():
            yield from properties(sub, f"{at}/{key}")
    elif isinstance(node, list):
        for index, sub in enumerate(node):
            yield from properties(sub, f"{at}[{index}]")


def test_every_property_has_a_description(schema: dict[str, Any]) -> None:
    found = list(properties(schema))
    assert len(found) > 100  # the walk does reach into $defs
    missing = [at for at, sub in found if not str(sub.get("description", "")).strip()]
    assert missing == []


# (YAML text with references, the environment that makes it valid)
REFERENCES = """
engine: {bucket: "${BUCKET}"}
triggers:
  t:
    metric: "${METRIC}"
    window: "${WINDOW}"
    op: "${OP}"
    threshold: "${THRESHOLD}"
    for: "${FOR:-0}"
    min_samples: "${SAMPLES}"
    action: "${ACTION}"
    after_completion: "${AFTER}"
rollouts:
  - name: "${NAME}"
    flag: f
    start_at: "${START_AT}"
    steps: [{percent: "${PERCENT}", hold: "${HOLD}"}, {percent: 100}]
    triggers: [t]
breakers:
  - {name: b, service: s, window_size: "${SIZE}", failure_rate: "${RATE}"}
http: {listen: "${HOST:-127.0.0.1}:${PORT}"}
alerts:
  - {name: hook, type: "${KIND}", url: "${HOOK_URL}", severities: ["${SEVERITY}"]}
"""
ENV = {
    "BUCKET": "1s",
    "METRIC": "error_rate",
    "WINDOW": "30s",
    "OP": ">",
    "THRESHOLD": "0.05",
    "SAMPLES": "10",
    "ACTION": "pause",
    "AFTER": "true",
    "NAME": "co",
    "START_AT": "2025-11-24T09:00:00Z",
    "PERCENT": "5",
    "HOLD": "10m",
    "SIZE": "50",
    "RATE": "0.25",
    "PORT": "9108",
    "KIND": "webhook",
    "HOOK_URL": "https://example.invalid/hook",
    "SEVERITY": "warning",
}


def test_references_are_valid_wherever_the_loader_takes_them(
    validator: jsonschema.Draft202012Validator,
) -> None:
    config = parse_config(REFERENCES, env=ENV)  # the loader takes every one of them
    trigger = config.triggers["t"]
    assert (trigger.threshold, trigger.min_samples, trigger.after_completion) == (0.05, 10, True)
    assert config.breakers[0].window_size == 50
    assert config.http.listen == "127.0.0.1:9108"
    assert problems(validator, yaml.safe_load(REFERENCES)) == []
    # ...and the same values written out are valid too.
    assert problems(validator, yaml.safe_load(REFERENCES.replace('"${SAMPLES}"', "10"))) == []


def test_a_reference_the_loader_refuses_is_refused(
    validator: jsonschema.Draft202012Validator,
) -> None:
    """qos is an integer enum: an expanded "1" is a string, which the loader rejects."""
    text = 'sources: {mqtt: {url: "mqtt://127.0.0.1:1883", qos: "${QOS}"}}\n'
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={"QOS": "1"})
    assert [line.split(":")[0] for line in caught.value.errors] == ["sources.mqtt.qos"]
    assert problems(validator, yaml.safe_load(text)) == ["sources/mqtt/qos"]


def test_plain_text_is_not_a_reference(validator: jsonschema.Draft202012Validator) -> None:
    for bad in ("VAR", "$VAR", "${}", "${1X}", "{X}"):
        data = {"triggers": {"t": {"metric": "error_rate", "op": ">", "threshold": bad}}}
        assert problems(validator, data) == ["triggers/t/threshold"], bad


def unknown_keys(validator: jsonschema.Draft202012Validator, data: object) -> set[str]:
    """Keys refused as not in a mapping's properties, anywhere in the error tree."""
    found: set[str] = set()
    stack = list(validator.iter_errors(data))
    while stack:
        error = stack.pop()
        stack += error.context or []
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            at = "/".join(map(str, error.absolute_path))
            extra = set(error.instance) - set(error.schema.get("properties", {}))
            found |= {f"{at}/{key}".lstrip("/") for key in extra}
    return found


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("rollouts: []\nrolouts: []\n", "rolouts"),
        ("engine: {bucket: 1s, buckets: 2}\n", "engine/buckets"),
        (
            "triggers: {t: {metric: error_rate, op: '>', threshold: 1, windw: 5m}}",
            "triggers/t/windw",
        ),
        ("alerts: [{name: a, type: slack, webhook_url: x, channel: y}]\n", "alerts/0/channel"),
        ("sources: {mqtt: {url: 'mqtt://h', qos: 1, retain: true}}\n", "sources/mqtt/retain"),
    ],
)
def test_an_unknown_key_fails_validation(
    validator: jsonschema.Draft202012Validator, text: str, key: str
) -> None:
    with pytest.raises(ConfigError):
        parse_config(text, env={})
    data = yaml.safe_load(text)
    assert not validator.is_valid(data)
    assert key in unknown_keys(validator, data)
