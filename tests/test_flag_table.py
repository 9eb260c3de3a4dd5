"""The flag table, watched through its CDC topic: confirmations, drift and each policy."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from brokers import Tansu
from rolloutd.core.flagwatch import CONFIRMED, DRIFT, NOT_APPLIED, FlagWatch
from test_daemon import TOPICS, Daemon, Kafka, config_text, nth

FLAGS_TOPIC = "pg.public.feature_flags"


def test_watch_confirms_reports_drift_and_late_writes() -> None:
    watch = FlagWatch(grace=30.0)
    assert watch.observe("f", 5.0, 0.0) is None  # not a flag rolloutd drives
    watch.expect("f", 5.0, 100.0)
    seen = watch.observe("f", 5.0, 100.4)
    assert seen is not None
    assert seen.status == CONFIRMED
    assert seen.delay == pytest.approx(0.4)
    assert watch.observe("f", 5.0, 101.0) is None  # a repeat
    drift = watch.observe("f", 40.0, 102.0)
    assert drift is not None
    assert (drift.status, drift.decided, drift.observed) == (DRIFT, 5.0, 40.0)
    assert watch.observe("f", 40.0, 103.0) is None  # reported once
    watch.expect("f", 25.0, 200.0)
    assert watch.advance(229.9) == []
    (late,) = watch.advance(230.0)
    assert (late.status, late.decided, late.observed) == (NOT_APPLIED, 25.0, 40.0)
    restored = FlagWatch(30.0)
    restored.load(json.loads(json.dumps(watch.dump())))
    assert restored.dump() == watch.dump()


def flag_row(name: str, percent: float) -> bytes:
    now_ms = int(time.time() * 1000)
    return json.dumps(
        {
            "before": None,
            "after": {"name": name, "percent": percent},
            "op": "u",
            "ts_ms": now_ms,
            "source": {"db": "app", "schema": "public", "table": "feature_flags", "ts_ms": now_ms},
        }
    ).encode()


ROLLOUT = """
rollouts:
  - name: co
    flag: new_co
    steps: [{{percent: 10, hold: 600s}}, {{percent: 100}}]
    drift: {policy}
flag_table: {{topic: {topic}, key_column: name, percent_column: percent, grace: 30s}}
"""


async def run(tansu: Tansu, tmp_path: Path, policy: str) -> tuple[Kafka, Daemon]:
    tansu.create_topics([*TOPICS, FLAGS_TOPIC])
    text = ROLLOUT.format(policy=policy, topic=FLAGS_TOPIC)
    daemon = Daemon(tmp_path, config_text(tansu.bootstrap, tmp_path / "s.db", text))
    daemon.start()
    return Kafka(tansu.bootstrap), daemon


@pytest.mark.parametrize("policy", ["alert", "revert", "adopt"])
async def test_drift_is_acted_on_by_policy(tansu: Tansu, tmp_path: Path, policy: str) -> None:
    kafka, daemon = await run(tansu, tmp_path, policy)
    async with kafka:
        await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
        await kafka.send(flag_row("new_co", 10), topic=FLAGS_TOPIC)  # the write arrived
        await kafka.send(flag_row("new_co", 60), topic=FLAGS_TOPIC)  # someone changed it
        decisions = await kafka.wait_for(
            "rollout.decisions", lambda d: any(x.get("status") == "drift" for x in d)
        )
        if policy == "revert":
            await kafka.wait_for("rollout.flags", lambda f: len(f) >= 2)
        if policy == "adopt":
            await kafka.wait_for("rollout.flags", lambda f: f[-1]["percent"] == 60)
    statuses = [(d["status"], d.get("action")) for d in decisions if d["kind"] == "flag"]
    assert statuses == [("confirmed", None), ("drift", policy)]
    confirmed = next(d for d in decisions if d["kind"] == "flag")
    assert confirmed["delay"] >= 0
    flags = kafka.seen["rollout.flags"]
    if policy == "revert":  # the decided state goes out again, with a new revision
        assert [(f["percent"], nth(f["revision"])) for f in flags] == [(10, 1), (10, 2)]
    elif policy == "adopt":  # the table's value is taken, and the rollout pauses there
        assert (flags[-1]["percent"], flags[-1]["phase"]) == (60, "paused")
    else:
        assert len(flags) == 1
    assert daemon.signal(signal.SIGTERM) == 0
