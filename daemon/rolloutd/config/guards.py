"""The guards besides triggers: circuit breakers, the flag table watched for drift, and
the schema migrations checked through CDC.
"""

from __future__ import annotations

import re
from typing import Literal, Self

from pydantic import (
    Field,
    model_validator,
)

from rolloutd.config.durations import PositiveDuration
from rolloutd.config.fields import Name, Section, Text, invalid_at
from rolloutd.core.breaker import BreakerSpec
from rolloutd.core.cdc.migration import MigrationSpec, MigrationWiring


class Breaker(Section):
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
            raise invalid_at("max_wait_in_open", "must be at least wait_in_open")
        return self

    def to_spec(self) -> BreakerSpec:
        return BreakerSpec(**self.model_dump())


COLUMN = re.compile(r"^\s*(?:(identity|lower|trim|string|int)\(\s*([^()\s]+)\s*\)|([^()\s]+))\s*$")


class FlagTable(Section):
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


class MigrationSide(Section):
    topic: Text = Field(description="Debezium topic of the table.")
    table: Text = Field(
        description=(
            "The table as in the events' source: schema.table or db.schema.table (MySQL: db.table)."
        )
    )


class Migration(Section):
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
                raise invalid_at(
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
