"""How a CDC change becomes a key and a row state in target form.

Rules:
* Pure: no I/O, no clock reads; never raises on input.
* Tables are named `"schema.table"` (any database) or `"db.schema.table"`, or given as a
  `(db, schema, table)` tuple; they match `source.db/schema/table` of a change.
* A source row maps to the target row it should produce through `columns`: (target
  column, source column, transform), transform one of identity, lower, trim, string, int.
  NULL stays NULL; a value a transform does not apply to passes unchanged; a column missing
  from a row image reads as NULL. Key columns map the same way (an unmapped key column keeps
  its name); a key part that is an object or array is keyed by its canonical JSON.
* A key is read from the row image (`after`, else `before`), then from the message key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from rolloutd.core.cdc.state import Key, State

TRANSFORMS = ("identity", "lower", "trim", "string", "int")


class CdcSource(Protocol):
    @property
    def db(self) -> str: ...
    @property
    def schema(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def ts_ms(self) -> int: ...
    @property
    def lsn(self) -> int | None: ...


class CdcChange(Protocol):
    """What the checker reads of a change (`rolloutd.adapters.cdc.debezium.ChangeEvent`)."""

    @property
    def op(self) -> str: ...
    @property
    def before(self) -> Mapping[str, Any] | None: ...
    @property
    def after(self) -> Mapping[str, Any] | None: ...
    @property
    def key(self) -> Mapping[str, Any] | None: ...
    @property
    def source(self) -> CdcSource: ...


TableName = tuple[str, str, str] | str


TablePattern = tuple[str | None, str, str]


def table_pattern(name: TableName) -> TablePattern:
    parts = tuple(name.split(".")) if isinstance(name, str) else tuple(name)
    if len(parts) == 2 and isinstance(name, str):
        return (None, parts[0], parts[1])
    if len(parts) == 3:
        return (parts[0], parts[1], parts[2])
    raise ValueError(f"table {name!r}: expected 'schema.table' or 'db.schema.table'")


def matches(pattern: TablePattern, source: CdcSource) -> bool:
    db, schema, table = pattern
    if source.table != table:
        return False
    if source.schema == schema:
        return db is None or db == source.db
    # MySQL has databases but no schemas: its events carry `db` and an empty schema, so
    # "inventory.customers" names the table there as a user would expect.
    return db is None and source.schema == "" and source.db == schema


def _canonical(value: Any) -> Any:
    if isinstance(value, dict | list):
        return msgspec.json.encode(value, order="sorted").decode()
    return value


def _identity(value: Any) -> Any:
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _trim(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _string(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _canonical(value)


def _int(value: Any) -> Any:
    if isinstance(value, int):
        return int(value)  # bool too: True -> 1
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return value
    return value


_TRANSFORM: dict[str, Callable[[Any], Any]] = {
    "identity": _identity,
    "lower": _lower,
    "trim": _trim,
    "string": _string,
    "int": _int,
}
NO_KEY = object()


class RowReader:
    """How to read keys and rows of one table: (column, transform) pairs."""

    __slots__ = ("changed", "columns", "key", "names", "single")

    def __init__(
        self,
        key: Sequence[tuple[str, Callable[[Any], Any]]],
        columns: Sequence[tuple[str, Callable[[Any], Any]]],
    ) -> None:
        self.key = key
        self.columns = columns
        self.single = len(key) == 1
        self.names = [name for name, _ in columns]
        # Only the columns whose transform changes something are transformed one by one.
        self.changed = [(i, tf) for i, (_, tf) in enumerate(columns) if tf is not _identity]

    def key_of(self, change: CdcChange) -> Key:
        row = change.after if change.after is not None else change.before
        if self.single and row is not None:
            column, transform = self.key[0]
            value = row.get(column, NO_KEY)
            if value is not NO_KEY:
                return _canonical(transform(value))
        message_key = change.key
        parts = []
        for column, transform in self.key:
            if row is not None and column in row:
                value = row[column]
            elif message_key is not None and column in message_key:
                value = message_key[column]
            else:
                return NO_KEY
            parts.append(_canonical(transform(value)))
        return parts[0] if self.single else tuple(parts)

    def row_of(self, image: Mapping[str, Any] | None) -> State:
        if image is None:
            return None
        values = list(map(image.get, self.names))
        for index, transform in self.changed:
            values[index] = transform(values[index])
        return tuple(values)


def readers(
    key_columns: tuple[str, ...], columns: tuple[tuple[str, str, str], ...]
) -> tuple[RowReader, RowReader]:
    """Readers for the source side (mapping to target form) and for the target side."""
    # The first mapping of a source column names its target column.
    by_source = {src: (tgt, tf) for tgt, src, tf in reversed(columns)}
    source_key = []
    target_key = []
    for column in key_columns:
        mapped, transform = by_source.get(column, (column, "identity"))
        source_key.append((column, _TRANSFORM[transform]))
        target_key.append((mapped, _identity))
    return (
        RowReader(source_key, [(src, _TRANSFORM[tf]) for _, src, tf in columns]),
        RowReader(target_key, [(tgt, _identity) for tgt, _, _ in columns]),
    )
