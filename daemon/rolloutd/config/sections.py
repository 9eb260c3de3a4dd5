"""The service's sections: sources (Kafka, MQTT), sinks, the state file, the admin HTTP
server and the engine settings.
"""

from __future__ import annotations

from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from rolloutd.config.durations import Duration, PositiveDuration
from rolloutd.config.fields import Listen, MqttUrl, Section, Servers, Text, Topics, invalid_at


class _TlsFiles(Section):
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
            raise invalid_at(missing, "cert_file and key_file go together")
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
                raise invalid_at(key, f"{how} with protocol {self.protocol}")
        for key in ("ca_file", "cert_file"):
            if not tls and getattr(self, key) is not None:
                raise invalid_at(key, f"not used with protocol {self.protocol}")
        return self


class KafkaTopics(Section):
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


class KafkaSource(Section):
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
        "back without waiting for its old member's session to expire. With state.url (a "
        "leader and standbys) off unless group_instance_id is set: a takeover is another member.",
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
            raise invalid_at("group_instance_id", "needs static_membership: true")
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
            raise invalid_at("username", "required with password")
        tls = next((k for k in ("ca_file", "cert_file") if getattr(self, k) is not None), None)
        if tls and not self.url.startswith("mqtts://"):
            raise invalid_at(tls, "needs an mqtts:// url")
        return self


class Sources(Section):
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


class KafkaSink(Section):
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


class MqttSink(Section):
    flags_prefix: Text = Field(
        "rollouts/flags",
        description="Flag state is a retained message at <prefix>/<flag>. Default rollouts/flags.",
    )


class Sinks(Section):
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


def postgres_place(url: str) -> str:
    """postgresql://u:secret@db1:5432/app -> "postgresql db1:5432/app"."""
    parts = urlsplit(url)
    host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    return f"postgresql {host}/{parts.path.lstrip('/') or parts.username or ''}"


class State(Section):
    path: Text = Field(
        "./rolloutd-state.db",
        description=(
            "The SQLite state file (rollout and trigger states, alert outbox, consumer offsets); "
            "relative to the working directory. Default ./rolloutd-state.db."
        ),
    )
    url: SecretStr | None = Field(
        None,
        description=(
            "postgresql://user[:password]@host:port/db: keep the state in PostgreSQL instead of "
            "the SQLite file, shared by two or more daemons of which one leads (a lease row) and "
            "the others stand by. A secret (give the password as ${VAR}; never logged). Not "
            "together with path."
        ),
    )
    lease: PositiveDuration = Field(
        10.0,
        description=(
            "With url: how long the leader's lease lasts without a renewal (renewed every third "
            "of it); a standby takes over at most this long after the leader stopped. Default 10s."
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

    def where(self) -> str:
        """The state's place for logs and summaries: the file, or PostgreSQL's host and
        database (never the user's password)."""
        if self.url is None:
            return self.path
        return postgres_place(self.url.get_secret_value())

    @model_validator(mode="after")
    def _check_one_place(self) -> Self:
        if self.url is not None:
            if "path" in self.model_fields_set:
                raise invalid_at("url", "give either url (PostgreSQL) or path (SQLite), not both")
            scheme = self.url.get_secret_value().partition("://")[0]
            if scheme not in ("postgresql", "postgres"):
                raise invalid_at("url", "must be a postgresql:// URL")
        return self


class Http(Section):
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


class Engine(Section):
    bucket: PositiveDuration = Field(
        1.0,
        description=(
            "Resolution of every sliding window: samples are summed per bucket, windows slide one "
            "bucket at a time, every trigger window is a whole number of buckets. Default 1s."
        ),
    )
