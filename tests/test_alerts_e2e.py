"""Alerts from a real daemon to a real local HTTP receiver, through the durable outbox."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from brokers import Tansu
from test_daemon import GUARDED, TOPICS, Daemon, Kafka, config_text, requests


async def test_a_rollback_pages_the_webhook_even_when_it_fails_at_first(
    tansu: Tansu, tmp_path: Path
) -> None:
    received: list[dict[str, Any]] = []
    statuses = [500, 200]  # the first delivery fails and is retried

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=statuses.pop(0) if statuses else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        tansu.create_topics(TOPICS)
        config = config_text(tansu.bootstrap, tmp_path / "s.db", GUARDED)
        config += (
            "alerts:\n  - {name: hook, type: webhook, severities: [critical],"  # not the start's
            f' url: "http://127.0.0.1:{port}/hook"}}\n'  # warning that it has no state yet
        )
        daemon = Daemon(tmp_path, config)
        daemon.start()
        try:
            async with Kafka(tansu.bootstrap) as kafka:
                await kafka.wait_for("rollout.flags", lambda f: len(f) >= 1)
                await kafka.send(requests("canary", 50, 25))
                await kafka.wait_for("rollout.flags", lambda f: f[-1]["phase"] == "rolled_back")
                await kafka.wait_for("rollout.flags", lambda f: len(received) >= 2, deadline=30)
            assert daemon.signal(signal.SIGTERM) == 0
        finally:
            daemon.stop()
    finally:
        await runner.cleanup()
    assert [r["key"] for r in received] == ["co/errors", "co/errors"]  # retried once
    record = received[-1]
    assert (record["status"], record["severity"], record["action"]) == (
        "firing",
        "critical",
        "rollback",
    )
    assert record["value"] == 0.5
    assert record["threshold"] == 0.1
    assert "rolled back" in record["summary"]
    assert json.dumps(record)  # plain JSON
