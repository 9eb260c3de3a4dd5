"""The configuration contract: what loads, what it becomes, and how refusals read."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args
from zoneinfo import ZoneInfo

import pydantic
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from rolloutd.config import (
    Config,
    ConfigError,
    Op,
    config_json_schema,
    load_config,
    parse_config,
)
from rolloutd.config.durations import DURATION_PATTERN, format_duration, parse_duration
from rolloutd.core import spec
from rolloutd.core.schedule import parse_cron
from rolloutd.core.spec import Baseline, EngineSpec, RolloutSpec, StepSpec, TriggerSpec

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "rolloutd.yaml"
EXAMPLE_ENV = {
    name: f"example-{name.lower()}"
    for name in (
        "KAFKA_PASSWORD",
        "MQTT_PASSWORD",
        "ROLLOUTD_TOKEN",
        "PD_ROUTING_KEY",
        "SLACK_WEBHOOK_URL",
        "AM_TOKEN",
        "HOOK_SECRET",
        "UNLEASH_CLIENT_TOKEN",
    )
}

BASE: dict[str, Any] = {
    "triggers": {
        "error-spike": {"metric": "error_rate", "window": "5m", "op": ">", "threshold": 0.01},
        "stuck": {"metric": "gauge:progress", "window": "10m", "op": "unchanged"},
    },
    "rollouts": [
        {
            "name": "checkout-v2",
            "flag": "new_checkout",
            "steps": [
                {"percent": 5, "hold": "10m"},
                {"percent": 25, "hold": "30m"},
                {"percent": 100},
            ],
            "triggers": ["error-spike"],
        },
    ],
}


def parse(data: dict[str, Any], env: dict[str, str] | None = None) -> Config:
    return parse_config(yaml.safe_dump(data, sort_keys=False), env=env or {})


def errors_of(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(data, env)
    return caught.value.errors


def with_change(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    change(data)
    return data


def second_rollout(**fields: Any) -> dict[str, Any]:
    return {"name": "other", "flag": "other_flag", "steps": [{"percent": 100}], **fields}


def trigger(data: dict[str, Any], name: str = "error-spike") -> dict[str, Any]:
    found: dict[str, Any] = data["triggers"][name]
    return found


def rollout(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    found: dict[str, Any] = data["rollouts"][index]
    return found


INVALID: list[tuple[str, Callable[[dict[str, Any]], object], str, str]] = [
    (
        "unknown key",
        lambda d: trigger(d).update(thresold=1),
        "triggers.error-spike",
        "unknown key 'thresold' (did you mean 'threshold'?)",
    ),
    (
        "unknown top-level key",
        lambda d: d.update(rollout=[]),
        "(top level)",
        "unknown key 'rollout'",
    ),
    (
        "bad duration",
        lambda d: trigger(d).update(window="5 minutes"),
        "triggers.error-spike.window",
        "not a duration: '5 minutes'",
    ),
    (
        "negative duration",
        lambda d: trigger(d).update({"for": -5}),
        "triggers.error-spike.for",
        "not a duration: -5",
    ),
    (
        "zero window",
        lambda d: trigger(d).update(window=0),
        "triggers.error-spike.window",
        "must be > 0",
    ),
    (
        "bad hold",
        lambda d: rollout(d)["steps"][0].update(hold="soon"),
        "rollouts[0].steps[0].hold",
        "not a duration: 'soon'",
    ),
    (
        "percent 150",
        lambda d: rollout(d)["steps"][1].update(percent=150),
        "rollouts[0].steps[1].percent",
        "must be <= 100, got 150",
    ),
    (
        "steps not increasing",
        lambda d: rollout(d)["steps"][1].update(percent=5),
        "rollouts[0].steps[1].percent",
        "percents must increase: 5 after 5",
    ),
    (
        "hold missing",
        lambda d: rollout(d)["steps"][1].pop("hold"),
        "rollouts[0].steps[1].hold",
        "required on every step but the last",
    ),
    ("no steps", lambda d: rollout(d).update(steps=[]), "rollouts[0].steps", "must not be empty"),
    (
        "unknown trigger",
        lambda d: rollout(d).update(triggers=["error-spik"]),
        "rollouts[0].triggers[0]",
        "unknown trigger 'error-spik' (did you mean 'error-spike'?)",
    ),
    (
        "trigger listed twice",
        lambda d: rollout(d).update(triggers=["stuck", "stuck"]),
        "rollouts[0].triggers[1]",
        "trigger 'stuck' is listed twice",
    ),
    (
        "baseline on unchanged",
        lambda d: trigger(d, "stuck").update(baseline={"factor": 2}),
        "triggers.stuck.baseline",
        "not allowed with op 'unchanged'",
    ),
    (
        "threshold on absent",
        lambda d: trigger(d, "stuck").update(op="absent", threshold=1),
        "triggers.stuck.threshold",
        "not allowed with op 'absent'",
    ),
    (
        "unchanged on a request metric",
        lambda d: trigger(d, "stuck").update(metric="error_rate"),
        "triggers.stuck.op",
        "'unchanged' applies only to gauge: and counter: metrics",
    ),
    (
        "missing threshold",
        lambda d: trigger(d).pop("threshold"),
        "triggers.error-spike",
        "op '>' needs a threshold, a baseline or both",
    ),
    (
        "baseline on its own cohort",
        lambda d: trigger(d).update(baseline={"cohort": "canary", "factor": 2}),
        "triggers.error-spike.baseline.cohort",
        "must differ from the cohort 'canary'",
    ),
    (
        "baseline factor 0",
        lambda d: trigger(d).update(baseline={"factor": 0}),
        "triggers.error-spike.baseline.factor",
        "must be > 0",
    ),
    (
        "unknown metric",
        lambda d: trigger(d).update(metric="errors"),
        "triggers.error-spike.metric",
        "not a metric",
    ),
    (
        "unknown op",
        lambda d: trigger(d).update(op="=="),
        "triggers.error-spike.op",
        "expected '>', '>=', '<', '<=', 'unchanged' or 'absent'",
    ),
    (
        "negative min_samples",
        lambda d: trigger(d).update(min_samples=-1),
        "triggers.error-spike.min_samples",
        "must be >= 0, got -1",
    ),
    (
        "infinite threshold",
        lambda d: trigger(d).update(threshold=float("inf")),
        "triggers.error-spike.threshold",
        "must be a finite number",
    ),
    (
        "bad trigger name",
        lambda d: d["triggers"].update({"bad name": d["triggers"]["stuck"]}),
        "triggers.bad name",
        "not a valid name",
    ),
    (
        "duplicate rollout",
        lambda d: d["rollouts"].append(second_rollout(name="checkout-v2")),
        "rollouts[1].name",
        "duplicate rollout name 'checkout-v2'",
    ),
    (
        "two rollouts one flag",
        lambda d: d["rollouts"].append(second_rollout(flag="new_checkout")),
        "rollouts[1].flag",
        "flag 'new_checkout' is already driven by rollout 'checkout-v2'",
    ),
    (
        "inline trigger without name",
        lambda d: rollout(d).update(
            triggers=[{"metric": "error_rate", "window": "1m", "op": ">", "threshold": 0.1}]
        ),
        "rollouts[0].triggers[0].name",
        "required",
    ),
    (
        "inline trigger breaking a rule",
        lambda d: rollout(d).update(
            triggers=[{"name": "x", "metric": "error_rate", "window": "1m", "op": ">"}]
        ),
        "rollouts[0].triggers[0]",
        "op '>' needs a threshold, a baseline or both",
    ),
    (
        "unknown key in inline trigger",
        lambda d: rollout(d).update(
            triggers=[
                {
                    "name": "x",
                    "metric": "error_rate",
                    "window": "1m",
                    "op": ">",
                    "threshold": 0.1,
                    "cohrt": "a",
                }
            ]
        ),
        "rollouts[0].triggers[0]",
        "unknown key 'cohrt'",
    ),
    (
        "trigger reference not a name",
        lambda d: rollout(d).update(triggers=[42]),
        "rollouts[0].triggers[0]",
        "expected a trigger name or an inline trigger mapping",
    ),
    (
        "window not a multiple of the bucket",
        lambda d: trigger(d).update(window="1500ms"),
        "triggers.error-spike.window",
        "1s500ms is not a whole number of 1s buckets",
    ),
    (
        "inline window shorter than the bucket",
        lambda d: (d.update(engine={"bucket": "10s"}), d["triggers"]["stuck"].update(window="5s")),
        "triggers.stuck.window",
        "5s is not a whole number of 10s buckets",
    ),
    (
        "alert of unknown type",
        lambda d: d.update(alerts=[{"name": "a", "type": "email"}]),
        "alerts[0]",
        "unknown 'type' 'email'",
    ),
    (
        "alert without type",
        lambda d: d.update(alerts=[{"name": "a"}]),
        "alerts[0]",
        "required key 'type' is missing",
    ),
    (
        "alert without its key",
        lambda d: d.update(alerts=[{"name": "a", "type": "pagerduty"}]),
        "alerts[0].routing_key",
        "required",
    ),
    (
        "unknown key in an alert",
        lambda d: d.update(
            alerts=[{"name": "a", "type": "slack", "webhook_url": "x", "chanel": 1}]
        ),
        "alerts[0]",
        "unknown key 'chanel'",
    ),
    (
        "alert filter names no rollout",
        lambda d: d.update(
            alerts=[{"name": "a", "type": "slack", "webhook_url": "x", "rollouts": ["nope"]}]
        ),
        "alerts[0].rollouts[0]",
        "unknown rollout 'nope'",
    ),
    (
        "bad severity filter",
        lambda d: d.update(
            alerts=[{"name": "a", "type": "slack", "webhook_url": "x", "severities": ["urgent"]}]
        ),
        "alerts[0].severities[0]",
        "expected 'critical', 'warning' or 'info'",
    ),
    (
        "SASL without password",
        lambda d: d.update(
            sources={
                "kafka": {
                    "bootstrap_servers": "k:9092",
                    "security": {
                        "protocol": "SASL_SSL",
                        "sasl_mechanism": "PLAIN",
                        "username": "u",
                    },
                }
            }
        ),
        "sources.kafka.security.password",
        "required with protocol SASL_SSL",
    ),
    (
        "client cert without key",
        lambda d: d.update(sources={"mqtt": {"url": "mqtts://m", "cert_file": "c.pem"}}),
        "sources.mqtt.key_file",
        "cert_file and key_file go together",
    ),
    (
        "sink without its source",
        lambda d: d.update(sinks={"kafka": {}}),
        "sinks.kafka",
        "needs sources.kafka",
    ),
    (
        "bad listen address",
        lambda d: d.update(http={"listen": "9108"}),
        "http.listen",
        "not a host:port address",
    ),
    (
        "missing env var",
        lambda d: d.update(http={"token": "${ROLLOUTD_TOKEN}"}),
        "http.token",
        "environment variable ROLLOUTD_TOKEN is not set",
    ),
    (
        "malformed env reference",
        lambda d: d.update(state={"path": "${not valid}"}),
        "state.path",
        "bad ${...} reference",
    ),
    ("empty string", lambda d: d.update(state={"path": ""}), "state.path", "must not be empty"),
    ("not a mapping", lambda d: d.update(engine=[1]), "engine", "expected a mapping, got a list"),
    (
        "cron hour out of range",
        lambda d: rollout(d).update(advance_window={"cron": "* 25 * * *"}),
        "rollouts[0].advance_window.cron",
        "field 2 (hour): 25 out of range 0-23",
    ),
    (
        "cron with four fields",
        lambda d: rollout(d).update(advance_window={"cron": "* 9 * *"}),
        "rollouts[0].advance_window.cron",
        "expected 5 fields",
    ),
    (
        "cron missing",
        lambda d: rollout(d).update(advance_window={"timezone": "UTC"}),
        "rollouts[0].advance_window.cron",
        "required",
    ),
    (
        "unknown time zone",
        lambda d: rollout(d).update(
            advance_window={"cron": "* * * * *", "timezone": "Europe/Berln"}
        ),
        "rollouts[0].advance_window.timezone",
        "unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
    ),
    (
        "time zone as a path",
        lambda d: rollout(d).update(
            advance_window={"cron": "* * * * *", "timezone": "/etc/passwd"}
        ),
        "rollouts[0].advance_window.timezone",
        "unknown time zone '/etc/passwd'",
    ),
    (
        "naive start_at",
        lambda d: rollout(d).update(start_at="2025-11-24T09:00:00"),
        "rollouts[0].start_at",
        "needs a UTC offset",
    ),
    (
        "start_at not a time",
        lambda d: rollout(d).update(start_at="monday 9am"),
        "rollouts[0].start_at",
        "not an RFC 3339 timestamp: 'monday 9am'",
    ),
    (
        "start_at not a date",
        lambda d: rollout(d).update(start_at="2025-02-30T09:00:00Z"),
        "rollouts[0].start_at",
        "not a valid time: '2025-02-30T09:00:00Z'",
    ),
    (
        "start_at as a number",
        lambda d: rollout(d).update(start_at=1763971200),
        "rollouts[0].start_at",
        "expected an RFC 3339 timestamp",
    ),
    (
        "start_at on a manual rollout",
        lambda d: rollout(d).update(start="manual", start_at="2025-11-24T09:00:00Z"),
        "rollouts[0].start_at",
        "only with start: immediately",
    ),
]


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_config_names_the_path(
    change: Callable[[dict[str, Any]], object], path: str, fragment: str
) -> None:
    errors = errors_of(with_change(change))
    matching = [e for e in errors if e.startswith(f"{path}: ")]
    assert matching, errors
    assert any(fragment in e for e in matching), errors


def test_base_config_is_valid() -> None:
    # Without this, every invalid case above could pass for the wrong reason.
    assert parse(BASE).rollouts[0].name == "checkout-v2"


def test_every_problem_is_reported_at_once() -> None:
    data = with_change(lambda d: (trigger(d).update(window="x"), rollout(d).update(bake="y")))
    assert sorted(errors_of(data)) == [
        "rollouts[0].bake: not a duration: 'y' (write e.g. 30s, 5m, 1h30m, 250ms)",
        "triggers.error-spike.window: not a duration: 'x' (write e.g. 30s, 5m, 1h30m, 250ms)",
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("rollouts: [\n  {name: a\n", "line 3, column 1"),
        ("triggers:\n  a: {}\n  a: {}\n", "line 3, column 3: duplicate key 'a'"),
        ("- just\n- a list\n", "(top level): expected a mapping, got a list"),
        ("", "(top level): expected a mapping, got nothing (null)"),
    ],
)
def test_yaml_problems(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="bad.yaml", env={})
    assert any(fragment in e for e in caught.value.errors), caught.value.errors
    assert str(caught.value).startswith("bad.yaml: invalid configuration\n  ")


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.errors == [f"{missing}: cannot read: No such file or directory"]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("250ms", 0.25),
        ("1m500ms", 60.5),
        ("1.5h", 5400.0),
        ("90", 90.0),
        ("0", 0.0),
        (45, 45.0),
        (0.5, 0.5),
        (0, 0.0),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    if isinstance(value, str):
        assert re.fullmatch(DURATION_PATTERN, value)


@pytest.mark.parametrize(
    "value",
    [
        "5 minutes",
        "",
        "m",
        "5m3",
        "1m1h",
        "1h1h",
        " 5m",
        "1e3",
        "-5",
        "inf",
        "5M",
        -1,
        float("nan"),
        float("inf"),
        True,
        None,
        [5],
    ],
)
def test_not_durations(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)
    if isinstance(value, str):
        assert not re.fullmatch(DURATION_PATTERN, value)


@given(st.integers(min_value=0, max_value=10**10))
def test_formatted_durations_parse_back(millis: int) -> None:
    assert parse_duration(format_duration(millis / 1000)) == pytest.approx(millis / 1000)


def test_format_duration_reads_naturally() -> None:
    assert [format_duration(s) for s in (0, 0.25, 90, 5400, 86400)] == [
        "0s",
        "250ms",
        "1m30s",
        "1h30m",
        "1d",
    ]


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("pre-${A}-${B}-post", {"A": "1", "B": "2"}, "pre-1-2-post"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": ""}, "fallback"),
        ("${A:-fallback}", {"A": "set"}, "set"),
        ("<${A:-}>", {}, "<>"),
        ("<${A}>", {"A": ""}, "<>"),
        ("$${A}", {"A": "x"}, "${A}"),
        ("cost $5", {}, "cost $5"),
    ],
)
def test_env_substitution(text: str, env: dict[str, str], expected: str) -> None:
    data = with_change(lambda d: d.update(state={"path": text}))
    assert parse(data, env).state.path == expected


def test_env_substitution_reaches_lists_and_durations() -> None:
    data = with_change(
        lambda d: (
            rollout(d)["steps"][0].update(hold="${HOLD}"),
            rollout(d).update(triggers=["${TRIGGER}"]),
        )
    )
    config = parse(data, {"HOLD": "2m", "TRIGGER": "stuck"})
    assert config.rollouts[0].steps[0].hold == 120.0
    assert config.rollouts[0].triggers == ("stuck",)


def test_env_defaults_to_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUTD_TEST_STATE", "/var/lib/rolloutd/state.db")
    text = yaml.safe_dump(with_change(lambda d: d.update(state={"path": "${ROLLOUTD_TEST_STATE}"})))
    assert parse_config(text).state.path == "/var/lib/rolloutd/state.db"


def test_to_spec() -> None:
    data = with_change(
        lambda d: (
            trigger(d).update(
                {
                    "baseline": {"factor": 5},
                    "for": "30s",
                    "min_samples": 100,
                    "action": "pause",
                    "severity": "warning",
                    "after_completion": True,
                }
            ),
            rollout(d).update(
                start="manual",
                bake="1h",
                triggers=[
                    {
                        "name": "p99",
                        "metric": "latency_p99",
                        "window": 60,
                        "op": ">=",
                        "threshold": 800,
                    },
                    "error-spike",
                ],
            ),
            rollout(d)["steps"][2].update(hold="5m"),
            d.update(engine={"bucket": "500ms"}),
        )
    )
    expected = EngineSpec(
        bucket=0.5,
        rollouts=(
            RolloutSpec(
                name="checkout-v2",
                flag="new_checkout",
                start="manual",
                bake=3600.0,
                steps=(StepSpec(5.0, 600.0), StepSpec(25.0, 1800.0), StepSpec(100.0, 0.0)),
                triggers=(
                    TriggerSpec(
                        name="p99", metric="latency_p99", op=">=", window=60.0, threshold=800.0
                    ),
                    TriggerSpec(
                        name="error-spike",
                        metric="error_rate",
                        op=">",
                        window=300.0,
                        threshold=0.01,
                        baseline=Baseline("control", 5.0),
                        for_=30.0,
                        min_samples=100,
                        action="pause",
                        severity="warning",
                        after_completion=True,
                    ),
                ),
            ),
        ),
    )
    assert parse(data).to_spec() == expected


def test_defaults() -> None:
    config = parse({"rollouts": [second_rollout()]})
    assert config.engine.bucket == 1.0
    assert config.state.path == "./rolloutd-state.db"
    assert config.http.listen == "127.0.0.1:9108"
    assert config.http.token is None
    assert config.sources.kafka is None
    assert config.alerts == ()
    assert config.to_spec().rollouts[0].start == "immediately"


def test_service_sections_and_their_defaults() -> None:
    config = parse(
        {
            "sources": {
                "kafka": {"bootstrap_servers": "a:9092, b:9092", "topics": {"metrics": "only.one"}},
                "mqtt": {"url": "mqtt://broker:1883", "topics": "fleet/#"},
            },
            "sinks": {"kafka": {}, "mqtt": {}},
            "http": {"listen": "[::1]:9000"},
        }
    )
    kafka, mqtt = config.sources.kafka, config.sources.mqtt
    assert kafka is not None
    assert mqtt is not None
    assert kafka.bootstrap_servers == ("a:9092", "b:9092")
    assert kafka.topics.metrics == ("only.one",)
    assert kafka.topics.commands == "rollout.commands"
    assert (kafka.group_id, kafka.auto_offset_reset, kafka.security.protocol) == (
        "rolloutd",
        "latest",
        "PLAINTEXT",
    )
    assert (mqtt.topics, mqtt.qos) == (("fleet/#",), 1)
    assert config.sinks.kafka is not None
    assert config.sinks.mqtt is not None
    assert config.sinks.kafka.flags_topic == "rollout.flags"
    assert config.sinks.kafka.decisions_topic == "rollout.decisions"
    assert config.sinks.mqtt.flags_prefix == "rollouts/flags"
    assert config.http.address == ("::1", 9000)


def test_alert_filters() -> None:
    config = parse(
        with_change(
            lambda d: d.update(
                alerts=[
                    {
                        "name": "pd",
                        "type": "pagerduty",
                        "routing_key": "k",
                        "severities": ["critical"],
                    },
                    {"name": "all", "type": "webhook", "url": "https://h.invalid/x"},
                ]
            )
        )
    )
    paging, everything = config.alerts
    assert paging.type == "pagerduty"
    assert paging.url == "https://events.pagerduty.com/v2/enqueue"
    assert paging.accepts("checkout-v2", "critical")
    assert not paging.accepts("checkout-v2", "warning")
    assert everything.accepts("anything", "info")
    assert everything.send_resolved


def test_config_is_frozen() -> None:
    config = parse(BASE)
    with pytest.raises(pydantic.ValidationError) as refused:
        config.engine.bucket = 5.0  # type: ignore[misc]
    assert [e["type"] for e in refused.value.errors()] == ["frozen_instance"]


def test_config_ops_match_the_core() -> None:
    assert get_args(Op) == spec.COMPARISON_OPS + spec.PRESENCE_OPS


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE, env=EXAMPLE_ENV)
    engine = config.to_spec()
    assert [r.name for r in engine.rollouts] == ["checkout-v2", "orders-split"]
    assert [t.name for t in engine.rollouts[0].triggers] == [
        "error-spike",
        "slow-canary",
        "worse-than-control",
        "worse-than-control:srm",
        "checkout-availability",
        "users-breaker-open",
    ]
    assert [b.name for b in engine.breakers] == ["user-service-v2"]
    kafka = config.sources.kafka
    assert kafka is not None
    assert kafka.security.password is not None
    assert kafka.security.password.get_secret_value() == "example-kafka_password"
    assert {alert.type for alert in config.alerts} == {
        "pagerduty",
        "slack",
        "alertmanager",
        "webhook",
    }


def _schema_keys(schema: dict[str, Any], name: str) -> set[str]:
    properties: dict[str, Any] = schema["$defs"][name]["properties"]
    return set(properties)


def test_example_config_sets_every_option() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    schema = config_json_schema()
    trigger_keys = set().union(*(example["triggers"].values()))
    assert _schema_keys(schema, "Trigger") == trigger_keys
    kafka = example["sources"]["kafka"]
    assert _schema_keys(schema, "KafkaSource") == set(kafka)
    assert _schema_keys(schema, "KafkaSecurity") == set(kafka["security"])
    assert _schema_keys(schema, "MqttSource") == set(example["sources"]["mqtt"])
    assert _schema_keys(schema, "KafkaTopics") == set(kafka["topics"])
    assert _schema_keys(schema, "Baseline") == set(trigger(example)["baseline"])
    assert _schema_keys(schema, "Rollout") == set(example["rollouts"][0])
    for section, name in (("engine", "Engine"), ("http", "Http")):
        assert _schema_keys(schema, name) == set(example[section])
    # url (PostgreSQL) and its lease go in place of path: deploy/rolloutd-ha.yaml sets them
    assert _schema_keys(schema, "State") == set(example["state"]) | {"url", "lease"}
    assert _schema_keys(schema, "KafkaSink") == set(example["sinks"]["kafka"])
    assert _schema_keys(schema, "MqttSink") == set(example["sinks"]["mqtt"])
    assert _schema_keys(schema, "Breaker") == set(example["breakers"][0])
    assert set(schema["properties"]) == set(example)
    alert_keys = set().union(*example["alerts"])
    kinds = ("PagerDutyAlert", "SlackAlert", "AlertmanagerAlert", "WebhookAlert")
    assert set().union(*(_schema_keys(schema, kind) for kind in kinds)) == alert_keys
    for kind in kinds:
        assert _schema_keys(schema, kind) <= alert_keys


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        own = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return own.union(*(_refs(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(value) for value in node))
    return set()


def test_json_schema_shape() -> None:
    schema = config_json_schema()
    json.dumps(schema)  # serialisable as-is
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert {"triggers", "rollouts", "engine", "sources", "sinks", "state", "http", "alerts"} <= (
        set(schema["properties"])
    )
    for ref in _refs(schema):
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref
    trigger_props = schema["$defs"]["Trigger"]["properties"]
    assert "for" in trigger_props
    assert "for_" not in trigger_props
    # window: a duration, or left out for breaker: metrics (checked by a validator)
    assert {t["type"] for t in trigger_props["window"]["anyOf"]} == {"string", "number", "null"}
    assert schema["$defs"]["Trigger"]["required"] == ["metric"]  # op, or a judge


SECRET = "hunter2-SECRET-value"


def _secret_config(secret_place: str) -> dict[str, Any]:
    reference = "${SECRET}" if secret_place == "env" else SECRET
    return with_change(
        lambda d: d.update(
            sources={
                "kafka": {
                    "bootstrap_servers": "k:9092",
                    "security": {
                        "protocol": "SASL_SSL",
                        "sasl_mechanism": "PLAIN",
                        "username": "u",
                        "password": reference,
                    },
                },
                "mqtt": {"url": "mqtt://m", "username": "u", "password": reference},
            },
            http={"token": reference},
            alerts=[
                {"name": "pd", "type": "pagerduty", "routing_key": reference},
                {"name": "slack", "type": "slack", "webhook_url": reference},
                {
                    "name": "hook",
                    "type": "webhook",
                    "url": "https://h.invalid",
                    "headers": {"Authorization": reference},
                },
            ],
        )
    )


@pytest.mark.parametrize("secret_place", ["literal", "env"])
def test_secrets_never_show(secret_place: str) -> None:
    config = parse(_secret_config(secret_place), {"SECRET": SECRET})
    assert config.http.token is not None
    assert config.http.token.get_secret_value() == SECRET
    for text in (str(config), repr(config), config.summary(), config.model_dump_json()):
        assert SECRET not in text


@pytest.mark.parametrize("secret_place", ["literal", "env"])
def test_secrets_never_show_in_errors(secret_place: str) -> None:
    data = _secret_config(secret_place)
    data["alerts"].append({"name": "pd", "type": "pagerduty", "routing_key": 12345678})
    data["http"]["listen"] = "nowhere"
    data["sources"]["mqtt"]["url"] = f"mqtt://user:{SECRET}@m"
    with pytest.raises(ConfigError) as caught:
        parse(data, {"SECRET": SECRET})
    text = str(caught.value)
    assert "alerts[3].routing_key: expected a string, got a value of type int" in text
    assert "sources.mqtt.url: not an mqtt(s)://host[:port] URL" in text
    assert SECRET not in text
    assert "12345678" not in text


def test_summary() -> None:
    data = with_change(
        lambda d: (
            trigger(d).update({"baseline": {"factor": 5}, "for": "5m"}),
            d.update(
                http={"token": "t"},
                alerts=[{"name": "pd", "type": "pagerduty", "routing_key": "k"}],
            ),
        )
    )
    assert parse(data).summary().splitlines() == [
        "1 rollout(s), bucket 1s",
        "rollout checkout-v2: flag new_checkout, start immediately",
        "  steps: 5% 10m -> 25% 30m -> 100%, bake 0s",
        "  trigger error-spike: error_rate[canary] > max(0.01, 5x control) over 5m for 5m"
        " -> rollback (critical)",
        "unused triggers: stuck",
        "sources: none",
        "sinks: none",
        "state: ./rolloutd-state.db",
        "http: 127.0.0.1:9108 (token set)",
        "alerts: pd (pagerduty)",
    ]


def test_summary_bounds_for_lower_limits() -> None:
    data = with_change(lambda d: trigger(d).update(op="<", baseline={"factor": 0.5}))
    assert "error_rate[canary] < min(0.01, 0.5x control)" in parse(data).summary()


# -- schedules ------------------------------------------------------------------------------


def test_schedule_to_spec() -> None:
    data = with_change(
        lambda d: rollout(d).update(
            start_at="2025-11-24T09:00:00+01:00",
            advance_window={"cron": "* 9-15 * * mon-fri", "timezone": "Europe/Berlin"},
        )
    )
    rollout_spec = parse(data).to_spec().rollouts[0]
    assert rollout_spec.start_at == 1763971200.0  # 2025-11-24T08:00:00Z
    assert rollout_spec.advance_window == parse_cron(
        "* 9-15 * * mon-fri", ZoneInfo("Europe/Berlin")
    )
    # Without a zone the expression reads in UTC; without either, nothing is scheduled.
    data = with_change(lambda d: rollout(d).update(advance_window={"cron": "0 9 * * *"}))
    window = parse(data).to_spec().rollouts[0].advance_window
    assert window is not None
    assert window.tz == ZoneInfo("UTC")
    plain = parse(BASE).to_spec().rollouts[0]
    assert (plain.start_at, plain.advance_window) == (None, None)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("2025-11-24T09:00:00+01:00", 1763971200.0),
        ("2025-11-24T08:00:00Z", 1763971200.0),
        ("2025-11-24t08:00:00.5z", 1763971200.5),
        ("2025-11-24 03:00:00-05:00", 1763971200.0),
    ],
)
def test_start_at_spellings_quoted_or_not(written: str, expected: float) -> None:
    for value in (written, f'"{written}"'):  # unquoted, YAML makes a datetime of it
        text = (
            "rollouts:\n"
            "  - {name: a, flag: f, steps: [{percent: 100}],\n"
            f"     start_at: {value}}}\n"
        )
        assert parse_config(text, env={}).to_spec().rollouts[0].start_at == expected


def test_unquoted_naive_start_at_is_refused_too() -> None:
    text = (
        "rollouts:\n"
        "  - {name: a, flag: f, steps: [{percent: 100}], start_at: 2025-11-24 09:00:00}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env={})
    assert caught.value.errors == [
        "rollouts[0].start_at: needs a UTC offset, or Z for UTC "
        "(e.g. 2025-11-24T09:00:00+01:00 or 2025-11-24T08:00:00Z)"
    ]


def test_summary_shows_schedules() -> None:
    data = with_change(
        lambda d: rollout(d).update(
            start_at="2025-11-24T09:00:00+01:00",
            advance_window={"cron": "* 9-15 * * mon-fri", "timezone": "Europe/Berlin"},
        )
    )
    lines = parse(data).summary().splitlines()
    assert lines[1:4] == [
        "rollout checkout-v2: flag new_checkout, start at 2025-11-24T08:00:00Z",
        "  steps: 5% 10m -> 25% 30m -> 100%, bake 0s",
        "  steps advance only in: * 9-15 * * mon-fri (Europe/Berlin)",
    ]


def test_schema_describes_schedules() -> None:
    schema = config_json_schema()
    example = yaml.safe_load(EXAMPLE.read_text())
    assert _schema_keys(schema, "AdvanceWindow") == set(example["rollouts"][0]["advance_window"])
    assert schema["$defs"]["AdvanceWindow"]["required"] == ["cron"]
    start_at = schema["$defs"]["Rollout"]["properties"]["start_at"]
    timestamp = next(option for option in start_at["anyOf"] if option.get("type") == "string")
    assert timestamp["format"] == "date-time"
    pattern = timestamp["pattern"]
    assert re.fullmatch(pattern, "2025-11-24T09:00:00+01:00")
    assert re.fullmatch(pattern, "2025-11-24T08:00:00.5Z")
    assert not re.fullmatch(pattern, "2025-11-24T09:00:00")  # no offset
    assert not re.fullmatch(pattern, "monday")


BREAKERS = """
breakers:
  - {name: users, service: user-service, minimum_calls: 10}
rollouts:
  - name: a
    flag: f
    steps: [{percent: 10, hold: 1m}, {percent: 100}]
    triggers:
      - {name: users-open, metric: "breaker:users", op: ">=", threshold: 1}
"""


def test_breakers_and_breaker_triggers_reach_the_spec() -> None:
    engine = parse_config(BREAKERS).to_spec()
    assert [b.name for b in engine.breakers] == ["users"]
    assert engine.breakers[0].service == "user-service"
    trigger = engine.rollouts[0].triggers[0]
    assert (trigger.metric_kind, trigger.metric_name) == ("breaker", "users")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("breaker:users", "breaker:nope"), "unknown breaker 'nope'"),
        (('op: ">=", threshold: 1', "op: absent"), "a breaker: metric takes a comparison"),
        (("minimum_calls: 10", "minimum_calls: 0"), "breakers[0].minimum_calls"),
    ],
)
def test_breaker_errors_name_the_path(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(BREAKERS.replace(*change))
    assert any(message in error for error in caught.value.errors), caught.value.errors


def test_a_trigger_without_a_window_is_an_error_unless_it_reads_a_breaker() -> None:
    text = BREAKERS.replace(
        '"breaker:users", op: ">=", threshold: 1', 'error_rate, op: ">", threshold: 1'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert any("window: required" in error for error in caught.value.errors)


MIGRATION = """
rollouts: [{name: a, flag: f, steps: [{percent: 100}]}]
sources: {kafka: {bootstrap_servers: "k:9092"}}
migrations:
  - name: m
    rollout: a
    source: {topic: s, table: public.orders}
    target: {topic: t, table: public.orders_v2}
    key: [id]
    columns: {id: id, email: lower(email)}
"""


def test_a_migration_becomes_a_checker_wired_to_its_rollout() -> None:
    (wiring,) = [m.wiring() for m in parse_config(MIGRATION).migrations]
    assert (wiring.rollout, wiring.source_topic, wiring.target_topic) == ("a", "s", "t")
    assert wiring.spec.columns == (("id", "id", "identity"), ("email", "email", "lower"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("rollout: a", "rollout: b"), "migrations[0].rollout: unknown rollout 'b'"),
        (("lower(email)", "upper(email)"), "migrations[0].columns.email"),
        (("table: public.orders_v2", "table: public.orders"), "must name different tables"),
        (('sources: {kafka: {bootstrap_servers: "k:9092"}}', ""), "sources.kafka is required"),
    ],
)
def test_migration_errors_name_the_path(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(MIGRATION.replace(*change))
    assert any(message in error for error in caught.value.errors), caught.value.errors


def test_state_url_and_path_together_are_an_error_naming_state_url() -> None:
    from rolloutd.config.sections import State

    with pytest.raises(ValueError, match="url"):
        State.model_validate({"url": "postgresql://u:pw@db1/app", "path": "./x.db"})
    state = State.model_validate({"url": "postgresql://u:pw@db1:6432/app", "lease": "4s"})
    assert state.lease == 4.0
    assert state.where() == "postgresql db1:6432/app"
    assert "pw" not in repr(state)
    with pytest.raises(ValueError, match="postgresql"):
        State.model_validate({"url": "mysql://u@db1/app"})
