"""A rollout's sections: its steps, advance window, triggers (inline or referenced) and
the baselines they compare against.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    Tag,
    model_validator,
)

from rolloutd.config.durations import Duration, PositiveDuration
from rolloutd.config.fields import (
    Metric,
    Name,
    Op,
    Section,
    Severity,
    Text,
    Timestamp,
    check_cron,
    check_time_zone,
    invalid_at,
)
from rolloutd.core import spec
from rolloutd.core.schedule import CronWindow, parse_cron


class Baseline(Section):
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


class SampleRatio(Section):
    """The judge's sample-ratio check: the requests' split against the planned percent."""

    alpha: float = Field(
        0.001,
        gt=0,
        lt=1,
        description=(
            "False-positive rate of the check (always valid, however often it looks). Default "
            "0.001."
        ),
    )
    action: Literal["rollback", "pause", "alert"] = Field(
        "alert",
        description=(
            "On a mismatch: alert (default; the step is held while it fires, and the judge's "
            "verdicts read as insufficient data), pause or rollback."
        ),
    )
    severity: Severity = Field("warning", description="Severity for notifiers. Default warning.")


class Judge(Section):
    """A sequential test of the canary against control, decided on every event."""

    test: Literal["counts", "proportion", "mean"] | None = Field(
        None,
        description=(
            "counts: errors, the anytime-valid Poisson test (error_rate only; the default for "
            "it); proportion: the error share per request, mixture SPRT (default for "
            "availability); mean: mean latency, mixture SPRT (latency_mean only)."
        ),
    )
    against: Text = Field("control", description="The control cohort. Default control.")
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description=(
            "False-positive rate: the chance the judge ever calls a canary with no real "
            "difference worse, however often it looks. Default 0.05."
        ),
    )
    mixture: Literal["grid", "dirichlet"] = Field(
        "grid",
        description=(
            "counts: grid (default; a mixture over the rate ratio that keeps its evidence "
            "across ramp steps) or dirichlet (the Beta mixture of one share, restarted at each "
            "step)."
        ),
    )
    concentration: float = Field(
        100.0, gt=0, description="dirichlet: the mixture's concentration k. Default 100."
    )
    tau: float | None = Field(
        None,
        gt=0,
        description=(
            "proportion and mean: the mixing standard deviation, in the metric's units (about "
            "the smallest difference worth catching). Default 0.01 for proportion; required "
            "for mean (milliseconds)."
        ),
    )
    per_key: bool = Field(
        False,
        description=(
            "counts: a request event carrying a `key` counts at most one error per key per "
            "bucket, so one unit emitting thousands of errors cannot decide alone. Default "
            "false."
        ),
    )
    srm: SampleRatio | Literal[False] = Field(
        default_factory=SampleRatio,
        description=(
            "The sample-ratio check (a trigger of its own, named <trigger>:srm), or false to "
            "leave it out."
        ),
    )


class Trigger(Section):
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
    op: Op | None = Field(
        None,
        description=(
            "Comparison: >, >=, <, <= (quote them in YAML), or unchanged / absent (gauge: and "
            "counter: metrics only): unchanged fires when the window has samples but no change, "
            "absent when it holds no sample."
        ),
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
    judge: Judge | None = Field(
        None,
        description=(
            "Judge the canary against control with a sequential test instead of a bound "
            "(no op, threshold, baseline or window): error_rate, availability or latency_mean."
        ),
    )

    @model_validator(mode="after")
    def _check_op(self) -> Self:
        if self.judge is not None:
            return self._check_judge(self.judge)
        if self.metric == "latency_mean":
            raise invalid_at("metric", "latency_mean is read by a judge only")
        if self.op is None:
            raise invalid_at("op", "required (or a judge)")
        return self._check_bound()

    def _check_bound(self) -> Self:
        if self.window is None and not self.metric.startswith("breaker:"):
            raise invalid_at("window", "required")
        if self.op in spec.COMPARISON_OPS:
            if self.threshold is None and self.baseline is None:
                raise invalid_at("", f"op {self.op!r} needs a threshold, a baseline or both")
        elif self.metric in spec.REQUEST_METRICS:
            raise invalid_at(
                "op",
                f"{self.op!r} applies only to gauge: and counter: metrics, not {self.metric!r}",
            )
        else:
            for key in ("threshold", "baseline"):
                if getattr(self, key) is not None:
                    raise invalid_at(key, f"not allowed with op {self.op!r}")
        if self.baseline is not None and self.baseline.cohort == self.cohort:
            raise invalid_at("baseline.cohort", f"must differ from the cohort {self.cohort!r}")
        return self

    def _check_judge(self, judge: Judge) -> Self:
        if self.metric not in spec.JUDGE_METRICS:
            raise invalid_at(
                "metric",
                f"a judge reads error_rate, availability or latency_mean, not {self.metric!r}",
            )
        for key in ("op", "threshold", "baseline", "window"):
            if getattr(self, key) is not None:
                raise invalid_at(key, "not allowed with a judge")
        test = _judge_test(self.metric, judge)
        allowed = {"error_rate": ("counts", "proportion"), "availability": ("proportion",)}
        if test not in allowed.get(self.metric, ("mean",)):
            raise invalid_at("judge.test", f"{test!r} does not apply to {self.metric!r}")
        if test == "mean" and judge.tau is None:
            raise invalid_at("judge.tau", "required for the mean test (milliseconds)")
        if judge.against == self.cohort:
            raise invalid_at("judge.against", f"must differ from the cohort {self.cohort!r}")
        return self

    def to_specs(self, name: str) -> tuple[spec.TriggerSpec, ...]:
        """The trigger's specs: itself, and a judge's sample-ratio check after it."""
        own = self.to_spec(name)
        judge = self.judge
        if judge is None or judge.srm is False or own.judge is None:
            return (own,)
        srm = judge.srm
        check = spec.TriggerSpec(
            name=f"{name}:srm",
            metric=self.metric,
            op=">=",
            window=1.0,
            cohort=self.cohort,
            min_samples=self.min_samples,
            action=srm.action,
            severity=srm.severity,
            after_completion=self.after_completion,
            judge=replace(own.judge, srm_of=name),
        )
        return (own, check)

    def to_spec(self, name: str) -> spec.TriggerSpec:
        relative = self.baseline
        baseline = None if relative is None else spec.Baseline(relative.cohort, relative.factor)
        return spec.TriggerSpec(
            name=name,
            metric=self.metric,
            op=self.op or ">=",
            window=self.window or 1.0,
            cohort=self.cohort,
            threshold=self.threshold,
            baseline=baseline,
            for_=self.for_,
            min_samples=self.min_samples,
            action=self.action,
            severity=self.severity,
            after_completion=self.after_completion,
            judge=None if self.judge is None else _judge_spec(self.metric, self.judge),
        )


def _judge_test(metric: str, judge: Judge) -> str:
    if judge.test is not None:
        return judge.test
    return {"error_rate": "counts", "availability": "proportion"}.get(metric, "mean")


def _judge_spec(metric: str, judge: Judge) -> spec.JudgeSpec:
    srm = judge.srm
    return spec.JudgeSpec(
        test=_judge_test(metric, judge),
        against=judge.against,
        alpha=judge.alpha,
        mixture=judge.mixture,
        concentration=judge.concentration,
        tau=judge.tau if judge.tau is not None else 0.01,
        per_key=judge.per_key,
        srm_alpha=None if srm is False else srm.alpha,
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


class Step(Section):
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


class AdvanceWindow(Section):
    """When steps may advance: a 5-field cron expression read as wall-clock time in a zone."""

    cron: Annotated[Text, AfterValidator(check_cron)] = Field(
        description=(
            "Standard 5-field cron expression (minute hour day-of-month month day-of-week; *, n, "
            "a-b, */n, a-b/n or comma lists; jan-dec, sun-sat). A moment is inside when its minute "
            "matches; with both day fields restricted, a day matches when either does."
        )
    )
    timezone: Annotated[Text, AfterValidator(check_time_zone)] = Field(
        "UTC",
        description=(
            "IANA time zone the expression is read in (wall-clock time, DST included). Default UTC."
        ),
    )

    def to_spec(self) -> CronWindow:
        return parse_cron(self.cron, ZoneInfo(self.timezone))


class Rollout(Section):
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
            raise invalid_at(
                "start_at",
                "only with start: immediately (a manual rollout starts on its start command)",
            )
        return self

    @model_validator(mode="after")
    def _check_steps(self) -> Self:
        for index, (before, step) in enumerate(pairwise(self.steps), start=1):
            if step.percent <= before.percent:
                raise invalid_at(
                    f"steps[{index}].percent",
                    f"percents must increase: {step.percent:g} after {before.percent:g}",
                )
        for index, step in enumerate(self.steps[:-1]):
            if step.hold is None:
                raise invalid_at(f"steps[{index}].hold", "required on every step but the last")
        seen: set[str] = set()
        for index, ref in enumerate(self.triggers):
            name = ref if isinstance(ref, str) else ref.name
            if name in seen:
                raise invalid_at(f"triggers[{index}]", f"trigger {name!r} is listed twice")
            seen.add(name)
        return self
