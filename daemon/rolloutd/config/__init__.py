"""The YAML configuration file: load it, check it, hand the core plain specs.

Rules: unknown keys are errors, and every error names its path (`rollouts[1].steps[0].hold`).
`${VAR}` and `${VAR:-default}` are expanded in string values after YAML parsing, so an unset
variable is reported where it is used. Secrets are SecretStr: no repr, error or summary shows
them. A Config is always valid: cross-references are checked when it is built.

This module is the package's face: import the public names from here. Behind it, one module
per seam, each importing only those above it in this list:

* `durations` - the duration field (`30s`, `1h30m` or a number of seconds);
* `fields` - shared field types and the strict `Section` base model;
* `rollouts`, `sections`, `alerts`, `guards` - the file's sections (rollouts and triggers;
  sources, sinks, state, HTTP, engine; alert routes; breakers, flag table, migrations);
* `delivery` - flag delivery into the SDKs (flagd document, Unleash client API);
* `describe` - the human summary `check-config` prints;
* `errors` - `ConfigError` and the "<path>: <message>" formatting;
* `model` - `Config`, the whole file, with its cross-reference checks and `to_spec()`;
* `load` - strict YAML, `${VAR}` expansion, validation;
* `schema` - the JSON Schema for editors (`config_json_schema`).
"""

from __future__ import annotations

from rolloutd.config.alerts import (
    Alert,
    AlertmanagerAlert,
    PagerDutyAlert,
    SlackAlert,
    WebhookAlert,
)
from rolloutd.config.delivery import Delivery, DeliveryVariants, FlagdDelivery, UnleashDelivery
from rolloutd.config.errors import ConfigError
from rolloutd.config.fields import Op, Severity
from rolloutd.config.guards import Breaker, FlagTable, Migration, MigrationSide
from rolloutd.config.load import config_json_schema, load_config, parse_config
from rolloutd.config.model import Config
from rolloutd.config.rollouts import AdvanceWindow, Baseline, InlineTrigger, Rollout, Step, Trigger
from rolloutd.config.sections import (
    Engine,
    Http,
    KafkaSecurity,
    KafkaSink,
    KafkaSource,
    KafkaTopics,
    MqttSink,
    MqttSource,
    Sinks,
    Sources,
    State,
)

__all__ = [
    "AdvanceWindow",
    "Alert",
    "AlertmanagerAlert",
    "Baseline",
    "Breaker",
    "Config",
    "ConfigError",
    "Delivery",
    "DeliveryVariants",
    "Engine",
    "FlagTable",
    "FlagdDelivery",
    "Http",
    "InlineTrigger",
    "KafkaSecurity",
    "KafkaSink",
    "KafkaSource",
    "KafkaTopics",
    "Migration",
    "MigrationSide",
    "MqttSink",
    "MqttSource",
    "Op",
    "PagerDutyAlert",
    "Rollout",
    "Severity",
    "Sinks",
    "SlackAlert",
    "Sources",
    "State",
    "Step",
    "Trigger",
    "UnleashDelivery",
    "WebhookAlert",
    "config_json_schema",
    "load_config",
    "parse_config",
]
