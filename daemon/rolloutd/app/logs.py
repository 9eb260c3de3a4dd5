"""Logging: structlog over the standard library, JSON in production, console on a terminal.

Rules:
* Every log line, ours and the libraries', goes through one structlog formatter, so a
  daemon's output is one JSON object a line (or readable console lines on a terminal).
* Secrets never appear: every SecretStr value of the config (tokens, passwords, routing
  keys, webhook URLs, header values) is replaced by "***" in every field of every line,
  exceptions included. Attacker-controlled input (an event naming a "rollout" that happens
  to be the token) is covered too, because redaction works on the rendered values.
* Exceptions are rendered without frame locals.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog
from pydantic import BaseModel, SecretStr

from rolloutd.app.logthrottle import CLIENT_LOGS

REDACTED = "***"
_secrets: list[str] = []


def set_secrets(values: Iterable[str]) -> None:
    """The strings to redact (longest first, so a secret containing another goes whole)."""
    _secrets[:] = sorted({v for v in values if len(v) >= 4}, key=len, reverse=True)


def secrets_of(model: object) -> list[str]:
    """Every SecretStr value inside a config model, however deep."""
    found: list[str] = []
    _collect(model, found)
    return found


def _collect(value: object, found: list[str]) -> None:
    if isinstance(value, SecretStr):
        found.append(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect(getattr(value, name), found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _collect(item, found)


def redact_text(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _secrets:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = redact_text(value)
            elif not isinstance(value, int | float | bool | type(None)):
                event[key] = redact_text(str(value))
    return event


def configure(level: str = "INFO", fmt: str = "auto") -> None:
    """Route all logging through structlog; `fmt` is json, console or auto (console on a tty)."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if console
        else structlog.processors.JSONRenderer()
    )
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # plain traceback text: no frame locals
            _redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(CLIENT_LOGS)  # a client library's repeated lines: once per interval
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("apscheduler").setLevel(max(root.level, logging.WARNING))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
