"""Error reporting: every problem as one "<path>: <message>" line, in the file's own terms,
with secrets never quoted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any

from pydantic import (
    BaseModel,
)
from pydantic_core import ErrorDetails

from rolloutd.config.fields import Section, did_you_mean


class ConfigError(Exception):
    """An invalid configuration; `errors` holds one "<path>: <message>" line per problem."""

    def __init__(self, errors: Sequence[str], source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        return "\n  ".join([f"{self.source}: invalid configuration", *self.errors])


_SECRET_KEYS = frozenset({"password", "token", "routing_key", "webhook_url", "headers"})
_EXPECTED = {
    "string": "a string",
    "float": "a number",
    "int": "a whole number",
    "bool": "true or false",
    "model": "a mapping",
    "dict": "a mapping",
    "tuple": "a list",
}
_MESSAGES = {
    "missing": "required",
    "literal_error": "expected {expected}, got {got}",
    "greater_than": "must be > {gt}, got {got}",
    "greater_than_equal": "must be >= {ge}, got {got}",
    "less_than_equal": "must be <= {le}, got {got}",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "finite_number": "must be a finite number",
    "union_tag_invalid": "unknown {discriminator} {tag!r}: expected {expected_tags}",
    "union_tag_not_found": "required key {discriminator} is missing",
    **{
        f"{kind}_{how}": f"expected {what}, got {{got}}"
        for kind, what in _EXPECTED.items()
        for how in ("type", "parsing", "from_float")
    },
}


def format_error(error: ErrorDetails, data: Any) -> str:
    """One pydantic error as "<path>: <message>", its path in the file's own terms."""
    parts, secret = _locate(error["loc"], data, missing=error["type"] == "missing")
    ctx = error.get("ctx", {})
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        parts, message = parts[:-1], f"unknown key {key!r}{did_you_mean(key, known_keys())}"
    elif error["type"] in ("rolloutd", "value_error"):
        message = str(ctx.get("message", ctx.get("error")))
        parts += [f".{ctx['at']}"] if ctx.get("at") else []
    elif error["type"] in _MESSAGES:
        got = describe_value(error["input"], hide=secret)
        shown = {key: f"{v:g}" if isinstance(v, float) else v for key, v in ctx.items()}
        message = _MESSAGES[error["type"]].format(got=got, **shown)
    else:
        message = error["msg"]
    path = "".join(parts).lstrip(".") or "(top level)"
    return f"{path}: {message}"


def _locate(loc: tuple[int | str, ...], data: Any, missing: bool) -> tuple[list[str], bool]:
    """Path parts for `loc` and whether it is under a secret key.

    pydantic puts union tags ("pagerduty", "inline") into locations; following the input data
    instead keeps exactly the keys and indexes the file has.
    """
    parts: list[str] = []
    secret, node = False, data
    for key in loc:
        secret = secret or key in _SECRET_KEYS
        if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            parts.append(f"[{key}]")
            node = node[key]
        elif isinstance(node, dict) and key in node:
            parts.append(f".{key}")
            node = node[key]
    # A missing key is not in the data, but it is the point of the message.
    return [*parts, f".{loc[-1]}"] if missing else parts, secret


def describe_value(value: object, hide: bool = False) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict | list):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"a value of type {type(value).__name__}" if hide else repr(value)


def _all_keys(model: type[BaseModel]) -> Iterator[str]:
    for field_name, field in model.model_fields.items():
        yield field.alias or field_name
    for sub in model.__subclasses__():
        yield from _all_keys(sub)


@cache
def known_keys() -> frozenset[str]:
    """Every key any section accepts: enough to suggest the intended spelling of a typo.

    Read at the first error, when every section's model is defined.
    """
    return frozenset(_all_keys(Section))
