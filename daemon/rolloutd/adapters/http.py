"""HTTP: /metrics, /healthz, /readyz and the admin API, in one aiohttp app.

Rules: reads are open; every mutation needs `Authorization: Bearer <token>` compared in
constant time, and with no token configured mutations are refused (403), never open; a
standby (another daemon leads) answers mutations 503 and serves the reads. A command the
rollout refuses is 409 with the reason; an unknown rollout is 404. Every
mutation goes through the engine as a command event carrying the actor, so it is an audit
decision like any other. Nothing here decides.
"""

from __future__ import annotations

import hmac
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from rolloutd.adapters.delivery import DeliveryRoutes
from rolloutd.adapters.status import StatusView
from rolloutd.core.decisions import Decision, to_dict
from rolloutd.core.events import CommandName
from rolloutd.core.machines import BREAKER_COMMANDS, COMMANDS
from rolloutd.core.rollout import RolloutRuntime
from rolloutd.core.triggers import TriggerRuntime

MUTATIONS = COMMANDS
assert set(MUTATIONS) <= set(get_args(CommandName))

# (rollout, command, actor, percent, full) -> decisions; the service runs it on its loop.
CommandRunner = Callable[[str, CommandName, str, float | None, bool], Awaitable[list[Decision]]]
# (breaker, command) -> decisions
BreakerRunner = Callable[[str, str], Awaitable[list[Decision]]]


@dataclass(slots=True)
class AdminContext:
    pipeline: Callable[[], StatusView]  # the pipeline, read through its status view
    registry: CollectorRegistry
    token: str | None
    run_command: CommandRunner
    healthy: Callable[[], dict[str, bool]]  # task name -> alive
    ready: Callable[[], dict[str, bool]]  # condition -> met
    run_breaker_command: BreakerRunner | None = None
    not_ready: Callable[[], dict[str, str]] = dict  # source -> why it is not up
    delivery: DeliveryRoutes | None = None  # flagd / Unleash endpoints; None: absent
    standby: Callable[[], str | None] = lambda: None  # why this daemon may not act; None: leads


CTX = web.AppKey("ctx", AdminContext)


def rollout_view(rollout: RolloutRuntime, recent: Sequence[Decision]) -> dict[str, Any]:
    """What the API shows of one rollout."""
    for trig in rollout.triggers:
        trig.refresh()
    return {
        "name": rollout.spec.name,
        "flag": rollout.spec.flag,
        "phase": rollout.phase,
        "percent": rollout.percent,
        "step": rollout.step + 1,
        "steps": [s.percent for s in rollout.spec.steps],
        "triggers": [
            {
                "name": t.spec.name,
                "metric": t.spec.metric,
                "state": t.state,
                "value": _finite(t.value),
                "threshold": _finite(t.bound),
                "samples": t.samples,
                "action": t.spec.action,
                **_evidence(t),
            }
            for t in rollout.triggers
        ],
        "recent_decisions": [to_dict(d) for d in recent],
    }


def _evidence(trig: TriggerRuntime) -> dict[str, Any]:
    """A judge trigger's evidence (core/judging.py); nothing for other triggers."""
    evidence = trig.evidence()
    return {} if evidence is None else {"evidence": msgspec.to_builtins(evidence)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def build_app(ctx: AdminContext) -> web.Application:
    app = web.Application(client_max_size=64 * 1024)
    app[CTX] = ctx
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/api/v1/rollouts", _list)
    app.router.add_get("/api/v1/rollouts/{name}", _show)
    app.router.add_post("/api/v1/rollouts/{name}/{command}", _mutate)
    app.router.add_get("/api/v1/breakers", _breakers)
    app.router.add_get("/api/v1/migrations", _migrations)
    app.router.add_post("/api/v1/breakers/{name}/{command}", _breaker_command)
    if ctx.delivery is not None:
        ctx.delivery.add_to(app)
    return app


def _ctx(request: web.Request) -> AdminContext:
    ctx: AdminContext = request.app[CTX]
    return ctx


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(_ctx(request).registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    tasks = _ctx(request).healthy()
    ok = all(tasks.values())
    return web.json_response({"ok": ok, "tasks": tasks}, status=200 if ok else 503)


async def _readyz(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    checks = ctx.ready()
    ok = all(checks.values())
    body: dict[str, Any] = {"ready": ok, "checks": checks}
    if not ok:
        body["reasons"] = ctx.not_ready()
    return web.json_response(body, status=200 if ok else 503)


async def _list(request: web.Request) -> web.Response:
    pipeline = _ctx(request).pipeline()
    rollouts = [
        rollout_view(r, pipeline.recent.get(r.spec.name, ())) for r in pipeline.engine.rollouts
    ]
    return web.json_response({"rollouts": rollouts})


async def _show(request: web.Request) -> web.Response:
    pipeline = _ctx(request).pipeline()
    name = request.match_info["name"]
    found = next((r for r in pipeline.engine.rollouts if r.spec.name == name), None)
    if found is None:
        return _error(404, f"no rollout named {name!r}")
    return web.json_response(rollout_view(found, pipeline.recent.get(name, ())))


async def _mutate(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    denied = _denied(ctx, request)
    if denied is not None:
        return denied
    name, command = request.match_info["name"], _command_name(request.match_info["command"])
    if command is None:
        return _error(404, f"unknown command; one of {', '.join(MUTATIONS)}")
    if all(r.spec.name != name for r in ctx.pipeline().engine.rollouts):
        return _error(404, f"no rollout named {name!r}")
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    percent = body.get("percent")
    if command == "set_percent" and not _valid_percent(percent):
        return _error(400, 'set_percent needs a body {"percent": 0..100}')
    actor = str(body.get("actor") or "api")[:100]
    decisions = await ctx.run_command(
        name,
        command,
        actor,
        float(percent) if percent is not None else None,
        bool(body.get("full", False)),
    )
    payload = {"decisions": [to_dict(d) for d in decisions]}
    refused = [d for d in decisions if d.kind == "refused"]
    if refused:
        return web.json_response({**payload, "error": to_dict(refused[0])["reason"]}, status=409)
    return web.json_response(payload)


async def _breakers(request: web.Request) -> web.Response:
    breakers = _ctx(request).pipeline().engine.breakers
    return web.json_response(
        {
            "breakers": [
                {
                    "name": name,
                    "service": b.spec.service,
                    "state": b.state,
                    "calls": b.calls(),
                    "failure_rate": b.failure_rate(),
                    "slow_call_rate": b.slow_call_rate(),
                }
                for name, b in breakers.items()
            ]
        }
    )


async def _migrations(request: web.Request) -> web.Response:
    cdc = _ctx(request).pipeline().cdc
    rows = []
    for name, checker in cdc.checkers.items() if cdc is not None else ():
        progress = checker.progress()
        rows.append(
            {
                "name": name,
                "rollout": cdc.wirings[name].rollout if cdc is not None else None,
                "failures": checker.failures(),
                "sample_keys": [
                    {"key": list(s.key), "kind": s.kind, "ts": s.at} for s in checker.sample_keys()
                ],
                "lag_seconds": checker.last_lag(),
                "progress": {
                    "source_rows": progress.source_rows,
                    "target_rows": progress.target_rows,
                    "ratio": progress.ratio,
                    "rows_per_second": progress.rate,
                },
                "pending": checker.pending(),
                "overflow": checker.overflow(),
            }
        )
    return web.json_response({"migrations": rows})


async def _breaker_command(request: web.Request) -> web.Response:
    ctx = _ctx(request)
    denied = _denied(ctx, request)
    if denied is not None:
        return denied
    name, command = request.match_info["name"], request.match_info["command"]
    if command not in BREAKER_COMMANDS or ctx.run_breaker_command is None:
        return _error(404, f"unknown command; one of {', '.join(BREAKER_COMMANDS)}")
    if name not in ctx.pipeline().engine.breakers:
        return _error(404, f"no breaker named {name!r}")
    decisions = await ctx.run_breaker_command(name, command)
    return web.json_response({"decisions": [to_dict(d) for d in decisions]})


def _denied(ctx: AdminContext, request: web.Request) -> web.Response | None:
    """A mutation's refusal: no or a wrong token (401/403), or a standby (503)."""
    denied = _check_token(ctx.token, request.headers.get("Authorization", ""))
    if denied is not None:
        return denied
    standby = ctx.standby()
    return None if standby is None else _error(503, f"not the leader: {standby}")


def _command_name(text: str) -> CommandName | None:
    for name in get_args(CommandName):
        if name == text and name in MUTATIONS:
            return name  # type: ignore[no-any-return]
    return None


def _check_token(token: str | None, header: str) -> web.Response | None:
    if token is None:
        return _error(403, "mutations are disabled: no http.token is configured")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        return _error(401, "missing or wrong bearer token")
    return None


async def _body(request: web.Request) -> dict[str, Any] | web.Response:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the body must be a JSON object")
    except RecursionError:  # the parser's own depth limit, well inside client_max_size
        return _error(400, "the body is nested too deeply for a JSON object of a command")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


def _valid_percent(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
