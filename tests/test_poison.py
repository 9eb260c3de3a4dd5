"""One message never stops the daemon: out-of-range numbers are rejected in decoding, and an
event whose handling raises anyway is counted, logged with where it came from and skipped,
its offset committed with the batch's. Events the engine takes but cannot use are counted."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from helpers import T0, error_trigger, rollout
from rolloutd.adapters.metrics import DaemonState, build_registry
from rolloutd.adapters.store import Store
from rolloutd.core.breaker import BreakerRuntime, BreakerSpec
from rolloutd.core.events import Event, Requests
from rolloutd.core.spec import EngineSpec, StepSpec
from rolloutd.faults import describe_error
from rolloutd.pipeline import Pipeline, Sinks

ROOT = Path(__file__).parent.parent
TOPIC = "rollout.metrics"
HUGE = 100000000000000000000000
BREAKER = BreakerSpec(name="users", service="user-service", minimum_calls=10, window_size=20)
SPEC = EngineSpec(
    rollouts=(
        rollout(
            error_trigger(for_=0.0, min_samples=10, baseline=None, threshold=0.1),
            steps=(StepSpec(10, 3600), StepSpec(100)),
        ),
    ),
    breakers=(BREAKER,),
)
SECRET = "s3cr3t-cohort-name"  # in the poisoned payload; must never reach the log


def _requests(count: int, errors: int = 0, **extra: Any) -> bytes:
    fields = {"ts": T0 + 1, "type": "requests", "rollout": "co", "cohort": "canary"}
    return json.dumps({**fields, "count": count, "errors": errors, **extra}).encode()


# The poison: valid by the contract, but (as a stand-in for an engine bug that some input
# triggers) the engine raises while handling it.
POISON = _requests(13, service="user-service", reason=SECRET)


@pytest.fixture
def exploding_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine raises inside `handle` for a batch of 13 calls (through a real breaker)."""
    original = BreakerRuntime.calls_of

    def calls_of(self: BreakerRuntime, event: Event) -> Any:
        if isinstance(event, Requests) and event.count == 13:
            raise KeyError("an engine bug")
        return original(self, event)

    monkeypatch.setattr(BreakerRuntime, "calls_of", calls_of)


def _pipeline(store: Store, **options: Any) -> tuple[Pipeline, CollectorRegistry]:
    pipeline = Pipeline(SPEC, store, Sinks(flags_topic="rollout.flags"), **options)
    pipeline.expect_sources(["kafka", "mqtt"])
    registry, _, _ = build_registry(lambda: pipeline, DaemonState())
    pipeline.start(T0)
    return pipeline, registry


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


@pytest.mark.usefixtures("exploding_breaker")
@pytest.mark.parametrize("array", [False, True], ids=["one event", "in an array"])
def test_an_event_whose_handling_raises_is_skipped_and_the_batch_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, array: bool
) -> None:
    poison = b"[" + POISON + b"]" if array else POISON
    values: list[bytes | None] = [_requests(20), poison, _requests(20, errors=20)]
    with Store.open(tmp_path / "s.db") as store:
        pipeline, registry = _pipeline(store)
        with caplog.at_level(logging.ERROR, logger="rolloutd.pipeline"):
            pipeline.ingest_topics(
                [(TOPIC, [None] * 3, values)], T0 + 1, {(TOPIC, 2): 13}, [(2, [10, 11, 12])]
            )
        # The events on both sides of it were taken: the breach after it rolled back.
        assert pipeline.engine.rollout("co").phase == "rolled_back"
        assert pipeline.stats.events["kafka"] == 2
        assert _value(registry, "rolloutd_events_failed_total", source="kafka") == 1.0
        assert _value(registry, "rolloutd_events_failed_total", source="mqtt") == 0.0
        # Its offset is committed with the batch's: a restart does not meet it again.
        assert store.load().offsets == {(TOPIC, 2): 13}
    [record] = caplog.records
    assert f"topic {TOPIC} partition 2 offset 11" in record.getMessage()
    assert "KeyError" in record.getMessage()
    assert SECRET not in caplog.text  # the payload is never logged


def test_a_failure_is_described_by_its_error_cut_short_and_where_it_was_raised() -> None:
    try:
        raise ValueError("x" * 10_000)
    except ValueError as exc:
        text = describe_error(exc)
    assert text.startswith("ValueError: xxx")
    assert text.count("x") <= 200  # the error's text, cut
    assert "test_poison.py:" in text


@pytest.mark.usefixtures("exploding_breaker")
def test_a_poisoned_mqtt_payload_names_its_topic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Store.open(tmp_path / "s.db") as store:
        pipeline, registry = _pipeline(store)
        with caplog.at_level(logging.ERROR, logger="rolloutd.pipeline"):
            pipeline.ingest("mqtt", [POISON], T0 + 1, topic="telemetry/d7/events")
            pipeline.ingest("mqtt", [_requests(20, errors=20)], T0 + 1)
        assert pipeline.engine.rollout("co").phase == "rolled_back"
        assert _value(registry, "rolloutd_events_failed_total", source="mqtt") == 1.0
    assert "topic telemetry/d7/events message 0 of the batch" in caplog.text


def test_the_huge_count_is_rejected_as_out_of_range(tmp_path: Path) -> None:
    values: list[bytes | None] = [_requests(HUGE), b"[" + _requests(HUGE) + b"]", _requests(20)]
    with Store.open(tmp_path / "s.db") as store:
        pipeline, registry = _pipeline(store)
        pipeline.ingest_topics([(TOPIC, [None] * 3, values)], T0 + 1, {(TOPIC, 0): 3})
        invalid = _value(
            registry, "rolloutd_events_invalid_total", source="kafka", reason="out_of_range"
        )
        assert invalid == 2.0
        assert pipeline.stats.events["kafka"] == 1
        assert _value(registry, "rolloutd_events_failed_total", source="kafka") == 0.0


def test_replay_rejects_the_huge_count_on_stderr_and_goes_on() -> None:
    config = ROOT / "daemon" / "rolloutd" / "scenarios" / "checkout-incident.yaml"
    lines = [
        b'{"ts": 1763719200, "type": "requests", "rollout": "checkout-v2", "count": 5,'
        b' "errors": 0}',
        b'{"ts": 1763719201, "type": "requests", "rollout": "checkout-v2", "count": %d,'
        b' "errors": 0}' % HUGE,
        b'{"ts": 1763719202, "type": "requests", "rollout": "checkout-v2", "count": 5,'
        b' "errors": 0}',
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rolloutd.cli", "replay", "--config", str(config), "-"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert "line 2: out_of_range" in err
    assert "3 lines, 2 events, 1 invalid (out_of_range 1)" in err
