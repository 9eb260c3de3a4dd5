"""The YAML configuration file: load it, check it, hand the core plain specs.

Rules: unknown keys are errors, and every error names its path (`rollouts[1].steps[0].hold`).
`${VAR}` and `${VAR:-default}` are expanded in string values after YAML parsing, so an unset
variable is reported where it is used. Secrets are SecretStr: no repr, error or summary shows
them. A Config is always valid: cross-references are checked when it is built.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from rolloutd.core import spec
from rolloutd.core.breaker import BreakerSpec
from rolloutd.core.migration import MigrationSpec, MigrationWiring
from rolloutd.core.schedule import CronWindow, parse_cron
from rolloutd.durations import Duration, PositiveDuration, format_duration


def _matching(pattern: str, message: str) -> AfterValidator:
    """Validator for strings matching `pattern`; `message` may show the value as {value!r}."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if regex.fullmatch(value):
            return value
        raise ValueError(message.format(value=value))

    return AfterValidator(check)


def _schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": f"^({pattern})$"})


NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# Names end up in URLs, metric labels and MQTT topics, hence the small alphabet.
Name = Annotated[
    str,
    _matching(NAME, "not a valid name: {value!r} (letters, digits, '.', '_', '-')"),
    _schema(NAME),
]
Text = Annotated[str, Field(min_length=1)]
METRIC = "|".join(spec.REQUEST_METRICS) + r"|(gauge|counter|breaker):\S+"
Metric = Annotated[
    str,
    _matching(
        METRIC,
        "not a metric: {value!r} (expected error_rate, availability, "
        "request_rate, latency_p50/90/95/99, gauge:<name>, counter:<name> "
        "or breaker:<name>)",
    ),
    _schema(METRIC),
]
# URLs may carry credentials, so their messages never repeat the value.
HTTP_URL = r"https?://\S+"
HttpUrl = Annotated[str, _matching(HTTP_URL, "not an http(s) URL"), _schema(HTTP_URL)]
MQTT_URL = r"mqtts?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?"
MqttUrl = Annotated[
    str,
    _matching(MQTT_URL, "not an mqtt(s)://host[:port] URL (no credentials)"),
    _schema(MQTT_URL),
]
LISTEN = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}"
Listen = Annotated[str, _matching(LISTEN, "not a host:port address: {value!r}"), _schema(LISTEN)]
Op = Literal[">", ">=", "<", "<=", "unchanged", "absent"]
Severity = Literal["critical", "warning", "info"]


# RFC 3339 date-time. Parsing takes it without the offset too, to tell a naive time apart.
_DATE_TIME = r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?"
_OFFSET = r"([Zz]|[+-]\d\d:\d\d)"
RFC3339 = _DATE_TIME + _OFFSET


def _timestamp(value: object) -> object:
    """An aware datetime from an RFC 3339 string (or from the datetime YAML made of one)."""
    example = "e.g. 2025-11-24T09:00:00+01:00 or 2025-11-24T08:00:00Z"
    if isinstance(value, str):
        if not re.fullmatch(f"{_DATE_TIME}{_OFFSET}?", value):
            raise ValueError(f"not an RFC 3339 timestamp: {value!r} ({example})")
        try:
            value = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise ValueError(f"not a valid time: {value!r} ({exc})") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"needs a UTC offset, or Z for UTC ({example})")
        return value
    shown = "a date without a time" if isinstance(value, date) else repr(value)
    raise ValueError(f"expected an RFC 3339 timestamp ({example}), got {shown}")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp, json_schema_input_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": f"^({RFC3339})$"}),
]


def _cron(value: str) -> str:
    parse_cron(value)  # ValueError names the field
    return value


def _time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        hint = _suggest(name, available_timezones()) or " (an IANA name such as Europe/Berlin)"
        raise ValueError(f"unknown time zone {name!r}{hint}") from None
    return name


def _one_or_many(value: object) -> object:
    return (value,) if isinstance(value, str) else value


def _comma_list(value: object) -> object:
    return tuple(part.strip() for part in value.split(",")) if isinstance(value, str) else value


Topics = Annotated[
    tuple[Text, ...], BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])
]
Servers = Annotated[
    tuple[Text, ...],
    BeforeValidator(_comma_list, json_schema_input_type=str | list[str]),
    Field(min_length=1),
]


def _invalid(at: str, message: str) -> PydanticCustomError:
    """An error that points below the model reporting it: `at` is appended to the path."""
    return PydanticCustomError("rolloutd", "{message}", {"at": at, "message": message})


class _Model(BaseModel):
    # `.inf` and `.nan` are valid YAML floats but never a sensible threshold or factor.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Baseline(_Model):
    """Relative bound: `factor` x the same metric over the same window in another cohort."""

    cohort: Text = Field(
        "control",
        description=(
            "The cohort compared against (default control); must differ from the trigger's cohort."
        ),
    )
    factor: float = Field(
        gt=0,
        description=(
            "The bound is factor x the same metric over the same window in the baseline cohort; > "
            "0."
        ),
    )


class Trigger(_Model):
    """A rollback trigger: a condition over a sliding window, and what to do when it holds."""

    metric: Metric = Field(
        description=(
            "What to measure: error_rate, availability, request_rate (requests per second over the "
            "window), latency_p50/p90/p95/p99 (milliseconds) from request events; gauge:<name> "
            "(last value in the window), counter:<name> (sum in the window), or breaker:<name> (1 "
            "while that breaker is open, else 0)."
        )
    )
    cohort: Text = Field(
        "canary",
        description=(
            "Which side of the split to measure (the events' `cohort` field). Default canary."
        ),
    )
    window: PositiveDuration | None = Field(
        None,
        description=(
            "Sliding window the metric is computed over: a duration > 0, a whole number of "
            "engine.bucket. Required, except for breaker: metrics."
        ),
    )
    op: Op = Field(
        description=(
            "Comparison: >, >=, <, <= (quote them in YAML), or unchanged / absent (gauge: and "
            "counter: metrics only): unchanged fires when the window has samples but no change, "
            "absent when it holds no sample."
        )
    )
    threshold: float | None = Field(
        None,
        description=(
            "Absolute bound. With a baseline too it is a floor (for > and >=) or a ceiling (for < "
            "and <=) on the relative bound."
        ),
    )
    baseline: Baseline | None = Field(
        None,
        description=(
            "Relative bound: factor x the same metric over the same window in another cohort. With "
            "a threshold too the bound is max(threshold, factor x baseline) for > and >=, min(...) "
            "for < and <=."
        ),
    )
    for_: Duration = Field(
        0.0,
        alias="for",
        description=(
            "How long the condition must hold without interruption before the trigger fires; "
            "meanwhile it is pending and blocks advancing. 0 (default) fires at once."
        ),
    )
    min_samples: int = Field(
        0,
        ge=0,
        description=(
            "Requests (or samples, for gauges and counters) needed in the window in every cohort "
            "the trigger uses before it judges; fewer is insufficient data, neither ok nor a "
            "breach. Default 0."
        ),
    )
    action: Literal["rollback", "pause", "alert"] = Field(
        "rollback",
        description=(
            "On firing: rollback (percent 0, default), pause (hold the percent until a resume "
            "command) or alert (notify only)."
        ),
    )
    severity: Severity = Field(
        "critical", description="Severity for notifiers: critical (default), warning or info."
    )
    after_completion: bool = Field(
        False,
        description=(
            "Keep watching after the rollout completed (guard at 100% for good). Default false."
        ),
    )

    @model_validator(mode="after")
    def _check_op(self) -> Self:
        if self.window is None and not self.metric.startswith("breaker:"):
            raise _invalid("window", "required")
        if self.op in spec.COMPARISON_OPS:
            if self.threshold is None and self.baseline is None:
                raise _invalid("", f"op {self.op!r} needs a threshold, a baseline or both")
        elif self.metric in spec.REQUEST_METRICS:
            raise _invalid(
                "op",
                f"{self.op!r} applies only to gauge: and counter: metrics, not {self.metric!r}",
            )
        else:
            for key in ("threshold", "baseline"):
                if getattr(self, key) is not None:
                    raise _invalid(key, f"not allowed with op {self.op!r}")
        if self.baseline is not None and self.baseline.cohort == self.cohort:
            raise _invalid("baseline.cohort", f"must differ from the cohort {self.cohort!r}")
        return self

    def to_spec(self, name: str) -> spec.TriggerSpec:
        relative = self.baseline
        baseline = None if relative is None else spec.Baseline(relative.cohort, relative.factor)
        return spec.TriggerSpec(
            name=name,
            metric=self.metric,
            op=self.op,
            window=self.window or 1.0,
            cohort=self.cohort,
            threshold=self.threshold,
            baseline=baseline,
            for_=self.for_,
            min_samples=self.min_samples,
            action=self.action,
            severity=self.severity,
            after_completion=self.after_completion,
        )


class InlineTrigger(Trigger):
    """A trigger defined inside one rollout; it needs its own name."""

    name: Name = Field(
        description=(
            "The trigger's name, unique within the rollout (letters, digits, '.', '_', '-')."
        )
    )


def _trigger_ref_kind(value: object) -> str | None:
    if isinstance(value, str):
        return "name"
    return "inline" if isinstance(value, dict | InlineTrigger) else None


TriggerRef = Annotated[
    Annotated[str, Tag("name")] | Annotated[InlineTrigger, Tag("inline")],
    Discriminator(
        _trigger_ref_kind,
        custom_error_type="trigger_ref",
        custom_error_message="expected a trigger name or an inline trigger mapping",
    ),
]


class Step(_Model):
    percent: float = Field(
        ge=0,
        le=100,
        description=(
            "Percent of users in the rollout at this step, 0..100; strictly increasing from step "
            "to step."
        ),
    )
    hold: Duration | None = Field(
        None,
        description=(
            "How long to stay at this step before moving on (only while no trigger is pending or "
            "firing). Required on every step but the last, whose hold is ignored (the rollout's "
            "bake applies)."
        ),
    )


class AdvanceWindow(_Model):
    """When steps may advance: a 5-field cron expression read as wall-clock time in a zone."""

    cron: Annotated[Text, AfterValidator(_cron)] = Field(
        description=(
            "Standard 5-field cron expression (minute hour day-of-month month day-of-week; *, n, "
            "a-b, */n, a-b/n or comma lists; jan-dec, sun-sat). A moment is inside when its minute "
            "matches; with both day fields restricted, a day matches when either does."
        )
    )
    timezone: Annotated[Text, AfterValidator(_time_zone)] = Field(
        "UTC",
        description=(
            "IANA time zone the expression is read in (wall-clock time, DST included). Default UTC."
        ),
    )

    def to_spec(self) -> CronWindow:
        return parse_cron(self.cron, ZoneInfo(self.timezone))


class Rollout(_Model):
    """One flag moved through steps, guarded by triggers."""

    name: Name = Field(
        description="Unique rollout name, used in commands, the API and metric labels."
    )
    flag: Name = Field(
        description=(
            "The feature flag whose percentage this rollout sets; no flag may be driven by two "
            "rollouts."
        )
    )
    start: Literal["immediately", "manual"] = Field(
        "immediately",
        description=(
            "immediately (default): start at daemon start (replay: at the first event); manual: "
            "wait for a start command."
        ),
    )
    start_at: Timestamp | None = Field(
        None,
        description=(
            "Only with start: immediately. Start no earlier than this RFC 3339 moment with a UTC "
            "offset (Z for UTC), at the first evaluation point at or after it. A start command "
            "before then starts at once."
        ),
    )
    steps: tuple[Step, ...] = Field(
        min_length=1,
        description=(
            "The percentages to walk through, each with its hold; the last step is promoted and "
            "baked."
        ),
    )
    bake: Duration = Field(
        0.0,
        description=(
            "How long triggers stay armed at the last step before the rollout is completed. "
            "Default 0."
        ),
    )
    advance_window: AdvanceWindow | None = Field(
        None,
        description=(
            "Steps advance (a hold elapsed -> the next step) only inside this cron window; a hold "
            "that ends outside it waits for the next opening. Rollbacks, pauses, alerts, commands "
            "and the end of the bake act at any time."
        ),
    )
    # When the flag table disagrees with what was decided: alert, revert (publish the
    # decided state again) or adopt (take the table's value and pause).
    drift: Literal["alert", "revert", "adopt"] = Field(
        "alert",
        description=(
            "When the flag table disagrees with the decided percent: alert (default), revert "
            "(publish the decided state again) or adopt (take the table's value and pause)."
        ),
    )
    triggers: tuple[TriggerRef, ...] = Field(
        (),
        description=(
            "Names of triggers in the top-level triggers section and/or inline triggers (with a "
            "name), evaluated in this order; a name may appear once."
        ),
    )

    @model_validator(mode="after")
    def _check_start_at(self) -> Self:
        if self.start_at is not None and self.start != "immediately":
            raise _invalid(
                "start_at",
                "only with start: immediately (a manual rollout starts on its start command)",
            )
        return self

    @model_validator(mode="after")
    def _check_steps(self) -> Self:
        for index, (before, step) in enumerate(pairwise(self.steps), start=1):
            if step.percent <= before.percent:
                raise _invalid(
                    f"steps[{index}].percent",
                    f"percents must increase: {step.percent:g} after {before.percent:g}",
                )
        for index, step in enumerate(self.steps[:-1]):
            if step.hold is None:
                raise _invalid(f"steps[{index}].hold", "required on every step but the last")
        seen: set[str] = set()
        for index, ref in enumerate(self.triggers):
            name = ref if isinstance(ref, str) else ref.name
            if name in seen:
                raise _invalid(f"triggers[{index}]", f"trigger {name!r} is listed twice")
            seen.add(name)
        return self


class _TlsFiles(_Model):
    ca_file: Text | None = Field(
        None, description="PEM CA bundle to verify the server with (TLS only)."
    )
    cert_file: Text | None = Field(
        None, description="PEM client certificate (TLS only); goes together with key_file."
    )
    key_file: Text | None = Field(
        None, description="PEM private key of the client certificate; goes together with cert_file."
    )

    @model_validator(mode="after")
    def _check_pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            missing = "cert_file" if self.cert_file is None else "key_file"
            raise _invalid(missing, "cert_file and key_file go together")
        return self


class KafkaSecurity(_TlsFiles):
    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None,
        description=(
            "With SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (required with SASL, not used "
            "otherwise)."
        ),
    )
    username: Text | None = Field(
        None,
        description="With SASL_*: the SASL user name (required with SASL, not used otherwise).",
    )
    password: SecretStr | None = Field(
        None,
        description="With SASL_*: the SASL password, a secret (give it as ${VAR}; never logged).",
    )

    @model_validator(mode="after")
    def _check_protocol(self) -> Self:
        sasl, tls = self.protocol.startswith("SASL_"), self.protocol.endswith("SSL")
        for key in ("sasl_mechanism", "username", "password"):
            if sasl != (getattr(self, key) is not None):
                how = "required" if sasl else "not used"
                raise _invalid(key, f"{how} with protocol {self.protocol}")
        for key in ("ca_file", "cert_file"):
            if not tls and getattr(self, key) is not None:
                raise _invalid(key, f"not used with protocol {self.protocol}")
        return self


class KafkaTopics(_Model):
    metrics: Topics = Field(
        ("rollout.metrics",),
        description=(
            "Topics carrying event JSON (requests, gauges, counters): a list or one name. Default "
            "[rollout.metrics]; [] consumes no metrics from Kafka."
        ),
    )
    commands: Text | None = Field(
        "rollout.commands",
        description="Topic of command events. Default rollout.commands; null consumes no commands.",
    )


class KafkaSource(_Model):
    bootstrap_servers: Servers = Field(
        description="Kafka brokers as host:port: a list, or one comma-separated string."
    )
    # null: no consumer group; every partition of the topics is assigned to this process
    # (one daemon per topic set), which skips the group join on start.
    group_id: Text | None = Field(
        "rolloutd",
        description=(
            "Consumer group (default rolloutd). null: no group; every partition of the topics is "
            "assigned to this process, which skips the group join on start."
        ),
    )
    client_id: Text = Field("rolloutd", description="Kafka client id. Default rolloutd.")
    topics: KafkaTopics = Field(
        KafkaTopics(), description="The topics events and commands are read from."
    )
    security: KafkaSecurity = Field(
        KafkaSecurity(), description="How to connect: protocol, SASL credentials, TLS files."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "latest",
        description=(
            "Where partitions without a stored offset start: latest (default: act on fresh "
            "evidence only) or earliest."
        ),
    )
    down_after: PositiveDuration = Field(
        5.0,
        description="The source counts as down (readiness 503 with the reason, "
        "rolloutd_source_up 0) once the broker has not answered for this long; with no "
        "records arriving it is asked for the partitions' ends every third of this.",
    )
    client_log_interval: PositiveDuration = Field(
        10.0,
        description="A log line of the Kafka client library that repeats (same logger "
        "and message) is written at most once per this interval; the next one written "
        "says how many were held back.",
    )
    static_membership: bool = Field(
        True,
        description="Join the consumer group as a static member (KIP-345) under "
        "group_instance_id: a restarted daemon (after a crash too) takes its partitions "
        "back without waiting for its old member's session to expire.",
    )
    group_instance_id: Text | None = Field(
        None,
        description="The static member's id; default <host name>-<group_id>-<8 hex "
        "digits of the state path>, the same across restarts on one host. Daemons sharing "
        "a group need different ids.",
    )
    session_timeout: PositiveDuration = Field(
        10.0,
        description="How long the group waits for a member that stopped heartbeating "
        "before its partitions go to the others (heartbeats every third of it, at most "
        "every 3s). Brokers bound it (Kafka: group.min.session.timeout.ms and "
        "group.max.session.timeout.ms, 6s and 30m by default).",
    )

    @model_validator(mode="after")
    def _check_membership(self) -> Self:
        if self.group_instance_id is not None and not self.static_membership:
            raise _invalid("group_instance_id", "needs static_membership: true")
        return self


class MqttSource(_TlsFiles):
    url: MqttUrl = Field(
        description=(
            "mqtt://host[:port] or mqtts://host[:port] (TLS); credentials go in username/password, "
            "not here."
        )
    )
    topics: Topics = Field(
        (),
        description=(
            "Topic filters to subscribe to (wildcards allowed); payloads are event JSON. A list or "
            "a single filter."
        ),
    )
    client_id: Text = Field("rolloutd", description="MQTT client id. Default rolloutd.")
    username: Text | None = Field(None, description="MQTT user name; optional.")
    password: SecretStr | None = Field(
        None,
        description="MQTT password, a secret (give it as ${VAR}; never logged); needs username.",
    )
    qos: Literal[0, 1, 2] = Field(
        1, description="0, 1 (default) or 2: for subscriptions and flag messages."
    )
    clean_session: bool = Field(
        True,
        description=(
            "true (default): no queued backlog across restarts; false: a persistent session."
        ),
    )

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        if self.password is not None and self.username is None:
            raise _invalid("username", "required with password")
        tls = next((k for k in ("ca_file", "cert_file") if getattr(self, k) is not None), None)
        if tls and not self.url.startswith("mqtts://"):
            raise _invalid(tls, "needs an mqtts:// url")
        return self


class Sources(_Model):
    kafka: KafkaSource | None = Field(
        None,
        description=(
            "Read events and commands from Kafka (also needed for migrations and flag_table)."
        ),
    )
    mqtt: MqttSource | None = Field(None, description="Read events from MQTT.")
    max_future_skew: Duration = Field(
        300.0,
        description="Events dated more than this after the daemon's clock are rejected "
        "(reason future_timestamp): a sender's clock that far ahead would otherwise count "
        "them in the current bucket. Not applied by replay, whose clock is the events' time.",
    )


class KafkaSink(_Model):
    flags_topic: Text = Field(
        "rollout.flags",
        description=(
            "Topic of flag state: one message per flag change, keyed by flag. Default "
            "rollout.flags."
        ),
    )
    decisions_topic: Text = Field(
        "rollout.decisions",
        description=(
            "Topic of the decision log (audit), keyed by rollout. Default rollout.decisions."
        ),
    )


class MqttSink(_Model):
    flags_prefix: Text = Field(
        "rollouts/flags",
        description="Flag state is a retained message at <prefix>/<flag>. Default rollouts/flags.",
    )


class Sinks(_Model):
    kafka: KafkaSink | None = Field(
        None,
        description=(
            "Publish flag changes and decisions to Kafka (uses sources.kafka's connection)."
        ),
    )
    mqtt: MqttSink | None = Field(
        None,
        description=(
            "Publish flag changes to MQTT as retained messages (uses sources.mqtt's connection)."
        ),
    )


class State(_Model):
    path: Text = Field(
        "./rolloutd-state.db",
        description=(
            "The SQLite state file (rollout and trigger states, alert outbox, consumer offsets); "
            "relative to the working directory. Default ./rolloutd-state.db."
        ),
    )
    # Kafka batches that decide nothing are persisted with their offsets at most this often
    # (every batch with 0); a crash replays at most this much from Kafka, exactly once.
    checkpoint: Duration = Field(
        1.0,
        description=(
            "A Kafka batch that decides nothing is written, with its offsets, at most this often "
            "(0: every batch); after a crash at most this much is re-read, each event counting "
            "once. Default 1s."
        ),
    )


class Http(_Model):
    listen: Listen = Field(
        "127.0.0.1:9108",
        description=(
            "host:port of the admin API, /metrics and health checks ([::1]:9108 for IPv6). Default "
            "127.0.0.1:9108."
        ),
    )
    token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token required by mutating calls (promote, pause, ...), a secret (give it as "
            "${VAR}); without it they are refused."
        ),
    )
    max_connections: int = Field(
        256,
        ge=1,
        description="Admin HTTP connections open at once; lowered at start to fit under the "
        "open-file limit less `fd_reserve`. At the cap a new connection displaces the oldest "
        "one that has not sent a request yet.",
    )
    fd_reserve: int = Field(
        128,
        ge=16,
        description="File descriptors never used for admin connections: kept for the broker "
        "clients, the state store and the notifiers.",
    )
    header_timeout: PositiveDuration = Field(
        10.0,
        description="A connection that has not sent a complete request head this long after "
        "connecting is closed (half-open and slow clients).",
    )
    idle_timeout: PositiveDuration = Field(
        60.0, description="An idle keep-alive admin connection is closed after this long."
    )

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class Engine(_Model):
    bucket: PositiveDuration = Field(
        1.0,
        description=(
            "Resolution of every sliding window: samples are summed per bucket, windows slide one "
            "bucket at a time, every trigger window is a whole number of buckets. Default 1s."
        ),
    )


class _Alert(_Model):
    name: Name = Field(description="Unique notifier name.")
    # None lets every severity / rollout through; an empty list would silence the notifier.
    severities: Annotated[tuple[Severity, ...], Field(min_length=1)] | None = Field(
        None, description="Only alerts of these severities (default: all)."
    )
    rollouts: Annotated[tuple[Name, ...], Field(min_length=1)] | None = Field(
        None, description="Only alerts of these rollouts (default: all)."
    )
    send_resolved: bool = Field(
        True, description="Also notify when a trigger resolves. Default true."
    )
    timeout: PositiveDuration = Field(
        10.0, description="Timeout of one delivery attempt. Default 10s."
    )
    # Alerts of one rollout arriving within group_wait go out as one notification; 0: off.
    group_wait: Duration = Field(
        0.0,
        description=(
            "Alerts of one rollout arriving within this long go out as one notification; 0 "
            "(default): off."
        ),
    )
    # A still-firing alert is sent again this often; 0: never.
    repeat_interval: Duration = Field(
        4 * 3600.0,
        description="A still-firing alert is sent again this often; 0: never. Default 4h.",
    )

    def accepts(self, rollout: str, severity: str) -> bool:
        """Whether this notifier wants an alert; an absent filter lets everything through."""
        return (self.rollouts is None or rollout in self.rollouts) and (
            self.severities is None or severity in self.severities
        )


class PagerDutyAlert(_Alert):
    type: Literal["pagerduty"] = Field(description="pagerduty: PagerDuty Events API v2.")
    routing_key: SecretStr = Field(
        description="Events API v2 integration key, a secret (give it as ${VAR}; never logged)."
    )
    url: HttpUrl = Field(
        "https://events.pagerduty.com/v2/enqueue",
        description="Events API endpoint. Default https://events.pagerduty.com/v2/enqueue.",
    )


class SlackAlert(_Alert):
    type: Literal["slack"] = Field(description="slack: a Slack incoming webhook.")
    webhook_url: SecretStr = Field(
        description="Incoming webhook URL, a secret (give it as ${VAR}; never logged)."
    )


class AlertmanagerAlert(_Alert):
    type: Literal["alertmanager"] = Field(
        description="alertmanager: Prometheus Alertmanager's API."
    )
    url: HttpUrl = Field(description="Alertmanager base URL.")
    headers: dict[Text, SecretStr] = Field(
        default_factory=dict,
        description="Extra HTTP headers (such as Authorization); values are secrets.",
    )


class WebhookAlert(_Alert):
    type: Literal["webhook"] = Field(description="webhook: each alert decision POSTed as JSON.")
    url: HttpUrl = Field(description="URL that receives each alert decision as JSON (POST).")
    headers: dict[Text, SecretStr] = Field(
        default_factory=dict,
        description="Extra HTTP headers (such as a shared secret); values are secrets.",
    )


Alert = Annotated[
    PagerDutyAlert | SlackAlert | AlertmanagerAlert | WebhookAlert, Field(discriminator="type")
]


class Breaker(_Model):
    """A circuit breaker over the calls to one `service` (resilience4j's semantics)."""

    name: Name = Field(
        description=(
            "Unique breaker name; its state is published as rollouts/breakers/<name> and readable "
            "by triggers as breaker:<name>."
        )
    )
    service: Text = Field(
        description="Request events whose `service` equals this feed the breaker."
    )
    window: Literal["count", "time"] = Field(
        "count",
        description=(
            "count: the last window_size calls (default); time: the calls of the last window_size "
            "seconds."
        ),
    )
    window_size: int = Field(
        100, ge=1, description="Calls (count window) or seconds (time window) judged. Default 100."
    )
    failure_rate: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Open at or above this fraction of failed calls, 0 < rate <= 1. Default 0.5.",
    )
    slow_call_rate: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Open at or above this fraction of slow calls, 0 < rate <= 1. Default 1.0.",
    )
    slow_call_duration: PositiveDuration = Field(
        60.0, description="A call slower than this is slow. Default 60s."
    )
    minimum_calls: int = Field(
        100, ge=1, description="Fewer calls in the window never open the breaker. Default 100."
    )
    wait_in_open: PositiveDuration = Field(
        60.0, description="How long an open breaker waits before half-open. Default 60s."
    )
    wait_multiplier: float = Field(
        1.0,
        ge=1,
        description="Each re-open in a row waits this many times longer (>= 1). Default 1.",
    )
    max_wait_in_open: PositiveDuration = Field(
        600.0, description="Upper bound of the growing wait in open. Default 10m."
    )
    permitted_in_half_open: int = Field(
        10, ge=1, description="Trial calls judged in half-open. Default 10."
    )

    @model_validator(mode="after")
    def _check_wait(self) -> Self:
        if self.max_wait_in_open < self.wait_in_open:
            raise _invalid("max_wait_in_open", "must be at least wait_in_open")
        return self

    def to_spec(self) -> BreakerSpec:
        return BreakerSpec(**self.model_dump())


COLUMN = re.compile(r"^\s*(?:(identity|lower|trim|string|int)\(\s*([^()\s]+)\s*\)|([^()\s]+))\s*$")


class FlagTable(_Model):
    """The table applications read flags from, seen through its Debezium topic."""

    topic: Text = Field(description="Debezium topic of the table applications read flags from.")
    key_column: Text = Field("name", description="The column holding the flag name. Default name.")
    percent_column: Text = Field(
        "percent", description="The column holding the flag's percent. Default percent."
    )
    grace: PositiveDuration = Field(
        30.0,
        description="A decided percent not in the table within this long is drift. Default 30s.",
    )


class MigrationSide(_Model):
    topic: Text = Field(description="Debezium topic of the table.")
    table: Text = Field(
        description=(
            "The table as in the events' source: schema.table or db.schema.table (MySQL: db.table)."
        )
    )


class Migration(_Model):
    """A schema or data migration watched through CDC; its measurements feed a rollout."""

    name: Name = Field(description="Unique migration name.")
    rollout: Name = Field(
        description=(
            "The rollout whose triggers read this migration's counter:data_validation_failures, "
            "gauge:migration_progress and gauge:cdc_lag_seconds."
        )
    )
    cohort: Text = Field(
        "canary", description="The cohort those samples are counted in. Default canary."
    )
    source: MigrationSide = Field(description="The table changes come from.")
    target: MigrationSide = Field(description="The table each source change must show up on.")
    key: tuple[Text, ...] = Field(min_length=1, description="Key columns on the source.")
    # target column -> "source_column" or "transform(source_column)", transform one of
    # identity, lower, trim, string, int
    columns: dict[Text, Text] = Field(
        default_factory=dict,
        description=(
            "Target column -> source column, or transform(source column) with transform one of "
            "identity, lower, trim, string, int."
        ),
    )
    grace: PositiveDuration = Field(
        30.0,
        description=(
            "How long a source change may wait for its counterpart on the target. Default 30s."
        ),
    )
    max_pending: int = Field(
        100_000,
        ge=1,
        description="Keys held at most; overflow is counted, never a crash. Default 100000.",
    )

    @model_validator(mode="after")
    def _check_columns(self) -> Self:
        for target, expression in self.columns.items():
            if COLUMN.match(expression) is None:
                raise _invalid(
                    f"columns.{target}", f"not a column or transform(column): {expression!r}"
                )
        return self

    def wiring(self) -> MigrationWiring:
        columns = []
        for target, expression in self.columns.items():
            found = COLUMN.match(expression)
            assert found is not None
            transform, inner, plain = found.groups()
            columns.append((target, inner or plain, transform or "identity"))
        spec = MigrationSpec(
            name=self.name,
            source_table=self.source.table,
            target_table=self.target.table,
            key_columns=self.key,
            columns=tuple(columns),
            grace=self.grace,
            max_pending=self.max_pending,
        )
        return MigrationWiring(
            spec, self.source.topic, self.target.topic, self.rollout, self.cohort
        )


class Config(_Model):
    """The whole file. Build it with `load_config` or `parse_config`.

    `Config.model_validate` works too, but raises ConfigError for cross-reference problems.
    """

    triggers: dict[Name, Trigger] = Field(
        default_factory=dict,
        description="Named, reusable rollback triggers; rollouts list them by name.",
    )
    rollouts: tuple[Rollout, ...] = Field((), description="Rollout plans; each drives one flag.")
    engine: Engine = Field(Engine(), description="Evaluation settings of the engine.")
    sources: Sources = Field(
        Sources(), description="Where events come from (rolloutd replay needs none)."
    )
    sinks: Sinks = Field(
        Sinks(),
        description=(
            "Where flag changes and decisions go; each sink uses the connection of the same-named "
            "source."
        ),
    )
    state: State = Field(State(), description="Durable state (SQLite, WAL).")
    http: Http = Field(Http(), description="Admin API, /metrics and health checks.")
    alerts: tuple[Alert, ...] = Field(
        (), description="Notifiers: pagerduty, slack, alertmanager or webhook."
    )
    breakers: tuple[Breaker, ...] = Field(
        (),
        description=(
            "Circuit breakers (resilience4j's semantics) over request events of one service."
        ),
    )
    migrations: tuple[Migration, ...] = Field(
        (), description="Migrations watched through Debezium CDC topics (read from sources.kafka)."
    )
    flag_table: FlagTable | None = Field(
        None,
        description=(
            "The table applications read flags from, seen through its Debezium topic: confirms "
            "decided percents and detects drift."
        ),
    )

    @model_validator(mode="after")
    def _check_references(self) -> Self:
        # Raised past pydantic on purpose: these errors already carry exact paths.
        errors = [
            *self._rollout_errors(),
            *self._window_errors(),
            *self._service_errors(),
            *self._breaker_errors(),
            *self._migration_errors(),
        ]
        if errors:
            raise ConfigError(errors)
        return self

    def _rollout_errors(self) -> Iterator[str]:
        first_at: dict[str, int] = {}
        flag_owner: dict[str, str] = {}
        for index, rollout in enumerate(self.rollouts):
            at = f"rollouts[{index}]"
            if rollout.name in first_at:
                yield (
                    f"{at}.name: duplicate rollout name {rollout.name!r} "
                    f"(also rollouts[{first_at[rollout.name]}])"
                )
            first_at.setdefault(rollout.name, index)
            owner = flag_owner.setdefault(rollout.flag, rollout.name)
            if owner != rollout.name:
                yield f"{at}.flag: flag {rollout.flag!r} is already driven by rollout {owner!r}"
            for position, ref in enumerate(rollout.triggers):
                if isinstance(ref, str) and ref not in self.triggers:
                    yield (
                        f"{at}.triggers[{position}]: unknown trigger {ref!r}"
                        f"{_suggest(ref, self.triggers)}"
                    )

    def _inline_and_named_triggers(self) -> Iterator[tuple[str, Trigger]]:
        for name, trigger in self.triggers.items():
            yield f"triggers.{name}", trigger
        for index, rollout in enumerate(self.rollouts):
            for position, ref in enumerate(rollout.triggers):
                if not isinstance(ref, str):
                    yield f"rollouts[{index}].triggers[{position}]", ref

    def _window_errors(self) -> Iterator[str]:
        bucket = self.engine.bucket
        for at, trigger in self._inline_and_named_triggers():
            if trigger.window is None:
                continue
            count = trigger.window / bucket
            # Tolerance, because 1.5s over 250ms buckets is 6 even if the division wobbles.
            if round(count) < 1 or abs(count - round(count)) > 1e-6:
                yield (
                    f"{at}.window: {format_duration(trigger.window)} is not a whole number of "
                    f"{format_duration(bucket)} buckets (engine.bucket)"
                )

    def _service_errors(self) -> Iterator[str]:
        seen: set[str] = set()
        rollouts = {rollout.name for rollout in self.rollouts}
        for index, alert in enumerate(self.alerts):
            if alert.name in seen:
                yield f"alerts[{index}].name: duplicate notifier name {alert.name!r}"
            seen.add(alert.name)
            for position, name in enumerate(alert.rollouts or ()):
                if name not in rollouts:
                    yield f"alerts[{index}].rollouts[{position}]: unknown rollout {name!r}"
        for kind in ("kafka", "mqtt"):
            if getattr(self.sinks, kind) is not None and getattr(self.sources, kind) is None:
                yield f"sinks.{kind}: needs sources.{kind} (the {kind} connection is shared)"

    def _migration_errors(self) -> Iterator[str]:
        rollouts = {r.name for r in self.rollouts}
        seen: set[str] = set()
        for index, migration in enumerate(self.migrations):
            at = f"migrations[{index}]"
            if migration.name in seen:
                yield f"{at}.name: duplicate migration {migration.name!r}"
            seen.add(migration.name)
            if migration.rollout not in rollouts:
                yield (
                    f"{at}.rollout: unknown rollout {migration.rollout!r}"
                    f"{_suggest(migration.rollout, rollouts)}"
                )
            try:
                migration.wiring()
            except ValueError as exc:
                yield f"{at}: {exc}"
        if (self.migrations or self.flag_table) and self.sources.kafka is None:
            yield "migrations, flag_table: CDC is read from Kafka: sources.kafka is required"

    def _breaker_errors(self) -> Iterator[str]:
        names: dict[str, int] = {}
        for index, breaker in enumerate(self.breakers):
            if breaker.name in names:
                yield (
                    f"breakers[{index}].name: duplicate breaker {breaker.name!r} "
                    f"(also breakers[{names[breaker.name]}])"
                )
            names.setdefault(breaker.name, index)
        for at, trigger in self._inline_and_named_triggers():
            head, _, name = trigger.metric.partition(":")
            if head != "breaker":
                continue
            if name not in names:
                yield f"{at}.metric: unknown breaker {name!r}{_suggest(name, names)}"
            if trigger.op not in spec.COMPARISON_OPS or trigger.baseline is not None:
                yield f"{at}.op: a breaker: metric takes a comparison and a threshold, no baseline"

    def to_spec(self) -> spec.EngineSpec:
        """The engine's view: names resolved, durations in seconds, the last hold zero."""
        return spec.EngineSpec(
            rollouts=tuple(self._rollout_spec(rollout) for rollout in self.rollouts),
            breakers=tuple(breaker.to_spec() for breaker in self.breakers),
            bucket=self.engine.bucket,
        )

    def _rollout_spec(self, rollout: Rollout) -> spec.RolloutSpec:
        last = len(rollout.steps) - 1
        steps = tuple(
            spec.StepSpec(step.percent, 0.0 if index == last else step.hold or 0.0)
            for index, step in enumerate(rollout.steps)
        )
        triggers = tuple(
            self.triggers[ref].to_spec(ref) if isinstance(ref, str) else ref.to_spec(ref.name)
            for ref in rollout.triggers
        )
        start_at, window = rollout.start_at, rollout.advance_window
        return spec.RolloutSpec(
            name=rollout.name,
            flag=rollout.flag,
            steps=steps,
            triggers=triggers,
            start=rollout.start,
            bake=rollout.bake,
            start_at=None if start_at is None else start_at.timestamp(),
            advance_window=None if window is None else window.to_spec(),
        )

    def summary(self) -> str:
        """A few lines a person can check against intent; never shows a secret."""
        engine = self.to_spec()
        lines = [f"{len(engine.rollouts)} rollout(s), bucket {format_duration(engine.bucket)}"]
        for rollout in engine.rollouts:
            lines += _describe_rollout(rollout)
        used = {t.name for rollout in engine.rollouts for t in rollout.triggers}
        if unused := sorted(set(self.triggers) - used):
            lines.append(f"unused triggers: {', '.join(unused)}")
        lines += self._describe_services()
        return "\n".join(lines)

    def _describe_services(self) -> list[str]:
        lines = [
            f"{name}: {', '.join(k for k in ('kafka', 'mqtt') if getattr(section, k)) or 'none'}"
            for name, section in (("sources", self.sources), ("sinks", self.sinks))
        ]
        token = "token set" if self.http.token else "no token: mutations refused"
        alerts = ", ".join(f"{alert.name} ({alert.type})" for alert in self.alerts)
        return [
            *lines,
            f"state: {self.state.path}",
            f"http: {self.http.listen} ({token})",
            f"alerts: {alerts or 'none'}",
        ]


def _describe_rollout(rollout: spec.RolloutSpec) -> list[str]:
    steps = " -> ".join(
        f"{step.percent:g}%" + (f" {format_duration(step.hold)}" if step.hold else "")
        for step in rollout.steps
    )
    start = rollout.start
    if rollout.start_at is not None:
        moment = datetime.fromtimestamp(rollout.start_at, UTC)
        start = f"at {moment.isoformat().replace('+00:00', 'Z')}"
    lines = [
        f"rollout {rollout.name}: flag {rollout.flag}, start {start}",
        f"  steps: {steps}, bake {format_duration(rollout.bake)}",
    ]
    if rollout.advance_window is not None:
        lines.append(f"  steps advance only in: {rollout.advance_window}")
    lines += [f"  trigger {_describe_trigger(trigger)}" for trigger in rollout.triggers]
    return lines if rollout.triggers else [*lines, "  no triggers"]


def _describe_trigger(trigger: spec.TriggerSpec) -> str:
    condition = f"{trigger.metric}[{trigger.cohort}] {trigger.op}"
    relative = trigger.baseline and f"{trigger.baseline.factor:g}x {trigger.baseline.cohort}"
    if trigger.threshold is not None and relative:
        bound = "max" if trigger.op in (">", ">=") else "min"
        condition += f" {bound}({trigger.threshold:g}, {relative})"
    elif trigger.threshold is not None or relative:
        condition += f" {relative or format(trigger.threshold, 'g')}"
    over = format_duration(trigger.window) if trigger.window is not None else "its state"
    text = f"{trigger.name}: {condition} over {over}"
    if trigger.for_:
        text += f" for {format_duration(trigger.for_)}"
    if trigger.min_samples:
        text += f", min {trigger.min_samples} samples"
    text += f" -> {trigger.action} ({trigger.severity})"
    return text + (", armed after completion" if trigger.after_completion else "")


class ConfigError(Exception):
    """An invalid configuration; `errors` holds one "<path>: <message>" line per problem."""

    def __init__(self, errors: Sequence[str], source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n  ".join([f"{self.source}: invalid configuration", *self.errors])


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    source = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([f"{source}: cannot read: {reason}"], source) from None
    return parse_config(text, source, env)


def parse_config(
    text: str, source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Validate YAML `text`; `env` (default os.environ) feeds `${VAR}` references."""
    data = _load_yaml(text, source)
    errors: list[str] = []
    data = _expand(data, os.environ if env is None else env, "", errors)
    if errors:
        raise ConfigError(errors, source)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_format_error(e, data) for e in exc.errors()], source) from None
    except ConfigError as exc:
        raise ConfigError(exc.errors, source) from None


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of the file for editors (durations are a string or a number of seconds)."""
    from rolloutd.config_schema import file_schema  # imports this module: import it late

    schema = file_schema(Config)
    schema["title"] = "rolloutd configuration"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys may be overridden on purpose
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        context = f" ({exc.context})" if exc.context else ""
        raise ConfigError([f"{where}: {exc.problem}{context}"], source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"yaml: {exc}"], source) from None
    if not isinstance(data, dict):
        raise ConfigError([f"(top level): expected a mapping, got {_describe(data)}"], source)
    return data


_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(:-(?P<default>.*))?", re.DOTALL)


def _expand(node: Any, env: Mapping[str, str], path: str, errors: list[str]) -> Any:
    """`node` with `${VAR}` references in its strings expanded; problems go to `errors`."""
    if isinstance(node, dict):
        return {key: _expand(value, env, _join(path, key), errors) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand(value, env, f"{path}[{i}]", errors) for i, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        variable = _VARIABLE.fullmatch(match.group(1) or "")
        if variable is None:
            # Never quote the text: it may be a secret that merely contains "${".
            errors.append(
                f"{path}: bad ${{...}} reference (use ${{NAME}}, ${{NAME:-default}}, "
                "or $${ for a literal ${)"
            )
            return ""
        value = env.get(variable["name"])
        if not value and variable["default"] is not None:
            return variable["default"]
        if value is None:
            errors.append(f"{path}: environment variable {variable['name']} is not set")
        return value or ""

    return _REFERENCE.sub(replace, node)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


_SECRET_KEYS = frozenset({"password", "token", "routing_key", "webhook_url", "headers"})
_EXPECTED = {
    "string": "a string",
    "float": "a number",
    "int": "a whole number",
    "bool": "true or false",
    "model": "a mapping",
    "dict": "a mapping",
    "tuple": "a list",
}
_MESSAGES = {
    "missing": "required",
    "literal_error": "expected {expected}, got {got}",
    "greater_than": "must be > {gt}, got {got}",
    "greater_than_equal": "must be >= {ge}, got {got}",
    "less_than_equal": "must be <= {le}, got {got}",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "finite_number": "must be a finite number",
    "union_tag_invalid": "unknown {discriminator} {tag!r}: expected {expected_tags}",
    "union_tag_not_found": "required key {discriminator} is missing",
    **{
        f"{kind}_{how}": f"expected {what}, got {{got}}"
        for kind, what in _EXPECTED.items()
        for how in ("type", "parsing", "from_float")
    },
}


def _format_error(error: ErrorDetails, data: Any) -> str:
    """One pydantic error as "<path>: <message>", its path in the file's own terms."""
    parts, secret = _locate(error["loc"], data, missing=error["type"] == "missing")
    ctx = error.get("ctx", {})
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        parts, message = parts[:-1], f"unknown key {key!r}{_suggest(key, _KNOWN_KEYS)}"
    elif error["type"] in ("rolloutd", "value_error"):
        message = str(ctx.get("message", ctx.get("error")))
        parts += [f".{ctx['at']}"] if ctx.get("at") else []
    elif error["type"] in _MESSAGES:
        got = _describe(error["input"], hide=secret)
        shown = {key: f"{v:g}" if isinstance(v, float) else v for key, v in ctx.items()}
        message = _MESSAGES[error["type"]].format(got=got, **shown)
    else:
        message = error["msg"]
    path = "".join(parts).lstrip(".") or "(top level)"
    return f"{path}: {message}"


def _locate(loc: tuple[int | str, ...], data: Any, missing: bool) -> tuple[list[str], bool]:
    """Path parts for `loc` and whether it is under a secret key.

    pydantic puts union tags ("pagerduty", "inline") into locations; following the input data
    instead keeps exactly the keys and indexes the file has.
    """
    parts: list[str] = []
    secret, node = False, data
    for key in loc:
        secret = secret or key in _SECRET_KEYS
        if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            parts.append(f"[{key}]")
            node = node[key]
        elif isinstance(node, dict) and key in node:
            parts.append(f".{key}")
            node = node[key]
    # A missing key is not in the data, but it is the point of the message.
    return [*parts, f".{loc[-1]}"] if missing else parts, secret


def _describe(value: object, hide: bool = False) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"a value of type {type(value).__name__}" if hide else repr(value)


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _all_keys(model: type[BaseModel]) -> Iterator[str]:
    for field_name, field in model.model_fields.items():
        yield field.alias or field_name
    for sub in model.__subclasses__():
        yield from _all_keys(sub)


# Every key any section accepts: enough to suggest the intended spelling of a typo.
_KNOWN_KEYS = frozenset(_all_keys(_Model))
