"""The human summary of a rollout (`rolloutd check-config`)."""

from __future__ import annotations

from datetime import UTC, datetime

from rolloutd.config.durations import format_duration
from rolloutd.core import spec


def describe_rollout(rollout: spec.RolloutSpec) -> list[str]:
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


def _describe_judge(trigger: spec.TriggerSpec, judge: spec.JudgeSpec) -> str:
    if judge.srm_of is not None:
        text = (
            f"{trigger.name}: the split of {judge.srm_of}'s requests against the planned "
            f"percent, alpha {judge.srm_alpha:g}"
        )
    else:
        test = f"{judge.test} ({judge.mixture})" if judge.test == "counts" else judge.test
        text = (
            f"{trigger.name}: {trigger.metric}[{trigger.cohort}] worse than "
            f"[{judge.against}], judged by {test} at alpha {judge.alpha:g}"
        )
        if judge.per_key:
            text += ", one error per key per bucket"
    if trigger.min_samples:
        text += f", min {trigger.min_samples} samples"
    return text + f" -> {trigger.action} ({trigger.severity})"


def _describe_trigger(trigger: spec.TriggerSpec) -> str:
    if trigger.judge is not None:
        return _describe_judge(trigger, trigger.judge)
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
