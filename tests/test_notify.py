"""Alerts against a real local HTTP receiver: request shapes, routing, retries, grouping,
repeats and at-least-once delivery through the outbox.

Every test runs on a fast-forward event loop: whenever the loop would wait for a timer, its
clock jumps there, so minutes of backoff, Retry-After, group_wait and repeat_interval take
milliseconds, while the receiver's sockets stay real.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import logging
import random
import selectors
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, TypeVarTuple

import msgspec
import pytest
from aiohttp import web
from pydantic import TypeAdapter

from rolloutd.adapters.notify import (
    AlertDispatcher,
    AlertRecord,
    daemon_alert,
    decode_record,
    route,
    trigger_alert,
)
from rolloutd.adapters.notify.base import rfc3339
from rolloutd.adapters.notify.http import Redactor, retry_after
from rolloutd.adapters.store import Batch, OutboxItem, Store
from rolloutd.config import Alert, parse_config
from rolloutd.core.decisions import AlertDecision, TriggerDecision
from rolloutd.core.outbound import Sink
from rolloutd.core.spec import TriggerSpec

T0 = 1_763_719_200.0
ROUTING_KEY = "0123456789abcdef0123456789abcdef"
SLACK_PATH = "/services/T000/B000/XXXXSLACKSECRET"
HEADER_SECRET = "Bearer hunter2-header-token"
LOGGER = "rolloutd.alerts"


# -- time: a loop whose clock jumps to the next timer ---------------------------------------
T = TypeVar("T")
Ts = TypeVarTuple("Ts")
IDLE_POLLS = 20  # empty I/O polls before the clock jumps: loopback data is there by then


class FastForwardLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time (the autojump of trio's MockClock, or looptime).

    When nothing is ready and the loop would sleep until its next timer, it polls the real
    sockets a few times and, if they stay quiet and no thread is working for it (asyncio
    resolves addresses in one), moves its clock to that timer instead of sleeping.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.idle = 0
        self.in_threads: set[asyncio.Future[Any]] = set()
        selector: selectors.BaseSelector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            events = real_select(0)
            if events or timeout == 0:
                self.idle = 0
                return events
            if timeout is None or self.in_threads:  # only real I/O can move things on
                return real_select(None if timeout is None else min(timeout, 0.01))
            self.idle += 1
            if self.idle >= IDLE_POLLS:
                self.idle = 0
                self.now += timeout
            return []

        selector.select = select  # type: ignore[method-assign]

    def time(self) -> float:
        return self.now

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.in_threads.add(future)
        future.add_done_callback(self.in_threads.discard)
        return future


def fast_forward(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test on a FastForwardLoop of its own, its receivers serving meanwhile."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        async def main() -> None:
            async with contextlib.AsyncExitStack() as stack:
                for value in kwargs.values():
                    if isinstance(value, Receiver):
                        await stack.enter_async_context(value.serving())
                await test(*args, **kwargs)

        with asyncio.Runner(loop_factory=FastForwardLoop) as runner:
            runner.run(main())

    return run


# -- a real receiver ------------------------------------------------------------------------
@dataclass
class Reply:
    status: int = 200
    body: str = "ok"
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # answer only when released (or never): a receiver that hangs


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float  # loop time
    status: int


class Receiver:
    """An aiohttp server on a free loopback port that records requests and answers as told."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.replies: deque[Reply] = deque()
        self.replies_for: dict[str, deque[Reply]] = {}  # by path, before the shared queue
        self.released = asyncio.Event()
        self.arrived = asyncio.Event()
        self.url = ""

    def reply(self, *replies: Reply, path: str | None = None) -> None:
        queue = self.replies if path is None else self.replies_for.setdefault(path, deque())
        queue.extend(replies)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        queue = self.replies_for.get(request.path) or self.replies
        reply = queue.popleft() if queue else Reply()
        at = asyncio.get_running_loop().time()
        received = Received(
            request.method, request.path, dict(request.headers), body, at, reply.status
        )
        self.requests.append(received)
        self.arrived.set()
        if reply.hold:
            await self.released.wait()
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def wait_for(self, count: int, within: float = 30.0) -> list[Received]:
        async with asyncio.timeout(within):
            while len(self.requests) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.requests

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        try:
            yield
        finally:
            self.released.set()
            await runner.cleanup()

    def delivered(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher honours proxy variables; the receiver is on loopback."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def receiver() -> Receiver:
    """A receiver; tests decorated with @fast_forward have it serving on a free port."""
    return Receiver()


# -- helpers --------------------------------------------------------------------------------
_alert = TypeAdapter(Alert)


def notifier(kind: str, receiver: Receiver, **options: Any) -> Alert:
    base: dict[str, Any] = {"name": options.pop("name", kind), "type": kind}
    if kind == "slack":
        base["webhook_url"] = receiver.url + SLACK_PATH
    elif kind == "pagerduty":
        base |= {"routing_key": ROUTING_KEY, "url": receiver.url + "/v2/enqueue"}
    else:
        base |= {"url": receiver.url + ("/hook" if kind == "webhook" else "")}
        base["headers"] = {"Authorization": HEADER_SECRET}
    return _alert.validate_python(base | options)


def record(
    status: str = "firing",
    rollout: str | None = "checkout-v2",
    trigger: str | None = "error-spike",
    severity: str = "critical",
    ts: float = T0,
) -> AlertRecord:
    key = f"{rollout}/{trigger}" if rollout else f"rolloutd/{trigger}"
    summary = f"{rollout}: {trigger} {status}: error_rate 0.12 > 0.05 (4123 samples)"
    return AlertRecord(
        key=key, status=status, severity=severity, rollout=rollout, trigger=trigger,
        summary=summary, ts=ts, value=0.12, threshold=0.05, percent=0.0,
        phase="rolled_back", action="rollback", details={"samples": "4123"},
    )  # fmt: skip


class Outbox:
    """Row ids and confirmations, the way the store hands them out."""

    def __init__(self) -> None:
        self.next_id = 1
        self.confirmed: list[int] = []

    def rows(self, alerts: list[Alert], *records: AlertRecord) -> list[OutboxItem]:
        items = []
        for rec in records:
            for sink, key, payload, retain in route(alerts, rec):
                items.append(OutboxItem(self.next_id, sink, key, payload, retain))
                self.next_id += 1
        return items

    def confirm(self, ids: list[int]) -> None:
        self.confirmed.extend(ids)


def loop_clock() -> Callable[[], float]:
    """Wall time that runs with the (fake) loop clock."""
    loop = asyncio.get_running_loop()
    return lambda: T0 + loop.time()


@contextlib.asynccontextmanager
async def running(dispatcher: AlertDispatcher) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(dispatcher.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Poll `condition` (confirmations have no event to wait on)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def our_logs(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("rolloutd"))


def block_text(message: dict[str, Any]) -> str:
    return msgspec.json.encode(message["blocks"]).decode()


# -- records, routing, configuration --------------------------------------------------------
def test_route_filters_by_severity_rollout_and_send_resolved() -> None:
    receiver = Receiver()
    receiver.url = "http://127.0.0.1:9"
    oncall = notifier("pagerduty", receiver, name="oncall", severities=["critical"])
    team = notifier("slack", receiver, name="team", rollouts=["checkout-v2"])
    quiet = notifier("webhook", receiver, name="quiet", send_resolved=False, repeat_interval=0)
    alerts = [oncall, team, quiet]

    def sinks(rec: AlertRecord) -> list[str]:
        return [str(sink) for sink, *_ in route(alerts, rec)]

    assert sinks(record()) == ["alert:oncall", "alert:team", "alert:quiet"]
    assert sinks(record(severity="warning")) == ["alert:team", "alert:quiet"]
    assert sinks(record(rollout="orders-split", severity="info")) == ["alert:quiet"]
    assert sinks(record("resolved")) == ["alert:oncall", "alert:team"]
    # A daemon alert has no rollout: notifiers limited to rollouts do not get it.
    assert sinks(record(rollout=None, trigger="store")) == ["alert:oncall", "alert:quiet"]
    _, key, payload, retain = route(alerts, record())[0]
    assert (key, retain, decode_record(payload)) == (b"checkout-v2/error-spike", False, record())


def test_resolved_rows_reach_a_repeating_notifier_without_send_resolved() -> None:
    receiver = Receiver()
    receiver.url = "http://127.0.0.1:9"
    repeating = notifier("webhook", receiver, send_resolved=False)  # repeats every 4h
    assert [str(sink) for sink, *_ in route([repeating], record("resolved"))] == ["alert:webhook"]


def test_record_rejects_unknown_status_and_severity() -> None:
    good = msgspec.json.encode(record())
    decode_record(good)
    # msgspec words the error (its text is not ours to compare): the type says it refused.
    with pytest.raises(msgspec.ValidationError):
        decode_record(good.replace(b'"firing"', b'"burning"'))
    with pytest.raises(msgspec.ValidationError):
        decode_record(good.replace(b'"critical"', b'"meh"'))


def test_config_group_wait_and_repeat_interval() -> None:
    text = """
alerts:
  - {name: team, type: slack, webhook_url: "https://hooks.example/x", group_wait: 5s,
     repeat_interval: 1h30m}
  - {name: hook, type: webhook, url: "https://example.invalid/hook"}
"""
    team, hook = parse_config(text).alerts
    assert (team.group_wait, team.repeat_interval) == (5.0, 5400.0)
    assert (hook.group_wait, hook.repeat_interval) == (0.0, 4 * 3600.0)


def test_retry_after_seconds_dates_and_garbage() -> None:
    assert retry_after("30", T0) == 30.0
    assert retry_after(email.utils.formatdate(T0 + 45, usegmt=True), T0) == 45.0
    assert retry_after(email.utils.formatdate(T0 - 45, usegmt=True), T0) == 0.0
    assert retry_after("1e9", T0) == 3600.0  # capped
    assert retry_after("soon", T0) is None
    assert retry_after(None, T0) is None


def test_redactor_hides_configured_and_look_alike_secrets() -> None:
    redact = Redactor(["https://hooks.example/services/abc", "s3cr3t"])
    text = redact(
        'bad https://hooks.example/services/abc: {"routing_key": "abc", "x": "s3cr3t"} '
        "Authorization: Bearer xyz https://bob:pw@host/ " + ROUTING_KEY
    )
    for secret in ("hooks.example", "s3cr3t", "xyz", "pw@", ROUTING_KEY, '"abc"'):
        assert secret not in text
    assert "Bearer [redacted]" in text


def test_trigger_alert_from_decisions() -> None:
    spec = TriggerSpec(name="error-spike", metric="error_rate", op=">", window=300.0)
    fired = AlertDecision(
        ts=T0, kind="alert", rollout="checkout-v2", trigger="error-spike",
        severity="critical", status="firing", action="rollback",
    )  # fmt: skip
    measured = TriggerDecision(
        ts=T0, kind="trigger", rollout="checkout-v2", trigger="error-spike", state="firing",
        value=0.12, threshold=0.05, samples=4123,
    )  # fmt: skip
    rec = trigger_alert(fired, spec=spec, measured=measured, percent=0, phase="rolled_back")
    assert rec.key == "checkout-v2/error-spike"
    assert rec.summary == (
        "checkout-v2: error-spike firing: error_rate 0.12 > 0.05 (4123 samples); rolled back to 0%"
    )
    assert (rec.value, rec.threshold, rec.action) == (0.12, 0.05, "rollback")
    assert rec.details == {"samples": "4123", "metric": "error_rate", "cohort": "canary",
                           "window": "5m"}  # fmt: skip
    resolved = msgspec.structs.replace(fired, status="resolved", ts=T0 + 60)
    bare = trigger_alert(resolved)
    assert (bare.key, bare.status, bare.summary) == (
        rec.key,
        "resolved",
        "checkout-v2: error-spike resolved",
    )


def test_daemon_alert_is_keyed_by_what_went_wrong() -> None:
    rec = daemon_alert("config-reload", "firing", "reload rejected", T0, severity="warning")
    assert (rec.key, rec.rollout, rec.trigger) == ("rolloutd/config-reload", None, None)
    assert rec.summary == "rolloutd: reload rejected"


# -- request shapes -------------------------------------------------------------------------
@fast_forward
async def test_slack_message_shows_value_bound_and_dashboard(receiver: Receiver) -> None:
    alerts = [notifier("slack", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(
        alerts,
        outbox.confirm,
        dashboard_url="https://grafana.example/d/rollouts?var-rollout={rollout}",
    )
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        dispatcher.add(outbox.rows(alerts, record("resolved", ts=T0 + 60)))
        fired, resolved = await receiver.wait_for(2)
        await until(lambda: outbox.confirmed == [1, 2])
    assert (fired.method, fired.path) == ("POST", SLACK_PATH)
    text = block_text(fired.body)
    assert "`0.12` vs `0.05`" in text
    assert "https://grafana.example/d/rollouts?var-rollout=checkout-v2" in text
    assert "FIRING" in text
    assert "rollback" in text
    assert "rolled_back" in text
    assert fired.body["text"] == record().summary
    assert "RESOLVED" in block_text(resolved.body)
    assert dispatcher.sent == {("slack", "ok"): 2}


@fast_forward
async def test_pagerduty_trigger_then_resolve_with_one_dedup_key(receiver: Receiver) -> None:
    alerts = [notifier("pagerduty", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record(severity="warning"), record("resolved")))
        trigger, resolve = await receiver.wait_for(2)
    assert trigger.path == "/v2/enqueue"
    assert trigger.body["routing_key"] == ROUTING_KEY
    assert trigger.body["event_action"] == "trigger"
    assert trigger.body["dedup_key"] == resolve.body["dedup_key"] == "checkout-v2/error-spike"
    payload = trigger.body["payload"]
    assert (payload["severity"], payload["source"]) == ("warning", "rolloutd")
    assert payload["summary"] == record().summary
    assert payload["custom_details"]["value"] == "0.12"
    assert payload["custom_details"]["samples"] == "4123"
    assert resolve.body["event_action"] == "resolve"


@fast_forward
async def test_alertmanager_labels_and_end_on_resolve(receiver: Receiver) -> None:
    alerts = [notifier("alertmanager", receiver, repeat_interval="1m")]
    outbox = Outbox()
    now = T0 + 300
    dispatcher = AlertDispatcher(alerts, outbox.confirm, clock=lambda: now)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        (fired,) = await receiver.wait_for(1)
        dispatcher.add(outbox.rows(alerts, record("resolved", ts=T0 + 200)))
        _, resolved = await receiver.wait_for(2)
    assert fired.path == "/api/v2/alerts"
    assert fired.headers["Authorization"] == HEADER_SECRET
    (alert,) = fired.body
    assert alert["labels"] == {
        "alertname": "RolloutTrigger", "rollout": "checkout-v2", "trigger": "error-spike",
        "severity": "critical",
    }  # fmt: skip
    assert alert["annotations"]["summary"] == record().summary
    assert alert["startsAt"] == rfc3339(T0)
    assert alert["endsAt"] == rfc3339(now + 120)  # kept alive across two repeat intervals
    (ended,) = resolved.body
    assert ended["labels"] == alert["labels"]
    assert (ended["startsAt"], ended["endsAt"]) == (rfc3339(T0), rfc3339(now))


@fast_forward
async def test_webhook_posts_the_record_json(receiver: Receiver) -> None:
    alerts = [notifier("webhook", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    problem = daemon_alert("publish-failed", "firing", "kafka publish failing", T0)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, problem))
        (hook,) = await receiver.wait_for(1)
    assert hook.path == "/hook"
    assert hook.headers["Authorization"] == HEADER_SECRET
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.body == msgspec.to_builtins(problem)
    assert hook.body["key"] == "rolloutd/publish-failed"


# -- failures -------------------------------------------------------------------------------
@fast_forward
async def test_500_is_retried_until_delivered_once(receiver: Receiver) -> None:
    alerts = [notifier("pagerduty", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm, rng=random.Random(1))
    receiver.reply(Reply(500, "oops"), Reply(502, "bad gateway"), Reply(202, "{}"))
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        first, second, third = await receiver.wait_for(3, within=60)
        await until(lambda: outbox.confirmed == [1])
        await asyncio.sleep(120)  # nothing more goes out
    assert len(receiver.requests) == 3
    assert len(receiver.delivered()) == 1
    assert 0.5 <= second.at - first.at <= 1.0  # backoff with jitter: [d/2, d], doubling
    assert 1.0 <= third.at - second.at <= 2.0
    assert dispatcher.sent == {("pagerduty", "retry"): 2, ("pagerduty", "ok"): 1}


@fast_forward
async def test_retry_after_is_honoured_in_seconds_and_as_a_date(receiver: Receiver) -> None:
    alerts = [notifier("slack", receiver)]
    outbox = Outbox()
    clock = loop_clock()
    dispatcher = AlertDispatcher(alerts, outbox.confirm, clock=clock)
    receiver.reply(Reply(429, "rate_limited", {"Retry-After": "30"}))
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        first, second = await receiver.wait_for(2, within=120)
        date = email.utils.formatdate(clock() + 45, usegmt=True)
        receiver.reply(Reply(503, "maintenance", {"Retry-After": date}))
        dispatcher.add(outbox.rows(alerts, record("resolved")))
        _, third, fourth = (await receiver.wait_for(4, within=120))[1:]
        await until(lambda: outbox.confirmed == [1, 2])
    assert second.at - first.at == pytest.approx(30, abs=0.01)
    assert fourth.at - third.at == pytest.approx(45, abs=1.0)  # HTTP dates have whole seconds


@fast_forward
async def test_400_is_dropped_logged_with_its_body_and_no_secret(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    alerts = [notifier("pagerduty", receiver), notifier("slack", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    echo = f'{{"status":"invalid event","errors":["routing_key {ROUTING_KEY} is not valid"]}}'
    receiver.reply(Reply(400, echo), path="/v2/enqueue")
    receiver.reply(Reply(404, f"no_service at {SLACK_PATH}"), path=SLACK_PATH)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        await until(lambda: sorted(outbox.confirmed) == [1, 2])
        await asyncio.sleep(0.05)
    assert len(receiver.requests) == 2  # neither is retried
    assert dispatcher.sent == {("pagerduty", "dropped"): 1, ("slack", "dropped"): 1}
    logs = our_logs(caplog)
    assert "HTTP 400" in logs
    assert "invalid event" in logs
    assert "is not valid" in logs
    assert "HTTP 404" in logs
    assert "no_service" in logs
    for secret in (ROUTING_KEY, SLACK_PATH, "XXXXSLACKSECRET", receiver.url + SLACK_PATH):
        assert secret not in logs


@fast_forward
async def test_a_hanging_receiver_times_out_and_is_retried(receiver: Receiver) -> None:
    alerts = [notifier("webhook", receiver, timeout="2s")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    receiver.reply(Reply(hold=True))
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        first, second = await receiver.wait_for(2, within=60)
        await until(lambda: outbox.confirmed == [1])
    assert second.at - first.at >= 2.0
    assert dispatcher.sent == {("webhook", "retry"): 1, ("webhook", "ok"): 1}


@fast_forward
async def test_one_notifier_down_does_not_hold_up_another(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    down = _alert.validate_python(
        {"name": "down", "type": "slack", "webhook_url": "http://127.0.0.1:9" + SLACK_PATH}
    )
    alerts = [down, notifier("webhook", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record(), record("resolved")))
        await receiver.wait_for(2)
        await until(lambda: outbox.confirmed == [2, 4])  # the webhook's rows, in order
        await asyncio.sleep(300)
    assert [r.body["status"] for r in receiver.requests] == ["firing", "resolved"]
    assert dispatcher.sent[("down", "retry")] >= 5
    assert dispatcher.sent[("down", "ok")] == 0
    assert "alert to down failed" in our_logs(caplog)
    assert "XXXXSLACKSECRET" not in our_logs(caplog)


def test_rows_that_cannot_be_sent_are_given_up() -> None:
    receiver = Receiver()
    receiver.url = "http://127.0.0.1:9"
    outbox = Outbox()
    dispatcher = AlertDispatcher([notifier("webhook", receiver)], outbox.confirm)
    dispatcher.add([
        OutboxItem(7, Sink.parse("alert:gone"), b"k", msgspec.json.encode(record())),
        OutboxItem(8, Sink.parse("alert:webhook"), b"k", b'{"not": "a record"}'),
        OutboxItem(9, Sink.parse("kafka:rollout.flags"), b"k", b"{}"),  # not ours: ignored
    ])  # fmt: skip
    assert outbox.confirmed == [7, 8]
    assert dispatcher.sent == {("gone", "failed"): 1, ("webhook", "failed"): 1}


# -- grouping and repeats -------------------------------------------------------------------
@fast_forward
async def test_a_storm_from_one_rollout_is_one_slack_message(receiver: Receiver) -> None:
    alerts = [notifier("slack", receiver, group_wait="5s")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    loop = asyncio.get_running_loop()
    async with running(dispatcher):
        start = loop.time()
        for trigger in ("error-spike", "latency-p99", "availability"):
            dispatcher.add(outbox.rows(alerts, record(trigger=trigger)))
            await asyncio.sleep(1.5)
        dispatcher.add(outbox.rows(alerts, record(rollout="orders-split")))
        await receiver.wait_for(2, within=30)
        await asyncio.sleep(60)
    storm, other = receiver.requests
    assert storm.at - start == pytest.approx(5, abs=0.01)
    text = block_text(storm.body)
    assert all(t in text for t in ("error-spike", "latency-p99", "availability"))
    assert storm.body["blocks"][0]["text"]["text"] == "checkout-v2: 3 alerts (3 firing)"
    assert "orders-split" in block_text(other.body)
    assert "checkout-v2" not in block_text(other.body)
    assert len(receiver.requests) == 2
    assert outbox.confirmed == [1, 2, 3, 4]
    assert dispatcher.sent == {("slack", "ok"): 4}


@fast_forward
async def test_grouped_pagerduty_still_sends_one_event_per_key(receiver: Receiver) -> None:
    alerts = [notifier("pagerduty", receiver, group_wait="5s")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    loop = asyncio.get_running_loop()
    async with running(dispatcher):
        start = loop.time()
        dispatcher.add(outbox.rows(alerts, record(), record(trigger="latency-p99")))
        events = await receiver.wait_for(2)
    assert [e.body["dedup_key"] for e in events] == [
        "checkout-v2/error-spike", "checkout-v2/latency-p99",
    ]  # fmt: skip
    assert all(e.at - start == pytest.approx(5, abs=0.01) for e in events)


@fast_forward
async def test_alertmanager_daemon_alert_labels(receiver: Receiver) -> None:
    alerts = [notifier("alertmanager", receiver, repeat_interval=0)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, daemon_alert("store-error", "firing", "disk", T0)))
        (posted,) = await receiver.wait_for(1)
    (alert,) = posted.body
    assert alert["labels"] == {
        "alertname": "RolloutdAlert", "key": "rolloutd/store-error", "severity": "critical",
    }  # fmt: skip
    assert "endsAt" not in alert  # no repeats: Alertmanager's resolve_timeout applies


@fast_forward
async def test_grouped_webhook_posts_an_array(receiver: Receiver) -> None:
    alerts = [notifier("webhook", receiver, group_wait="5s")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record(), record(trigger="latency-p99")))
        (hook,) = await receiver.wait_for(1, within=30)
    assert [item["trigger"] for item in hook.body] == ["error-spike", "latency-p99"]


@fast_forward
async def test_still_firing_alerts_repeat_until_resolved(receiver: Receiver) -> None:
    alerts = [notifier("slack", receiver, repeat_interval="1m")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    loop = asyncio.get_running_loop()
    async with running(dispatcher):
        start = loop.time()
        dispatcher.add(outbox.rows(alerts, record()))
        await receiver.wait_for(3, within=200)
        await asyncio.sleep(130 - (loop.time() - start))
        dispatcher.add(outbox.rows(alerts, record("resolved")))
        await receiver.wait_for(4)
        await asyncio.sleep(600)
    times = [round(r.at - start) for r in receiver.requests]
    assert times == [0, 60, 120, 130]
    texts = [block_text(r.body) for r in receiver.requests]
    assert "STILL FIRING" not in texts[0]
    assert "STILL FIRING" in texts[1]
    assert "RESOLVED" in texts[3]
    assert outbox.confirmed == [1, 2]  # repeats have no rows
    assert dispatcher.sent == {("slack", "ok"): 4}


@fast_forward
async def test_without_send_resolved_a_resolve_only_stops_the_repeats(receiver: Receiver) -> None:
    alerts = [notifier("pagerduty", receiver, send_resolved=False, repeat_interval="1m")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        await receiver.wait_for(2, within=100)  # sent, then repeated
        dispatcher.add(outbox.rows(alerts, record("resolved")))
        await until(lambda: outbox.confirmed == [1, 2])
        await asyncio.sleep(600)
    assert [r.body["event_action"] for r in receiver.requests] == ["trigger", "trigger"]


# -- shutdown and crashes -------------------------------------------------------------------
@fast_forward
async def test_flush_sends_open_groups_at_once_and_reports_leftovers(receiver: Receiver) -> None:
    alerts = [notifier("slack", receiver, group_wait="1m")]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    loop = asyncio.get_running_loop()
    dispatcher.add(outbox.rows(alerts, record()))
    start = loop.time()
    assert await dispatcher.flush(5.0)
    assert loop.time() - start < 1
    assert outbox.confirmed == [1]
    receiver.reply(*[Reply(500)] * 50)
    dispatcher.add(outbox.rows(alerts, record("resolved")))
    assert not await dispatcher.flush(5.0)
    assert loop.time() - start == pytest.approx(5, abs=0.1)
    assert outbox.confirmed == [1]  # the resolve stays in the outbox


@fast_forward
async def test_unconfirmed_rows_are_delivered_again_after_a_crash(
    receiver: Receiver, tmp_path: Path
) -> None:
    """kill -9 while a request is in flight: the next run sends it again, and the
    receiver, deduplicating by key, still sees each alert once."""
    alerts = [notifier("webhook", receiver)]
    state = tmp_path / "state.db"
    with Store.open(state) as store:
        rows: list[tuple[Sink, bytes | None, bytes, bool]] = [
            *route(alerts, record()),
            *route(alerts, record("resolved", ts=T0 + 5)),
        ]
        ids = store.commit(Batch(outbox=rows))
        items = store.load().outbox
        receiver.reply(Reply(), Reply(hold=True))  # the firing lands; the resolve hangs
        first = AlertDispatcher(alerts, store.confirm)
        async with running(first):
            first.add(items)
            await receiver.wait_for(2)
        # "Crashed" with the resolve in flight: its row stays.
        assert [item.id for item in store.load().outbox] == ids[1:]
    with Store.open(state) as store:
        second = AlertDispatcher(alerts, store.confirm)
        async with running(second):
            second.add(store.load().outbox)
            await receiver.wait_for(3)
            await until(lambda: not store.load().outbox)
    received = [(r.body["key"], r.body["status"]) for r in receiver.requests]
    assert received == [("checkout-v2/error-spike", s) for s in ("firing", "resolved", "resolved")]
    latest = {key: status for key, status in received}  # what a deduplicating receiver keeps
    assert latest == {"checkout-v2/error-spike": "resolved"}


@fast_forward
async def test_notify_sends_without_a_row_when_the_store_cannot_hold_one(
    receiver: Receiver,
) -> None:
    team = notifier("slack", receiver, rollouts=["checkout-v2"])
    alerts = [notifier("pagerduty", receiver), team]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    dispatcher.notify(daemon_alert("store-error", "firing", "state file unwritable", T0))
    assert await dispatcher.flush(5.0)  # say, on the way out after a StoreError
    (page,) = receiver.requests  # the rollout-scoped Slack notifier does not get it
    assert page.body["dedup_key"] == "rolloutd/store-error"
    assert outbox.confirmed == []
    assert dispatcher.sent == {("pagerduty", "ok"): 1}


@fast_forward
async def test_adding_the_same_rows_twice_sends_them_once(receiver: Receiver) -> None:
    alerts = [notifier("webhook", receiver)]
    outbox = Outbox()
    dispatcher = AlertDispatcher(alerts, outbox.confirm)
    items = outbox.rows(alerts, record())
    dispatcher.add(items)
    dispatcher.add(items)  # say, restored from the store and handed over again
    async with running(dispatcher):
        await receiver.wait_for(1)
        await until(lambda: outbox.confirmed == [1])
        await asyncio.sleep(0.05)
    assert len(receiver.requests) == 1


@fast_forward
async def test_reconfigure_gives_up_removed_notifiers_and_starts_new_ones(
    receiver: Receiver,
) -> None:
    hook, team = notifier("webhook", receiver), notifier("slack", receiver)
    outbox = Outbox()
    dispatcher = AlertDispatcher([hook], outbox.confirm)
    receiver.reply(Reply(hold=True))
    async with running(dispatcher):
        dispatcher.add(outbox.rows([hook], record()))
        await receiver.wait_for(1)
        dispatcher.reconfigure([team])
        assert outbox.confirmed == [1]
        assert dispatcher.sent == {("webhook", "failed"): 1}
        dispatcher.add(outbox.rows([team], record()))
        await receiver.wait_for(2)
        await until(lambda: outbox.confirmed == [1, 2])
    assert receiver.requests[1].path == SLACK_PATH


@fast_forward
async def test_a_daemon_that_does_not_lead_sends_nothing_until_it_does(receiver: Receiver) -> None:
    alerts = [notifier("webhook", receiver)]
    outbox = Outbox()
    leading = False
    dispatcher = AlertDispatcher(alerts, outbox.confirm, may_send=lambda: leading)
    async with running(dispatcher):
        dispatcher.add(outbox.rows(alerts, record()))
        await asyncio.sleep(60)  # a standby, or a leader stopped past its lease
        assert receiver.requests == []
        assert outbox.confirmed == []  # the row stays for the leader
        leading = True
        await receiver.wait_for(1, within=10)
        await until(lambda: outbox.confirmed == [1])
    assert dispatcher.sent == {("webhook", "ok"): 1}
