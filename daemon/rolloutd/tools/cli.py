"""The `rolloutd` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import IO

from rolloutd import __version__

# Exit codes (README, "Exit codes"): 1 a failure (check-config found errors, a task died),
# 2 bad configuration or environment (systemd's RestartPreventExitStatus=2: retrying cannot
# help), 3 a command the daemon refused, 130 interrupted.
EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEMO_SCENARIO = "checkout-incident"
DEMO_SCENARIOS = {
    "checkout-incident": "a canary that walks its steps, then an error spike in the canary only",
    "checkout-judge": "a canary at 5% with twice control's errors, caught by the judge",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolloutd", description="Event-driven progressive-delivery controller."
    )
    parser.add_argument("--version", action="version", version=f"rolloutd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rep = sub.add_parser("replay", help="run the engine over a JSON-lines event file")
    rep.add_argument("--config", required=True, type=Path, help="rolloutd YAML config")
    rep.add_argument("events", type=Path, help="events, one JSON object per line ('-': stdin)")
    rep.add_argument("--out", type=Path, help="write decisions here instead of stdout")
    rep.add_argument("--quiet", action="store_true", help="no summary on stderr")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", required=True, type=Path, help="rolloutd YAML config")
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start from an empty state store (an existing one is kept aside as *.bak)",
    )
    run.add_argument("--grace", type=float, default=10.0, help="shutdown grace period, seconds")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    run.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="json lines, or console text (auto: console on a terminal)",
    )

    _admin_commands(sub)

    chk = sub.add_parser("check-config", help="validate a config file and explain it")
    chk.add_argument("path", type=Path)

    sub.add_parser("config-schema", help="print the JSON Schema of the config file")

    demo = sub.add_parser(
        "demo", help="live demo: embedded broker, daemon, simulated traffic, a rollback"
    )
    demo.add_argument("--config", type=Path, default=Path("config/demo.yaml"))
    demo.add_argument("--keep-running", action="store_true", help="run until Ctrl-C")
    demo.add_argument(
        "--replay", action="store_true", help="replay the bundled incident scenario instead"
    )
    demo.add_argument("--out", type=Path, help="with --replay: write decisions here")
    demo.add_argument(
        "--scenario",
        choices=tuple(DEMO_SCENARIOS),
        default=DEMO_SCENARIO,
        help="with --replay: the bundled scenario (checkout-judge: a 2x regression at 5%%, "
        "rolled back by the judge while a threshold trigger is silent)",
    )
    demo.add_argument(
        "--sdk",
        choices=("in_rollout", "unleash"),
        default="in_rollout",
        help="how the simulated users are split: in_rollout() (default) or the Unleash SDK "
        "reading the daemon's Unleash client API",
    )
    return parser


ADMIN = ("start", "promote", "pause", "resume", "abort", "retry", "rollback", "set-percent")


def _admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`status` and the rollout commands, spoken to a running daemon's admin API."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--url",
            help="admin API base URL: http://HOST:PORT or HOST:PORT"
            " (env ROLLOUTD_URL; default http://127.0.0.1:9108)",
        )
        p.add_argument("--token", help="bearer token for mutations (env ROLLOUTD_TOKEN)")

    status = sub.add_parser("status", help="show rollouts (one in detail with NAME)")
    status.add_argument("name", nargs="?")
    common(status)
    for name in ADMIN:
        cmd = sub.add_parser(name, help=f"{name} a rollout through the admin API")
        cmd.add_argument("name")
        if name == "set-percent":
            cmd.add_argument("percent", type=float)
        if name == "promote":
            cmd.add_argument("--full", action="store_true", help="straight to the last step")
        cmd.add_argument("--actor", help="who is acting (default: your user name)")
        common(cmd)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `rolloutd replay ... | head`: the reader left, nothing to say
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_INVALID


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "status" or args.command in ADMIN:
        from rolloutd.tools.client import run as run_client

        return run_client(args)
    if args.command == "replay":
        return _replay(args.config, args.events, args.out, args.quiet)
    if args.command == "run":
        return _run(args.config, args.fresh, args.grace, args.log_level, args.log_format)
    if args.command == "check-config":
        return _check_config(args.path)
    if args.command == "config-schema":
        from rolloutd.config import config_json_schema

        print(json.dumps(config_json_schema(), indent=2, sort_keys=True))
        return EXIT_OK
    if args.command == "demo":
        if args.replay:
            return _demo(args.out, args.scenario)
        from rolloutd.tools.demo import run_live_demo

        return run_live_demo(args.config, args.keep_running, args.sdk)
    raise AssertionError(args.command)


def _run(config_path: Path, fresh: bool, grace: float, level: str, fmt: str) -> int:
    import asyncio

    from rolloutd.adapters.store import StoreError
    from rolloutd.app import logs
    from rolloutd.app.service import Service
    from rolloutd.config import ConfigError, load_config

    if level.upper() not in LOG_LEVELS:
        choices = ", ".join(LOG_LEVELS)
        print(f"rolloutd: --log-level {level!r}: expected one of {choices}", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(level.upper(), fmt)
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        _print_errors(config_path, exc.errors)
        return EXIT_USAGE
    logs.set_secrets(logs.secrets_of(config))
    try:
        service = Service(config, fresh=fresh, grace=grace, config_path=config_path)
    except StoreError as exc:
        hint = " (run with --fresh to start from an empty state)" if exc.fresh_helps else ""
        print(f"rolloutd: {exc}{hint}", file=sys.stderr)
        return 1 if exc.transient else EXIT_USAGE  # a database away: restarting may help
    return asyncio.run(service.run())


def _print_errors(path: Path, errors: list[str]) -> None:
    print(f"{path}: invalid configuration", file=sys.stderr)
    for line in errors:
        print(f"  {line}", file=sys.stderr)


def _check_config(path: Path) -> int:
    from rolloutd.config import ConfigError, load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_errors(path, exc.errors)
        return EXIT_INVALID
    print(f"{path}: ok")
    print(config.summary())
    return EXIT_OK


def _replay(config_path: Path, events: Path, out_path: Path | None, quiet: bool) -> int:
    from rolloutd.config import ConfigError, load_config
    from rolloutd.tools.replay import replay

    try:
        spec = load_config(config_path).to_spec()
    except ConfigError as exc:
        _print_errors(config_path, exc.errors)
        return EXIT_USAGE
    with ExitStack() as stack:
        try:
            lines = stack.enter_context(_open_events(events))
            out = _open_out(stack, out_path)
        except OSError as exc:
            print(f"rolloutd replay: {exc.filename}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        summary = replay(spec, _lines(lines), out, sys.stderr)
        out.flush()
    if not quiet:
        print(summary.render(), file=sys.stderr)
    return EXIT_OK


def _open_events(path: Path) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdin.buffer
    return path.open("rb")


def _open_out(stack: ExitStack, path: Path | None) -> IO[bytes]:
    if path is None:
        return sys.stdout.buffer
    return stack.enter_context(path.open("wb"))


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    yield from stream


def _demo(out_path: Path | None, scenario: str = DEMO_SCENARIO) -> int:
    scenarios = resources.files("rolloutd.tools") / "scenarios"
    config = scenarios / f"{scenario}.yaml"
    events = scenarios / f"{scenario}.jsonl"
    with resources.as_file(config) as config_path, resources.as_file(events) as events_path:
        print(
            f"rolloutd demo: replaying {events_path.name} with {config_path.name}"
            f" ({DEMO_SCENARIOS[scenario]})",
            file=sys.stderr,
        )
        return _replay(config_path, events_path, out_path, quiet=False)


if __name__ == "__main__":
    sys.exit(main())
