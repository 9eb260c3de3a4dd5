"""The admin CLI: `rolloutd status` and the rollout commands, over the daemon's HTTP API.

Standard library only (urllib), so the commands work wherever the package is installed.
Every failure is a one-line message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:9108"
# The exit codes, as the README documents them: 2 is a bad --url (usage), as for `run`.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


class ClientError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def base_url(given: str | None) -> str:
    """The admin API's base URL: `http://host:port` or `host:port` (http implied), with an
    optional path prefix (behind a proxy) and trailing slash. ClientError for anything else."""
    text = (given or DEFAULT_URL).strip()
    if "://" not in text:
        text = f"http://{text}"
    try:
        parts = urllib.parse.urlsplit(text)
        # `port` parses the port: a bad one raises here rather than inside the request.
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        valid = valid and not parts.query and not parts.fragment
    except ValueError:
        valid = False
    if not valid:
        raise ClientError(
            f"--url {given!r}: not an admin API base URL (like http://127.0.0.1:9108)",
            EXIT_USAGE,
        )
    return text.rstrip("/")


def _request(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    base = url.split("/api/")[0]
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc, base, token) from None
    except urllib.error.URLError as exc:
        raise ClientError(f"cannot reach rolloutd at {base}: {_reason(exc.reason)}") from None
    except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, broken answers
        raise ClientError(f"cannot reach rolloutd at {base}: {_reason(exc)}") from None
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise ClientError(f"{base} did not answer JSON: is it rolloutd's admin API?") from None


def _reason(reason: object) -> str:
    """`connection refused`, not `[Errno 111] Connection refused`."""
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason) or type(reason).__name__


def _http_error(exc: urllib.error.HTTPError, base: str, token: str | None) -> ClientError:
    try:
        detail = json.loads(exc.read()).get("error", "")
    except (ValueError, AttributeError, OSError, http.client.HTTPException):
        detail = ""
    if exc.code == 401 and token:
        return ClientError(f"token refused by {base}: --token or ROLLOUTD_TOKEN is not its token")
    if exc.code == 401:
        return ClientError(
            f"{base} needs a token for this: set --token or ROLLOUTD_TOKEN to its http.token"
        )
    if exc.code == 403:
        return ClientError(f"forbidden: {detail}")
    if exc.code == 409:
        return ClientError(f"refused: {detail}", EXIT_REFUSED)
    return ClientError(f"HTTP {exc.code}: {detail or exc.reason}")


def status(url: str, name: str | None) -> str:
    if name:
        return _render([_request(f"{url}/api/v1/rollouts/{_quote(name)}")], detail=True)
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


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


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
    result = _request(f"{url}/api/v1/rollouts/{_quote(name)}/{cmd}", "POST", token, body)
    return "\n".join(json.dumps(d) for d in result["decisions"])


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no name and no $USER
        return "unknown"


def run(args: Any) -> int:
    token = args.token or os.environ.get("ROLLOUTD_TOKEN")
    url = ""
    try:
        url = base_url(args.url or os.environ.get("ROLLOUTD_URL"))
        if args.command == "status":
            print(status(url, args.name))
            return EXIT_OK
        body: dict[str, Any] = {"actor": args.actor or _user()}
        if args.command == "set-percent":
            body["percent"] = args.percent
        if getattr(args, "full", False):
            body["full"] = True
        print(command(url, token, args.name, args.command.replace("-", "_"), body))
        return EXIT_OK
    except ClientError as exc:
        print(f"rolloutd {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except (KeyError, TypeError, IndexError):  # JSON, but not the shape rolloutd answers
        print(f"rolloutd {args.command}: {url} gave an unexpected answer", file=sys.stderr)
        return EXIT_FAILED
