"""Daemon-level alerts: a rollout stalled past its hold, publishing failing for a while."""

from __future__ import annotations

from pathlib import Path

from rolloutd.app.clock import FakeClock
from rolloutd.app.health import PUBLISH_ALERT_AFTER, STALL_AFTER
from rolloutd.app.service import Service
from rolloutd.config import parse_config

CONFIG = """
triggers:
  errors: {{metric: error_rate, window: 1m, op: ">", threshold: 0.1, min_samples: 100}}
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 5, hold: 30s}}, {{percent: 100}}]
    triggers: [errors]
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:0"}}
"""
T0 = 1_763_719_200.0


def service(tmp_path: Path, clock: FakeClock) -> Service:
    config = parse_config(CONFIG.format(state=tmp_path / "s.db"))
    svc = Service(config, clock=clock.clock())
    svc.pipeline.start(svc.clock())
    return svc


def test_a_rollout_short_of_data_long_past_its_hold_is_stalled(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    svc = service(tmp_path, clock)
    try:
        assert svc._problems(T0 + 30 + STALL_AFTER - 1)["stalled/co"] is None
        clock.advance(30 + STALL_AFTER + 1)
        svc.pipeline.tick(svc.clock())  # the gate was read: no data
        problem = svc._problems(svc.clock())["stalled/co"]
        assert problem is not None
        assert "errors (no data)" in problem
        assert "5%" in problem
    finally:
        svc.store.close()


def test_publishing_failing_for_a_minute_is_a_problem(tmp_path: Path) -> None:
    clock = FakeClock(T0)
    svc = service(tmp_path, clock)
    try:
        assert svc._problems(T0)["publish-failed"] is None
        svc.publisher.failing_since = svc.monotonic()  # a send failed
        clock.advance(PUBLISH_ALERT_AFTER)
        assert svc._problems(svc.clock())["publish-failed"] is None
        clock.advance(1)
        problem = svc._problems(svc.clock())["publish-failed"]
        assert problem is not None
        assert "outbox" in problem
    finally:
        svc.store.close()
