"""The delivery endpoints on the admin server: flagd's HTTP sync and the Unleash client API.

Rules: the documents are read-only and served from the board's rendered bytes with their
ETag; a matching If-None-Match is a 304 with no body. The Unleash endpoints need one of the
client tokens in `Authorization` (401 otherwise, and nothing served or taken); the flagd
document is open like every other read of the admin API. A metrics post is decoded whole
before anything is taken: malformed, 400 and counted; too large, 413 (the admin API's body
limit) and counted. What it carries enters the pipeline as events through `submit`, the
same path as every source's. Every answer is counted by endpoint and status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
from aiohttp import web

from rolloutd.adapters.delivery import unleash
from rolloutd.adapters.delivery.board import FlagBoard, Rendered

FLAGD = "flagd"
UNLEASH = "unleash"
# endpoint -> the outcomes it can have (each counted, and exported at 0 from the start)
OUTCOMES = {
    "flagd": ("ok", "not_modified"),
    "features": ("ok", "not_modified", "unauthorized"),
    "register": ("ok", "unauthorized", "malformed", "too_large"),
    "metrics": ("ok", "unauthorized", "malformed", "too_large"),
}

Submit = Callable[[list[bytes]], None]  # events (JSON payloads) into the pipeline


def not_modified(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for tag in header.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


@dataclass(slots=True)
class DeliveryRoutes:
    board: FlagBoard
    flagd_http: bool
    unleash_tokens: Sequence[bytes] | None  # None: no Unleash endpoints
    submit: Submit
    clock: Callable[[], float]

    def add_to(self, app: web.Application) -> None:
        if self.flagd_http:
            app.router.add_get("/flagd/flags.json", self._flagd)
        if self.unleash_tokens is not None:
            app.router.add_get("/api/client/features", self._features)
            app.router.add_post("/api/client/register", self._register)
            app.router.add_post("/api/client/metrics", self._metrics)

    def outcomes(self) -> list[tuple[str, str]]:
        """(endpoint, status) of every endpoint served."""
        served = [FLAGD] if self.flagd_http else []
        if self.unleash_tokens is not None:
            served += ["features", "register", "metrics"]
        return [(endpoint, status) for endpoint in served for status in OUTCOMES[endpoint]]

    def _count(self, endpoint: str, status: str) -> None:
        self.board.stats.requests[(endpoint, status)] += 1

    def _document(self, request: web.Request, endpoint: str, name: str) -> web.Response:
        rendered: Rendered = self.board.rendered[name]
        headers = {"ETag": rendered.etag, "Cache-Control": "no-cache"}
        if not_modified(request.headers.get("If-None-Match"), rendered.etag):
            self._count(endpoint, "not_modified")
            return web.Response(status=304, headers=headers)
        self._count(endpoint, "ok")
        return web.Response(body=rendered.body, content_type="application/json", headers=headers)

    async def _flagd(self, request: web.Request) -> web.Response:
        return self._document(request, FLAGD, FLAGD)

    def _denied(self, request: web.Request, endpoint: str) -> web.Response | None:
        assert self.unleash_tokens is not None
        if unleash.authorized(request.headers.get("Authorization", ""), self.unleash_tokens):
            return None
        self._count(endpoint, "unauthorized")
        return web.json_response({"error": "missing or wrong client token"}, status=401)

    async def _features(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "features")
        return denied or self._document(request, "features", UNLEASH)

    async def _body(self, request: web.Request, endpoint: str) -> bytes | web.Response:
        try:
            return await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._count(endpoint, "too_large")
            return web.json_response({"error": "the body is too large"}, status=413)

    async def _register(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "register")
        if denied is not None:
            return denied
        body = await self._body(request, "register")
        if isinstance(body, web.Response):
            return body
        try:
            parsed = msgspec.json.decode(body)
        except (msgspec.DecodeError, RecursionError):
            parsed = None
        if not isinstance(parsed, dict):
            return self._malformed("register", "the body must be a JSON object")
        self._count("register", "ok")
        return web.Response(status=202)

    async def _metrics(self, request: web.Request) -> web.Response:
        denied = self._denied(request, "metrics")
        if denied is not None:
            return denied
        body = await self._body(request, "metrics")
        if isinstance(body, web.Response):
            return body
        try:
            metrics = unleash.decode_metrics(body)
        except unleash.Malformed as exc:
            return self._malformed("metrics", f"not an Unleash metrics body: {exc}")
        events = unleash.exposure_events(metrics, self.board.rollout_of, self.clock())
        if events:
            self.submit(events)
        self._count_exposures(metrics)
        self._count("metrics", "ok")
        return web.Response(status=202)

    def _count_exposures(self, metrics: unleash.MetricsBody) -> None:
        if metrics.bucket is None:
            return
        exposures = self.board.stats.exposures
        for flag, count in metrics.bucket.toggles.items():
            rollout = self.board.rollout_of(flag)
            if rollout is not None:
                exposures[(rollout, unleash.ENABLED_COHORT)] += count.yes
                exposures[(rollout, unleash.DISABLED_COHORT)] += count.no

    def _malformed(self, endpoint: str, message: str) -> web.Response:
        self._count(endpoint, "malformed")
        return web.json_response({"error": message}, status=400)
