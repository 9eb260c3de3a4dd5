"""Shared builders for engine tests: specs, events and a virtual-time driver; and `until`,
the bounded wait of the tests that run the daemon's parts on the wall clock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from rolloutd.core.decisions import Decision, to_dict
from rolloutd.core.engine import Engine
from rolloutd.core.events import Event, Rejection, decode_one
from rolloutd.core.spec import Baseline, EngineSpec, RolloutSpec, StepSpec, TriggerSpec

T0 = 1_763_719_200.0  # 2025-11-21T10:00:00Z


def event(**fields: Any) -> Event:
    """An event through the real decoder (so tests also pin the input contract)."""
    fields.setdefault("rollout", "co")
    decoded = decode_one(json.dumps(fields))
    assert not isinstance(decoded, Rejection), decoded
    return decoded


def batch(ts: float, cohort: str, count: int, errors: int = 0, **extra: Any) -> Event:
    return event(ts=ts, type="requests", cohort=cohort, count=count, errors=errors, **extra)


def command(ts: float, name: str, **extra: Any) -> Event:
    return event(ts=ts, type="command", command=name, **extra)


def error_trigger(**overrides: Any) -> TriggerSpec:
    fields: dict[str, Any] = {
        "name": "error-spike",
        "metric": "error_rate",
        "op": ">",
        "window": 60.0,
        "threshold": 0.02,
        "baseline": Baseline("control", 3.0),
        "for_": 10.0,
        "min_samples": 100,
    }
    fields.update(overrides)
    return TriggerSpec(**fields)


def rollout(*triggers: TriggerSpec, **overrides: Any) -> RolloutSpec:
    fields: dict[str, Any] = {
        "name": "co",
        "flag": "new_co",
        "steps": (StepSpec(5, 60), StepSpec(25, 60), StepSpec(100)),
        "bake": 60.0,
        "triggers": triggers,
    }
    fields.update(overrides)
    return RolloutSpec(**fields)


def engine(*rollouts: RolloutSpec, bucket: float = 1.0) -> Engine:
    return Engine(EngineSpec(rollouts=rollouts, bucket=bucket))


Traffic = Callable[[float], Iterable[Event]]


def drive(eng: Engine, traffic: Traffic, seconds: int, start: float = T0) -> list[dict[str, Any]]:
    """Feed `traffic(ts)` for each second; all decisions as dicts."""
    out: list[Decision] = []
    for i in range(seconds):
        for ev in traffic(start + i):
            out.extend(eng.handle(ev))
    return [to_dict(d) for d in out]


def steady(canary_errors: float = 0.0, control_errors: float = 0.0, count: int = 50) -> Traffic:
    """Both cohorts report `count` requests a second with the given error ratios."""

    def traffic(ts: float) -> list[Event]:
        return [
            batch(ts + 0.25, "canary", count, round(count * canary_errors)),
            batch(ts + 0.5, "control", count, round(count * control_errors)),
        ]

    return traffic


def kinds(decisions: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in decisions if d["kind"] == kind]


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `condition` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)
