"""Durations as people write them in config: "30s", "5m", "1h30m", "250ms" or plain seconds.

Rules: units run from largest to smallest, each at most once (d, h, m, s, ms); a number alone
is seconds. Everything becomes a float number of seconds; nothing negative, NaN or infinite.
`Duration` is the same rule as a pydantic field type.
"""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, Field, WithJsonSchema

UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER = r"\d+(?:\.\d+)?"
# One grammar serves the parser and the JSON Schema (it is also a valid ECMAScript regex).
# The lookahead refuses the empty string, which would otherwise match every optional unit.
_GRAMMAR = f"({_NUMBER})|(?=\\d)" + "".join(f"(?:({_NUMBER}){unit})?" for unit in UNIT_SECONDS)
_DURATION = re.compile(_GRAMMAR)
DURATION_PATTERN = f"^(?:{_GRAMMAR})$"


def parse_duration(value: object) -> float:
    """Seconds for a duration string or number; ValueError with a readable reason otherwise."""
    # bool is an int to Python, but `hold: true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (write e.g. 30s, 5m, 1h30m, 250ms)")
        plain, *amounts = match.groups()
        if plain is not None:
            return float(plain)
        sizes = UNIT_SECONDS.values()
        return sum(float(n) * size for n, size in zip(amounts, sizes, strict=True) if n)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r} (must be a finite number >= 0)")
    return seconds


def format_duration(seconds: float) -> str:
    """The unit string for `seconds`: 5400 -> "1h30m", 0.25 -> "250ms", 0 -> "0s"."""
    millis = round(seconds * 1000)
    # Sub-millisecond values have no unit spelling; plain seconds still parse back.
    if millis == 0 or abs(millis - seconds * 1000) > 1e-6 * max(1.0, seconds):
        return f"{seconds:g}s"
    parts = []
    for unit, size in UNIT_SECONDS.items():
        count, millis = divmod(millis, round(size * 1000))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


# For pydantic models: accepts any of the spellings above, holds float seconds.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ]
        }
    ),
]
PositiveDuration = Annotated[Duration, Field(gt=0)]
