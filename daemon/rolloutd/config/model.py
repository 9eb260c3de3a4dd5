"""The whole file as one model: cross-references are checked when it is built, and
`to_spec()` hands the core its frozen specs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Self

from pydantic import (
    Field,
    model_validator,
)

from rolloutd.config.alerts import Alert
from rolloutd.config.delivery import Delivery
from rolloutd.config.describe import describe_rollout
from rolloutd.config.durations import format_duration
from rolloutd.config.errors import ConfigError
from rolloutd.config.fields import Name, Section, did_you_mean
from rolloutd.config.guards import Breaker, FlagTable, Migration
from rolloutd.config.rollouts import Rollout, Trigger
from rolloutd.config.sections import Engine, Http, Sinks, Sources, State
from rolloutd.core import spec


class Config(Section):
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
    state: State = Field(State(), description="Durable state (SQLite, WAL, or PostgreSQL).")
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
    delivery: Delivery = Field(
        Delivery(), description="Flag state for the OpenFeature/flagd and Unleash SDKs."
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
                        f"{did_you_mean(ref, self.triggers)}"
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
                    f"{did_you_mean(migration.rollout, rollouts)}"
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
                yield f"{at}.metric: unknown breaker {name!r}{did_you_mean(name, names)}"
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
            one
            for ref in rollout.triggers
            for one in (
                self.triggers[ref].to_specs(ref) if isinstance(ref, str) else ref.to_specs(ref.name)
            )
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
            lines += describe_rollout(rollout)
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
            f"state: {self.state.where()}",
            f"http: {self.http.listen} ({token})",
            f"alerts: {alerts or 'none'}",
        ]
