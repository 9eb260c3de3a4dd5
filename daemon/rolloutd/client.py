"""The admin CLI: `rolloutd status` and the rollout commands, over the daemon's HTTP API.

Standard library only (urllib), so the commands work wherever the package is installed.
Every failure is a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9108"
EXIT_OK, EXIT_FAILED, EXIT_REFUSED = 0, 1, 3


class ClientError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _request(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        raise ClientError(
            f"cannot reach rolloutd at {url.split('/api/')[0]}: {exc.reason}"
        ) from None


def _http_error(exc: urllib.error.HTTPError) -> ClientError:
    try:
        detail = json.loads(exc.read()).get("error", "")
    except (ValueError, AttributeError):
        detail = ""
    if exc.code == 401:
        return ClientError("unauthorized: set --token or ROLLOUTD_TOKEN to the daemon's http.token")
    if exc.code == 403:
        return ClientError(f"forbidden: {detail}")
    if exc.code == 409:
        return ClientError(f"refused: {detail}", EXIT_REFUSED)
    return ClientError(f"HTTP {exc.code}: {detail or exc.reason}")


def status(url: str, name: str | None) -> str:
    if name:
        return _render([_request(f"{url}/api/v1/rollouts/{name}")], detail=True)
    text = _render(_request(f"{url}/api/v1/rollouts")["rollouts"], detail=False)
    breakers = _request(f"{url}/api/v1/breakers")["breakers"]
    if breakers:
        text += "\n\nbreakers:\n" + "\n".join(
            f"  {b['name']:<24} {b['state']:<12} service {b['service']}, {b['calls']} calls,"
            f" failure rate {_num(b['failure_rate'])}"
            for b in breakers
        )
    migrations = _request(f"{url}/api/v1/migrations")["migrations"]
    if migrations:
        text += "\n\nmigrations:\n" + "\n".join(
            f"  {m['name']:<24} progress {m['progress']['ratio']:.1%},"
            f" lag {_num(m['lag_seconds'])}s, failures {sum(m['failures'].values())}"
            f" ({_kinds(m['failures'])}) -> {m['rollout']}"
            for m in migrations
        )
    return text


def _kinds(failures: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(failures.items()) if n) or "none"


def _render(rollouts: list[dict[str, Any]], detail: bool) -> str:
    rows = [("ROLLOUT", "FLAG", "PHASE", "PERCENT", "STEP", "TRIGGERS")]
    for r in rollouts:
        firing = [t["name"] for t in r["triggers"] if t["state"] != "inactive"]
        triggers = ", ".join(f"{t} ({_state(r, t)})" for t in firing) or f"{len(r['triggers'])} ok"
        step = f"{r['step']}/{len(r['steps'])}"
        rows.append((r["name"], r["flag"], r["phase"], f"{r['percent']:g}%", step, triggers))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if detail and rollouts:
        lines += ["", "triggers:"]
        for t in rollouts[0]["triggers"]:
            value, bound = _num(t["value"]), _num(t["threshold"])
            lines.append(
                f"  {t['name']:<20} {t['state']:<9} {t['metric']} = {value} vs {bound}"
                f" ({t['samples']} samples) -> {t['action']}"
            )
        lines += ["", "recent decisions:"]
        lines += [f"  {json.dumps(d)}" for d in rollouts[0]["recent_decisions"][-10:]]
    return "\n".join(lines)


def _state(rollout: dict[str, Any], trigger: str) -> str:
    return next(str(t["state"]) for t in rollout["triggers"] if t["name"] == trigger)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def command(url: str, token: str | None, name: str, cmd: str, body: dict[str, Any]) -> str:
    result = _request(f"{url}/api/v1/rollouts/{name}/{cmd}", "POST", token, body)
    return "\n".join(json.dumps(d) for d in result["decisions"])


def run(args: Any) -> int:
    url = (args.url or os.environ.get("ROLLOUTD_URL") or DEFAULT_URL).rstrip("/")
    token = args.token or os.environ.get("ROLLOUTD_TOKEN")
    try:
        if args.command == "status":
            print(status(url, args.name))
            return EXIT_OK
        body: dict[str, Any] = {"actor": args.actor or getpass.getuser()}
        if args.command == "set-percent":
            body["percent"] = args.percent
        if getattr(args, "full", False):
            body["full"] = True
        print(command(url, token, args.name, args.command.replace("-", "_"), body))
        return EXIT_OK
    except ClientError as exc:
        print(f"rolloutd {args.command}: {exc}", file=sys.stderr)
        return exc.code
