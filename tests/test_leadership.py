"""Two daemons on one PostgreSQL state, in-process: one leads, the other stands by, serves
reads and refuses mutations, and leads from the state the first one left once it stops."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import psycopg

from brokers import free_port
from helpers import until
from rolloutd.app.clock import FakeClock
from rolloutd.app.memory import MemoryBroker
from rolloutd.app.service import Service
from rolloutd.config import parse_config
from test_service_memory import CONFIG as MEMORY_CONFIG
from test_service_memory import T0, _requests

# The in-process daemon's config, its state moved to PostgreSQL with a short lease.
CONFIG = MEMORY_CONFIG.replace('state: {{path: "{state}"}}', 'state: {{url: "{url}", lease: 0.6s}}')
WAIT = 20.0  # seconds a condition may take at most (it takes a lease poll or two)


def _service(url: str, broker: MemoryBroker, clock: FakeClock, delivery: bool = False) -> Service:
    text = CONFIG.format(url=url) + ("delivery: {flagd: {http: true}}\n" if delivery else "")
    config = parse_config(text)
    return Service(config, clock=clock.clock(), handle_signals=False, memory=broker)


def _flags(broker: MemoryBroker) -> list[dict[str, object]]:
    return [json.loads(p) for p in broker.flags("rollout.flags")]


def test_the_standby_waits_reads_and_leads_from_the_state_left(pg_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0 + 1)
        first_broker, second_broker = MemoryBroker(), MemoryBroker()
        first = _service(pg_url, first_broker, clock)
        first_run = asyncio.create_task(first.run())
        await until(lambda: "publisher" in first.tasks and not first.publisher.pending, WAIT)
        assert first.health.standby is None
        assert first.state.leader()
        second = _service(pg_url, second_broker, clock, delivery=True)
        second_run = asyncio.create_task(second.run())
        await until(lambda: second.health.standby is not None, WAIT)

        # The standby: not ready, not leading, mutations refused; reads show the leader's.
        assert not second.state.leader()
        assert second.health.readiness()["leading"] is False
        assert "generation 1" in second.health.reasons["leader"]
        assert "publisher" not in second.tasks
        assert "memory" not in second.tasks
        first_broker.put("kafka", "rollout.metrics", [_requests(T0, "control", 100, 1)])
        first_broker.put("kafka", "rollout.metrics", [_requests(T0 + 0.5, "canary", 20, 10)])
        await until(lambda: len(_flags(first_broker)) == 2, WAIT)
        await until(lambda: second.pipeline.engine.rollout("co").phase == "rolled_back", WAIT)
        assert second_broker.kafka == []  # a standby publishes nothing
        assert second.delivery is not None  # and its flagd document follows the leader's
        assert second.delivery.board.entries["new_co"].percent == 0

        first.stop()  # a clean stop releases the lease: the standby leads at its next poll
        assert await first_run == 0
        await until(lambda: second.health.standby is None and "publisher" in second.tasks, WAIT)
        assert second.state.leader()
        assert "standby" not in second.tasks  # its task ended; every task left is alive
        assert all(not task.done() for task in second.tasks.values())
        assert second.pipeline.engine.rollout("co").phase == "rolled_back"
        assert second.pipeline.positions() == {("rollout.metrics", 0): 2}
        await until(lambda: not second.publisher.pending, WAIT)
        assert second_broker.kafka == []  # nothing repeated: all of it went out already

        clock.advance(120.0)  # the canary's errors leave the window
        _, items = second.pipeline.command("co", "retry", clock.clock().now(), actor="t")
        second.outbox.add(items)
        await until(lambda: len(_flags(second_broker)) == 1, WAIT)
        second.stop()
        assert await second_run == 0

        before, after = _flags(first_broker), _flags(second_broker)
        assert [(f["percent"], f["phase"], f["generation"]) for f in before] == [
            (5, "progressing", 1),
            (0, "rolled_back", 1),
        ]
        assert [(f["phase"], f["generation"]) for f in after] == [("progressing", 2)]
        revisions = [int(str(f["revision"])) for f in before + after]
        assert revisions == sorted(set(revisions))  # strictly increasing across leaders
        audit = [json.loads(p) for p in first_broker.flags("rollout.decisions")]
        assert audit
        assert {a["generation"] for a in audit} == {1}

    asyncio.run(scenario())


def test_a_leader_whose_lease_was_taken_exits_and_publishes_nothing(pg_url: str) -> None:
    async def scenario() -> None:
        clock = FakeClock(T0 + 1)
        broker = MemoryBroker()
        leader = _service(pg_url, broker, clock)
        run = asyncio.create_task(leader.run())
        await until(lambda: "lease" in leader.tasks and not leader.publisher.pending, WAIT)
        published = len(broker.kafka)
        lease = leader.lease
        assert lease is not None
        clock.advance(1.0)  # stopped past its lease, by its own clock: the gate shuts
        assert not lease.valid(clock.clock().monotonic())
        # Meanwhile the row expired by the database's clock and another daemon took it.
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE leader SET expires_at = '-infinity'")
        rival = _service(pg_url, MemoryBroker(), clock)
        rival_lease = rival.lease
        assert rival_lease is not None
        assert rival_lease.try_acquire(0.0)
        assert rival_lease.generation == 2
        broker.put("kafka", "rollout.metrics", [_requests(T0 + 2, "canary", 20, 10)])
        assert await run == 1  # its next commit (or renewal) finds the lease lost
        assert len(broker.kafka) == published
        rival.store.close()

    asyncio.run(scenario())


def test_a_database_out_of_reach_at_start_exits_1_naming_it_but_not_its_password(
    tmp_path: Path,
) -> None:
    port = free_port()  # nothing listens there
    url = f"postgresql://rolloutd:hunter2-secret@127.0.0.1:{port}/flags"
    path = tmp_path / "rolloutd.yaml"
    path.write_text(CONFIG.format(url=url))
    done = subprocess.run(
        [sys.executable, "-m", "rolloutd", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1  # not 2: a database that is back after a restart is fine
    assert f"127.0.0.1:{port}/flags: cannot connect" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
