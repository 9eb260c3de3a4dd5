"""Checkpoints: Kafka batches that decide nothing are written with their offsets at most once
per `state.checkpoint`; a crash in between re-reads them, and each event counts once."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import T0, error_trigger, rollout
from rolloutd.adapters.store import Store
from rolloutd.app.messages import Sinks
from rolloutd.app.pipeline import Pipeline
from rolloutd.core.spec import EngineSpec, StepSpec

SPEC = EngineSpec(
    rollouts=(rollout(error_trigger(for_=0.0, min_samples=10), steps=(StepSpec(10, 3600),)),)
)
SINKS = Sinks(flags_topic="rollout.flags", decisions_topic="rollout.decisions")
TOPIC = "rollout.metrics"


def _batch(ts: float, errors: int = 0) -> list[tuple[str, list[bytes | None], list[bytes | None]]]:
    events = [
        {"ts": ts, "type": "requests", "rollout": "co", "cohort": c, "count": 20, "errors": e}
        for c, e in (("canary", errors), ("control", 0))
    ]
    return [(TOPIC, [None, None], [json.dumps(e).encode() for e in events])]


def _pipeline(store: Store) -> Pipeline:
    pipeline = Pipeline(SPEC, store, SINKS, checkpoint=1.0)
    pipeline.start(T0)
    return pipeline


def _events(pipeline: Pipeline) -> int:
    return pipeline.engine.stats.events


def _state(pipeline: Pipeline) -> bytes:
    """The rollout's part, with the triggers' shown readings brought up to date."""
    for trig in pipeline.engine.rollout("co").triggers:
        trig.refresh()
    return pipeline.engine.snapshot_rollout("co")


def test_quiet_batches_wait_for_the_checkpoint_with_their_offsets(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        pipeline = _pipeline(store)
        assert pipeline.ingest_topics(_batch(T0 + 0.1), T0 + 0.1, {(TOPIC, 0): 2}) == []
        assert pipeline.ingest_topics(_batch(T0 + 0.2), T0 + 0.2, {(TOPIC, 0): 4}) == []
        assert pipeline.stats.deferred == 2
        assert store.load().offsets == {}
        # A checkpoint later: this batch writes itself and the two before it.
        pipeline.ingest_topics(_batch(T0 + 1.0), T0 + 1.0, {(TOPIC, 0): 6})
        loaded = store.load()
        assert loaded.offsets == {(TOPIC, 0): 6}
        restored = Pipeline(SPEC, store, SINKS)
        assert _events(restored) == 6


def test_a_batch_that_decides_is_written_at_once_with_the_waiting_ones(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        pipeline = _pipeline(store)
        pipeline.ingest_topics(_batch(T0 + 0.1), T0 + 0.1, {(TOPIC, 0): 2})
        items = pipeline.ingest_topics(_batch(T0 + 0.2, errors=20), T0 + 0.2, {(TOPIC, 1): 7})
        assert any(b'"percent":0' in i.payload for i in items)  # the rollback, to publish
        assert store.load().offsets == {(TOPIC, 0): 2, (TOPIC, 1): 7}


def test_ticks_and_flush_write_what_waits(tmp_path: Path) -> None:
    with Store.open(tmp_path / "s.db") as store:
        pipeline = _pipeline(store)
        pipeline.ingest_topics(_batch(T0 + 0.1), T0 + 0.1, {(TOPIC, 0): 2})
        pipeline.tick(T0 + 0.5)
        assert store.load().offsets == {(TOPIC, 0): 2}
        pipeline.ingest_topics(_batch(T0 + 0.6), T0 + 0.6, {(TOPIC, 0): 4})
        assert store.load().offsets == {(TOPIC, 0): 2}
        pipeline.flush()
        assert store.load().offsets == {(TOPIC, 0): 4}
        assert pipeline.flush() == []  # nothing left


def test_a_crash_between_checkpoints_replays_each_event_exactly_once(tmp_path: Path) -> None:
    stream = [(T0 + 0.25 * i, i + 1) for i in range(12)]  # (ts, next offset): 3 s of batches
    with Store.open(tmp_path / "ref.db") as store:
        reference = _pipeline(store)
        for ts, offset in stream:
            reference.ingest_topics(_batch(ts), ts, {(TOPIC, 0): offset})
        expected = _state(reference)
    with Store.open(tmp_path / "s.db") as store:
        crashed = _pipeline(store)
        for ts, offset in stream[:11]:
            crashed.ingest_topics(_batch(ts), ts, {(TOPIC, 0): offset})
        # killed here: the deferred batches were never written
    with Store.open(tmp_path / "s.db") as store:
        again = Pipeline(SPEC, store, SINKS, checkpoint=1.0)
        resume_at = again.positions()[(TOPIC, 0)]
        assert resume_at < 11  # something is re-read ...
        assert _events(again) == 2 * resume_at  # ... and the state has not seen it
        again.start(stream[resume_at - 1][0])
        for ts, offset in stream[resume_at:]:
            again.ingest_topics(_batch(ts), ts, {(TOPIC, 0): offset})
        assert _events(again) == 2 * len(stream)
        assert _state(again) == expected
