"""The real SDKs obeying a real `rolloutd run`: OpenFeature with the flagd provider in
in-process file mode, and the Unleash Python SDK polling the admin server.

The daemon is a child process with a real mosquitto (events in, flag state out) on
loopback; the steps are walked with admin commands and the rollback comes from a breach
the daemon sees in its events. The tests wait for conditions with deadlines, never for fixed
times. (The flagd provider's RPC and in-process gRPC modes need a flagd server, which is
not packaged here; the file mode and the HTTP document are what is tested.)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from UnleashClient.clients.unleash_client import UnleashClient
from UnleashClient.utils import InstanceAllowType

from brokers import Mosquitto, free_port
from rolloutd.bucketing import in_rollout

pytestmark = pytest.mark.timeout(180)

TOKEN = "admin-token-1"
CLIENT_TOKEN = "unleash-client-token-1"
USERS = [f"user-{i}" for i in range(10_000)]
FLAG = "new_co"
FOLLOW = 1.0  # seconds an SDK may take to follow a change of the flag (file mode)

CONFIG = """
triggers:
  errors: {{metric: error_rate, window: 30s, op: ">", threshold: 0.2, for: 0s, min_samples: 50}}
  exposed:
    metric: "counter:exposures"
    window: 5m
    op: ">"
    threshold: 1.0e15
    min_samples: 1
    action: alert
rollouts:
  - name: co
    flag: {flag}
    steps: [{{percent: 5, hold: 1h}}, {{percent: 25, hold: 1h}}, {{percent: 100}}]
    bake: 1h
    triggers: [errors, exposed]
sources:
  mqtt: {{url: "{mqtt}", topics: ["telemetry/+/events"], client_id: rolloutd-delivery}}
sinks:
  mqtt: {{}}
state: {{path: "{state}"}}
http: {{listen: "127.0.0.1:{port}", token: "{token}"}}
delivery:
  flagd: {{file: "{file}", http: true}}
  unleash: {{client_tokens: ["another-client-token", "{client_token}"]}}
"""


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    base: str
    file: Path
    log: Path
    mosquitto: Mosquitto

    def call(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        request = urllib.request.Request(
            self.base + path, method=method, data=body, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def command(self, name: str) -> None:
        status, body, _ = self.call(
            f"/api/v1/rollouts/co/{name}",
            "POST",
            b'{"actor": "test"}',
            {"Authorization": f"Bearer {TOKEN}"},
        )
        assert status == 200, body

    def metric(self, name: str, **labels: str) -> float:
        text = self.call("/metrics")[1].decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        line = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
        assert line is not None, f"{name}{{{wanted}}} not exported"
        return float(line[1])

    def rollout(self) -> dict[str, Any]:
        status, body, _ = self.call("/api/v1/rollouts/co")
        assert status == 200
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    def flag_in_file(self) -> dict[str, Any]:
        flag: dict[str, Any] = json.loads(self.file.read_bytes())["flags"][FLAG]
        return flag


@pytest.fixture
def daemon(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Daemon]:
    port = free_port()
    config = tmp_path / "rolloutd.yaml"
    file = tmp_path / "flags" / "flags.flagd.json"
    file.parent.mkdir()
    config.write_text(
        CONFIG.format(
            flag=FLAG,
            mqtt=mosquitto.url,
            state=tmp_path / "s.db",
            port=port,
            token=TOKEN,
            file=file,
            client_token=CLIENT_TOKEN,
        )
    )
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rolloutd", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    daemon = Daemon(proc, f"http://127.0.0.1:{port}", file, log, mosquitto)
    wait_for(lambda: _ready(daemon), 30, log)
    yield daemon
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:  # never left running past its test
                proc.kill()
                proc.wait()
        assert code == 0, log.read_text()


def _ready(daemon: Daemon) -> bool:
    assert daemon.proc.poll() is None, daemon.log.read_text()
    try:
        return daemon.call("/readyz")[0] == 200
    except (urllib.error.URLError, ConnectionError):
        return False


def wait_for(condition: Callable[[], bool], seconds: float, log: Path | None = None) -> float:
    """Poll until `condition` holds; the wall-clock time it first held."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, log.read_text() if log else "condition never held"
        time.sleep(0.01)
    return time.time()


def breach(mosquitto: Mosquitto) -> None:
    """A canary error rate far over the trigger's bound, through the broker."""

    async def send() -> None:
        event = {"ts": time.time(), "type": "requests", "rollout": "co", "cohort": "canary"}
        payload = json.dumps({**event, "count": 100, "errors": 60})
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="dev-1") as client:
            await client.publish("telemetry/dev-1/events", payload, qos=1)

    asyncio.run(send())


def retained_flag_state(mosquitto: Mosquitto) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="reader") as client:
            await client.subscribe(f"rollouts/flags/{FLAG}", qos=1)
            message = await asyncio.wait_for(anext(aiter(client.messages)), 10)
        assert isinstance(message.payload, bytes)
        state: dict[str, Any] = json.loads(message.payload)
        return state

    return asyncio.run(read())


# -- OpenFeature + flagd, in-process file mode ------------------------------------------


@pytest.fixture
def openfeature_client(daemon: Daemon) -> Iterator[OpenFeatureClient]:
    api.set_provider(
        FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(daemon.file))
    )
    yield api.get_client()
    api.shutdown()


def share_on(client: OpenFeatureClient) -> float:
    on = sum(
        client.get_boolean_value(FLAG, False, EvaluationContext(targeting_key=user))
        for user in USERS
    )
    return on / len(USERS) * 100


def follow(client: OpenFeatureClient, daemon: Daemon, percent: float, phase: str) -> float:
    """Wait for the file to hold the step, then for the provider to evaluate it; the delay
    from the file's change to the provider's first evaluation of it."""
    wait_for(lambda: daemon.flag_in_file()["metadata"]["percent"] == percent, 10, daemon.log)
    changed = daemon.file.stat().st_mtime
    revision: int = daemon.flag_in_file()["metadata"]["revision"]

    def evaluated() -> bool:
        details = client.get_boolean_details(FLAG, False, EvaluationContext(targeting_key="x"))
        return details.flag_metadata.get("revision") == revision

    seen = wait_for(evaluated, 10)
    details = client.get_boolean_details(FLAG, False, EvaluationContext(targeting_key="x"))
    assert (details.flag_metadata["phase"], details.flag_metadata["rollout"]) == (phase, "co")
    return seen - changed


def test_openfeature_flagd_file_mode_follows_the_rollout(
    daemon: Daemon, openfeature_client: OpenFeatureClient
) -> None:
    delays = []
    for percent, phase, command in (
        (5, "progressing", None),
        (25, "progressing", "promote"),
        (100, "promoted", "promote"),
    ):
        if command is not None:
            daemon.command(command)
        delays.append(follow(openfeature_client, daemon, percent, phase))
        assert abs(share_on(openfeature_client) - percent) <= 1.5
    breach(daemon.mosquitto)  # the daemon rolls back on its own
    delays.append(follow(openfeature_client, daemon, 0, "rolled_back"))
    assert share_on(openfeature_client) == 0
    assert max(delays) <= FOLLOW, delays
    # The file, the HTTP document and the retained MQTT flag state are one state.
    status, body, headers = daemon.call("/flagd/flags.json")
    assert (status, body) == (200, daemon.file.read_bytes())
    state = retained_flag_state(daemon.mosquitto)
    metadata = daemon.flag_in_file()["metadata"]
    assert (state["percent"], state["phase"], state["revision"]) == (
        0,
        "rolled_back",
        metadata["revision"],
    )
    assert daemon.call("/flagd/flags.json", headers={"If-None-Match": headers["ETag"]})[0] == 304


# -- the Unleash SDK --------------------------------------------------------------------


@pytest.fixture
def unleash_client(daemon: Daemon, tmp_path: Path) -> Iterator[UnleashClient]:
    client = UnleashClient(
        url=f"{daemon.base}/api",
        app_name="shop",
        instance_id="shop-1",
        refresh_interval=1,
        metrics_interval=1,
        custom_headers={"Authorization": CLIENT_TOKEN},
        cache_directory=str(tmp_path / "unleash-cache"),
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
    client.initialize_client()
    yield client
    client.destroy()


def agrees(client: UnleashClient, percent: float) -> bool:
    return all(
        client.is_enabled(FLAG, {"userId": user}) == in_rollout(FLAG, user, percent)
        for user in USERS
    )


def test_unleash_sdk_buckets_every_user_as_in_rollout(
    daemon: Daemon, unleash_client: UnleashClient
) -> None:
    for percent, command in ((5, None), (25, "promote"), (100, "promote"), (0, "rollback")):
        if command is not None:
            daemon.command(command)
        assert daemon.rollout()["percent"] == percent
        wait_for(lambda p=percent: agrees(unleash_client, p), 10, daemon.log)  # type: ignore[misc]
        # Not a moment of agreement: the SDK holds the state for every one of them.
        assert agrees(unleash_client, percent)
        if percent == 100:  # while the triggers are armed
            wait_for(lambda: trigger_reads_the_exposures(daemon), 15, daemon.log)
    # Its metrics posts are accepted and counted.
    unleash_client.destroy()  # sends what is left
    assert daemon.metric("rolloutd_delivery_requests_total", endpoint="register", status="ok") == 1
    assert daemon.metric("rolloutd_delivery_requests_total", endpoint="metrics", status="ok") >= 2
    assert daemon.metric("rolloutd_events_total", source="unleash") > 0
    for cohort in ("canary", "control"):
        assert daemon.metric("rolloutd_exposures_total", rollout="co", cohort=cohort) > 0


def trigger_reads_the_exposures(daemon: Daemon) -> bool:
    """The `exposed` trigger (counter:exposures, canary) reads what the SDK reported."""
    canary = daemon.metric("rolloutd_exposures_total", rollout="co", cohort="canary")
    exposed = next(t for t in daemon.rollout()["triggers"] if t["name"] == "exposed")
    return bool(canary > 0 and exposed["value"] == canary)


# -- bad input --------------------------------------------------------------------------


def post_metrics(daemon: Daemon, body: bytes, token: str = CLIENT_TOKEN) -> int:
    return daemon.call("/api/client/metrics", "POST", body, {"Authorization": token})[0]


def test_wrong_tokens_and_bad_bodies_are_refused_and_counted(daemon: Daemon) -> None:
    for headers in ({}, {"Authorization": "wrong"}, {"Authorization": f"Bearer {TOKEN}"}):
        status, body, _ = daemon.call("/api/client/features", headers=headers)
        assert status == 401
        assert FLAG.encode() not in body
    status, body, headers = daemon.call(
        "/api/client/features", headers={"Authorization": CLIENT_TOKEN}
    )
    assert status == 200
    assert json.loads(body)["features"][0]["name"] == FLAG
    etag = headers["ETag"]
    cached = {"Authorization": CLIENT_TOKEN, "If-None-Match": etag}
    assert daemon.call("/api/client/features", headers=cached)[:2] == (304, b"")
    stop = datetime.now(UTC).isoformat()
    bucket = {"start": stop, "stop": stop, "toggles": {FLAG: {"yes": 1, "no": 9}}}
    good = json.dumps({"appName": "shop", "bucket": bucket}).encode()
    assert post_metrics(daemon, good, token="wrong") == 401
    assert post_metrics(daemon, b'{"bucket": {"toggles": {"new_co": {"yes": -3}}}}') == 400
    assert post_metrics(daemon, b"{not json") == 400
    assert post_metrics(daemon, b'{"bucket": "x"}' + b" " * (70 * 1024)) == 413
    register = {"Authorization": CLIENT_TOKEN}
    assert daemon.call("/api/client/register", "POST", b"[]", register)[0] == 400
    # Counted, nothing taken, and the daemon goes on.
    assert (
        daemon.metric("rolloutd_delivery_requests_total", endpoint="metrics", status="malformed")
        == 2
    )
    assert (
        daemon.metric("rolloutd_delivery_requests_total", endpoint="metrics", status="too_large")
        == 1
    )
    assert (
        daemon.metric("rolloutd_delivery_requests_total", endpoint="metrics", status="unauthorized")
        == 1
    )
    assert (
        daemon.metric(
            "rolloutd_delivery_requests_total", endpoint="features", status="unauthorized"
        )
        == 3
    )
    assert (
        daemon.metric("rolloutd_delivery_requests_total", endpoint="register", status="malformed")
        == 1
    )
    assert daemon.metric("rolloutd_exposures_total", rollout="co", cohort="canary") == 0
    assert daemon.metric("rolloutd_events_total", source="unleash") == 0
    assert daemon.call("/healthz")[0] == 200
    assert post_metrics(daemon, good) == 202
    assert daemon.metric("rolloutd_exposures_total", rollout="co", cohort="control") == 9
    # one post: two exposure counters and the share, through the pipeline like any source's
    assert daemon.metric("rolloutd_events_total", source="unleash") == 3
    assert daemon.call("/api/client/features", headers=cached)[0] == 304  # nothing changed
    daemon.command("promote")
    assert daemon.call("/api/client/features", headers=cached)[0] == 200
    assert CLIENT_TOKEN not in daemon.log.read_text()
