"""Field types shared by every section: name and URL patterns, timestamps, cron and time
zones, list coercions, and the strict base model (unknown keys are errors).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import date, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from rolloutd.core import spec
from rolloutd.core.schedule import parse_cron


def _matching(pattern: str, message: str) -> AfterValidator:
    """Validator for strings matching `pattern`; `message` may show the value as {value!r}."""
    regex = re.compile(pattern)

    def check(value: str) -> str:
        if regex.fullmatch(value):
            return value
        raise ValueError(message.format(value=value))

    return AfterValidator(check)


def _schema(pattern: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": f"^({pattern})$"})


NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
# Names end up in URLs, metric labels and MQTT topics, hence the small alphabet.
Name = Annotated[
    str,
    _matching(NAME, "not a valid name: {value!r} (letters, digits, '.', '_', '-')"),
    _schema(NAME),
]
Text = Annotated[str, Field(min_length=1)]
METRIC = "|".join(spec.REQUEST_METRICS) + r"|latency_mean|(gauge|counter|breaker):\S+"
Metric = Annotated[
    str,
    _matching(
        METRIC,
        "not a metric: {value!r} (expected error_rate, availability, "
        "request_rate, latency_p50/90/95/99, latency_mean (judges), gauge:<name>, "
        "counter:<name> or breaker:<name>)",
    ),
    _schema(METRIC),
]
# URLs may carry credentials, so their messages never repeat the value.
HTTP_URL = r"https?://\S+"
HttpUrl = Annotated[str, _matching(HTTP_URL, "not an http(s) URL"), _schema(HTTP_URL)]
MQTT_URL = r"mqtts?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?/?"
MqttUrl = Annotated[
    str,
    _matching(MQTT_URL, "not an mqtt(s)://host[:port] URL (no credentials)"),
    _schema(MQTT_URL),
]
LISTEN = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}"
Listen = Annotated[str, _matching(LISTEN, "not a host:port address: {value!r}"), _schema(LISTEN)]
Op = Literal[">", ">=", "<", "<=", "unchanged", "absent"]
Severity = Literal["critical", "warning", "info"]


# RFC 3339 date-time. Parsing takes it without the offset too, to tell a naive time apart.
_DATE_TIME = r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?"
_OFFSET = r"([Zz]|[+-]\d\d:\d\d)"
RFC3339 = _DATE_TIME + _OFFSET


def _timestamp(value: object) -> object:
    """An aware datetime from an RFC 3339 string (or from the datetime YAML made of one)."""
    example = "e.g. 2025-11-24T09:00:00+01:00 or 2025-11-24T08:00:00Z"
    if isinstance(value, str):
        if not re.fullmatch(f"{_DATE_TIME}{_OFFSET}?", value):
            raise ValueError(f"not an RFC 3339 timestamp: {value!r} ({example})")
        try:
            value = datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise ValueError(f"not a valid time: {value!r} ({exc})") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"needs a UTC offset, or Z for UTC ({example})")
        return value
    shown = "a date without a time" if isinstance(value, date) else repr(value)
    raise ValueError(f"expected an RFC 3339 timestamp ({example}), got {shown}")


Timestamp = Annotated[
    datetime,
    BeforeValidator(_timestamp, json_schema_input_type=str),
    WithJsonSchema({"type": "string", "format": "date-time", "pattern": f"^({RFC3339})$"}),
]


def check_cron(value: str) -> str:
    parse_cron(value)  # ValueError names the field
    return value


def check_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        hint = did_you_mean(name, available_timezones()) or " (an IANA name such as Europe/Berlin)"
        raise ValueError(f"unknown time zone {name!r}{hint}") from None
    return name


def _one_or_many(value: object) -> object:
    return (value,) if isinstance(value, str) else value


def _comma_list(value: object) -> object:
    return tuple(part.strip() for part in value.split(",")) if isinstance(value, str) else value


Topics = Annotated[
    tuple[Text, ...], BeforeValidator(_one_or_many, json_schema_input_type=str | list[str])
]
Servers = Annotated[
    tuple[Text, ...],
    BeforeValidator(_comma_list, json_schema_input_type=str | list[str]),
    Field(min_length=1),
]


def invalid_at(at: str, message: str) -> PydanticCustomError:
    """An error that points below the model reporting it: `at` is appended to the path."""
    return PydanticCustomError("rolloutd", "{message}", {"at": at, "message": message})


class Section(BaseModel):
    # `.inf` and `.nan` are valid YAML floats but never a sensible threshold or factor.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""
