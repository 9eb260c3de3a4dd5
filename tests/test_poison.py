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
from rolloutd.adapters.cdc.debezium import ChangeEvent
from rolloutd.adapters.known_series import KnownSeries
from rolloutd.adapters.metrics import DaemonState, build_registry
from rolloutd.adapters.store import Store
from rolloutd.app.cdc import CdcRouter, MigrationWiring
from rolloutd.app.faults import describe_error
from rolloutd.app.messages import Sinks
from rolloutd.app.pipeline import Pipeline
from rolloutd.config import ConfigError, Sources, parse_config
from rolloutd.core.breaker import BreakerRuntime, BreakerSpec
from rolloutd.core.cdc.migration import MigrationChecker, MigrationSpec
from rolloutd.core.engine import DROP_REASONS
from rolloutd.core.events import Event, Requests
from rolloutd.core.spec import EngineSpec, StepSpec

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
    sources = ("kafka", "mqtt")
    known = KnownSeries(
        failed=sources,
        dropped=tuple((source, reason) for source in sources for reason in DROP_REASONS),
    )
    registry, _, _ = build_registry(lambda: pipeline, DaemonState(known=known))
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
    config = ROOT / "daemon" / "rolloutd" / "tools" / "scenarios" / "checkout-incident.yaml"
    lines = [
        b'{"ts": 1763719200, "type": "requests", "rollout": "checkout-v2", "count": 5,'
        b' "errors": 0}',
        b'{"ts": 1763719201, "type": "requests", "rollout": "checkout-v2", "count": %d,'
        b' "errors": 0}' % HUGE,
        b'{"ts": 1763719202, "type": "requests", "rollout": "checkout-v2", "count": 5,'
        b' "errors": 0}',
    ]
    result = subprocess.run(
        [sys.executable, "-m", "rolloutd", "replay", "--config", str(config), "-"],
        input=b"\n".join(lines) + b"\n",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    assert "line 2: out_of_range" in err
    assert "3 lines, 2 events, 1 invalid (out_of_range 1)" in err


def test_events_dated_past_the_skew_are_rejected_as_future(tmp_path: Path) -> None:
    now = T0 + 10
    values: list[bytes | None] = [
        _requests(50, 50, ts=now + 61),  # past 60 s
        b"[" + _requests(50, 50, ts=now + 3600) + b"]",  # in an array too
        _requests(50, 50, ts=253402300799),  # 9999-12-31T23:59:59Z
        _requests(20, 0, ts=now + 59),  # within the skew: taken
    ]
    with Store.open(tmp_path / "s.db") as store:
        pipeline, registry = _pipeline(store, max_future_skew=60.0)
        pipeline.ingest("mqtt", values, now)
        future = _value(
            registry, "rolloutd_events_invalid_total", source="mqtt", reason="future_timestamp"
        )
        assert future == 3.0
        assert pipeline.stats.events["mqtt"] == 1
        # None of the breaching ones reached the windows.
        assert pipeline.engine.rollout("co").phase == "progressing"


def test_the_default_skew_is_five_minutes(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        pipeline, _ = _pipeline(store)
        pipeline.ingest("kafka", [_requests(1, ts=T0 + 299), _requests(1, ts=T0 + 301)], T0)
        assert pipeline.stats.invalid[("kafka", "future_timestamp")] == 1
        assert pipeline.stats.events["kafka"] == 1


def test_dropped_events_are_counted_per_source_and_reason(tmp_path: Path) -> None:
    now = T0 + 3600
    with Store.open(tmp_path / "s.db") as store:
        pipeline, registry = _pipeline(store)
        for source in ("kafka", "mqtt"):  # known from the start, at 0
            for reason in ("too_old", "unrouted", "ignored"):
                labels = {"source": source, "reason": reason}
                assert _value(registry, "rolloutd_events_dropped_total", **labels) == 0.0
        kafka: list[bytes | None] = [
            _requests(5, ts=now - 600),  # older than the 60 s window
            _requests(5, ts=now, rollout="nope"),  # no such rollout
            _requests(5, ts=now, cohort="blue"),  # no trigger reads it
            _requests(5, ts=now, cohort="blue"),
            b"[" + _requests(5, ts=now, rollout="nope") + b"]",  # the slow path counts too
        ]
        pipeline.ingest_topics([(TOPIC, [None] * 5, kafka)], now, {(TOPIC, 0): 5})
        pipeline.ingest("mqtt", [_requests(5, ts=now, rollout="nope")], now)
        expected = {
            ("kafka", "too_old"): 1.0,
            ("kafka", "unrouted"): 2.0,
            ("kafka", "ignored"): 2.0,
            ("mqtt", "too_old"): 0.0,
            ("mqtt", "unrouted"): 1.0,
            ("mqtt", "ignored"): 0.0,
        }
        for (source, reason), n in expected.items():
            labels = {"source": source, "reason": reason}
            assert _value(registry, "rolloutd_events_dropped_total", **labels) == n, labels


def test_the_skew_is_configured_under_sources() -> None:
    base = "rollouts: [{name: co, flag: f, steps: [{percent: 100}]}]\n"
    assert parse_config(base, env={}).sources.max_future_skew == 300.0
    config = parse_config(base + "sources: {max_future_skew: 30s}\n", env={})
    assert config.sources.max_future_skew == 30.0
    with pytest.raises(ConfigError) as caught:
        parse_config(base + "sources: {max_future_skew: -5s}\n", env={})
    assert any(e.startswith("sources.max_future_skew") for e in caught.value.errors)
    assert Sources.model_fields["max_future_skew"].description


def _change(lsn: int, user: int) -> bytes:
    source = {"db": "app", "schema": "public", "table": "users", "ts_ms": lsn * 10, "lsn": lsn}
    row = {"id": user, "email": "a@x.io"}
    return json.dumps({"op": "c", "source": source, "after": row}).encode()


def test_a_cdc_change_whose_checking_raises_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    migration = MigrationSpec(
        name="users-split",
        source_table="public.users",
        target_table="public.users_v2",
        key_columns=("id",),
        columns=(("id", "id", "identity"), ("email", "email", "identity")),
    )
    wiring = MigrationWiring(migration, "app.public.users", "app.public.users_v2", "co")
    original = MigrationChecker.on_change

    def on_change(self: MigrationChecker, change: ChangeEvent, now: float) -> Any:
        if change.after is not None and change.after["id"] == 13:
            raise ZeroDivisionError("a checker bug")
        return original(self, change, now)

    monkeypatch.setattr(MigrationChecker, "on_change", on_change)
    with Store.open(tmp_path / "s.db") as store:
        pipeline, registry = _pipeline(store, cdc=CdcRouter((wiring,)))
        values: list[bytes | None] = [_change(1, 1), _change(2, 13), _change(3, 3)]
        with caplog.at_level(logging.ERROR, logger="rolloutd.pipeline"):
            pipeline.ingest_topics(
                [("app.public.users", [None] * 3, values)], T0 + 1, {}, [(0, [7, 8, 9])]
            )
        assert pipeline.stats.events["cdc"] == 2
        assert _value(registry, "rolloutd_events_failed_total", source="cdc") == 1.0
        assert pipeline.cdc is not None
        assert pipeline.cdc.checkers["users-split"].progress().source_rows == 2
    assert "topic app.public.users partition 0 offset 8" in caplog.text
    assert "ZeroDivisionError" in caplog.text
