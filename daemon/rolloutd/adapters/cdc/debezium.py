"""Debezium change events from Kafka (JsonConverter output) into typed values.

Rules:
* One call per Kafka message: `decode_change(topic, key, value)` returns a `ChangeEvent`,
  `Tombstone`, `TransactionMarker`, `Heartbeat` or a `Rejection`. It never raises.
* Both JsonConverter forms are accepted, for keys and values alike: the schema wrapper
  `{"schema": ..., "payload": ...}` and the bare payload (`schemas.enable=false`). An object
  with exactly the two fields `schema` and `payload` is the wrapper; anything else is a payload.
* What a message is follows from where it came from and what it holds: a null value (or a
  null payload) is a tombstone; `__debezium-heartbeat.<prefix>` topics carry heartbeats; on
  a `<prefix>.transaction` topic a value is a BEGIN/END marker if it reads as one, else (if
  it has `op`: a table named `transaction`) a change; everything else is a change.
* Fast path: the first quoted name in the first 64 bytes says which form to expect, and one
  typed msgspec decode does the work. Only when it fails does the slow path parse the JSON
  generically, unwrap it, choose the kind from the content and explain what was wrong.
* `source.snapshot` is a string on current connectors and a boolean on old ones; it is
  always a string here ("true", "last", "false", ...; a missing or null one is "false").
* A change envelope must have `op` (one of r c u d t m) and `source` (with `db` and `table`;
  `schema` defaults to "" for connectors without one); `c`, `r` and `u` need `after`, `m`
  needs `message`. Unknown fields are ignored everywhere.
* The commit time is `source.ts_ms`; older MySQL connectors (and Debezium's MySQL tutorial)
  send `source.ts_sec` instead, so it falls back to `ts_sec * 1000`, then to the envelope's
  `ts_ms`. A `ts_sec` of 0 is what those connectors write for snapshot rows, which have no
  binlog time: it counts as absent, or every snapshot row would look 50 years late.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_args

import msgspec
from msgspec.structs import force_setattr

from rolloutd.core.events import DECODE_ERRORS, Rejection

Op = Literal["r", "c", "u", "d", "t", "m"]
OPS: tuple[str, ...] = get_args(Op)
TableId = tuple[str, str, str]  # (db, schema, table)

HEARTBEAT_PREFIX = "__debezium-heartbeat."
TRANSACTION_SUFFIX = ".transaction"

CDC_REJECTION_REASONS: tuple[str, ...] = (
    "bad_json",
    "not_object",
    "missing_field",
    "wrong_type",
    "unknown_op",
    "bad_value",
    "bad_key",
    "empty",
)
_DETAIL_LIMIT = 200


class _Invalid(ValueError):
    """Raised by `__post_init__`; msgspec chains it as the ValidationError's cause."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


_SNAPSHOT_TEXT = {True: "true", False: "false", None: "false"}


class Source(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Where a change happened and when the database committed it."""

    db: str
    table: str
    if TYPE_CHECKING:
        ts_ms: int  # commit time in the database (never None once decoded)
    else:
        ts_ms: int | None = None  # legacy connectors: filled from `ts_sec`, or by the envelope
    ts_sec: int | None = None
    schema: str = ""
    if TYPE_CHECKING:
        snapshot: str = "false"
    else:
        snapshot: bool | str | None = "false"
    lsn: int | None = None
    tx_id: int | None = msgspec.field(default=None, name="txId")

    def __post_init__(self) -> None:
        if self.snapshot.__class__ is not str:
            force_setattr(self, "snapshot", _SNAPSHOT_TEXT[self.snapshot])  # type: ignore[index]
        if self.ts_ms is None and self.ts_sec:
            force_setattr(self, "ts_ms", self.ts_sec * 1000)

    @property
    def table_id(self) -> TableId:
        return (self.db, self.schema, self.table)


class TransactionInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The `transaction` block of a change in a transaction (when markers are enabled)."""

    id: str
    total_order: int
    data_collection_order: int


class Message(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A logical decoding message (`op` "m"); `content` is base64 text, left encoded."""

    prefix: str
    content: str


class ChangeEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One change envelope. `key` comes from the Kafka message key, unwrapped."""

    op: Op
    source: Source
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    ts_ms: int | None = None  # when the connector processed the change
    transaction: TransactionInfo | None = None
    message: Message | None = None
    key: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.source.ts_ms is None:
            if self.ts_ms is None:
                raise _Invalid(
                    "missing_field",
                    "no commit time: `source` has neither `ts_ms` nor `ts_sec`, and the"
                    " envelope no `ts_ms` - at `$.source.ts_ms`",
                )
            force_setattr(self.source, "ts_ms", self.ts_ms)
        op = self.op
        if op == "m":
            if self.message is None:
                raise _Invalid("missing_field", "op `m` needs `message` - at `$.message`")
        elif self.after is None and op != "d" and op != "t":
            raise _Invalid("missing_field", f"op `{op}` needs `after` - at `$.after`")

    @property
    def table_id(self) -> TableId:
        source = self.source
        return (source.db, source.schema, source.table)


class Tombstone(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A null value after a delete: the key may now be compacted away."""

    key: dict[str, Any]


class DataCollectionCount(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Changes of one table in a transaction (END markers)."""

    data_collection: str
    event_count: int


class TransactionMarker(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """BEGIN or END of a source transaction, from the `<prefix>.transaction` topic."""

    status: Literal["BEGIN", "END"]
    id: str
    ts_ms: int | None = None
    event_count: int | None = None  # END only
    data_collections: tuple[DataCollectionCount, ...] | None = None  # END only


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A connector heartbeat; `prefix` is the topic prefix of the connector that sent it."""

    prefix: str
    ts_ms: int


class _HeartbeatValue(msgspec.Struct, frozen=True, gc=False):
    ts_ms: int


Decoded = ChangeEvent | Tombstone | TransactionMarker | Heartbeat | Rejection

T = TypeVar("T")


class _Wrapped(msgspec.Struct, Generic[T], forbid_unknown_fields=True, gc=False):
    """JsonConverter's `schemas.enable=true` form; the schema is skipped, never built."""

    schema: msgspec.Raw
    payload: T


_Kind = Literal["change", "marker", "heartbeat"]
_TYPES: dict[_Kind, type[Any]] = {
    "change": ChangeEvent,
    "marker": TransactionMarker,
    "heartbeat": _HeartbeatValue,
}
_PLAIN: dict[_Kind, msgspec.json.Decoder[Any]] = {
    "marker": msgspec.json.Decoder(TransactionMarker),
    "heartbeat": msgspec.json.Decoder(_HeartbeatValue),
}
_WRAPPED: dict[_Kind, msgspec.json.Decoder[Any]] = {
    "marker": msgspec.json.Decoder(_Wrapped[TransactionMarker]),
    "heartbeat": msgspec.json.Decoder(_Wrapped[_HeartbeatValue]),
}
_CHANGE: msgspec.json.Decoder[ChangeEvent] = msgspec.json.Decoder(ChangeEvent)
_CHANGE_WRAPPED: msgspec.json.Decoder[_Wrapped[ChangeEvent]] = msgspec.json.Decoder(
    _Wrapped[ChangeEvent]
)
_KEY: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])
_KEY_WRAPPED: msgspec.json.Decoder[_Wrapped[dict[str, Any] | None]] = msgspec.json.Decoder(
    _Wrapped[dict[str, Any] | None]
)
_ANY = msgspec.json.Decoder()
# UnicodeError: invalid UTF-8 in a string. RecursionError: nesting deeper than the limit.


_WRAPPED_PREFIXES = (b'{"schema"', b'{"payload"')


def _looks_wrapped(data: bytes) -> bool:
    """True if the first quoted name is `schema` or `payload` (only picks the first try)."""
    if data.startswith(_WRAPPED_PREFIXES):
        return True
    if data[1:2] == b'"':  # compact JSON (what JsonConverter writes) with another first name
        return False
    quote = data.find(b'"', 0, 64)
    return quote >= 0 and (
        data.startswith(b'schema"', quote + 1) or data.startswith(b'payload"', quote + 1)
    )


def _topic_kind(topic: str) -> _Kind:
    if topic.startswith(HEARTBEAT_PREFIX):
        return "heartbeat"
    if topic.endswith(TRANSACTION_SUFFIX):
        return "marker"
    return "change"


def decode_change(topic: str, key: bytes | None, value: bytes | None) -> Decoded:
    """Decode one Kafka message of a Debezium topic, or say why not. Never raises."""
    if value is None:
        return _tombstone(key)
    if topic.startswith(HEARTBEAT_PREFIX) or topic.endswith(TRANSACTION_SUFFIX):
        return _decode_other(topic, key, value)
    try:
        if _looks_wrapped(value):
            event = _CHANGE_WRAPPED.decode(value).payload
        else:
            event = _CHANGE.decode(value)
    except DECODE_ERRORS:
        return _decode_slowly(topic, key, value)
    return _with_key(event, key)


def _decode_other(topic: str, key: bytes | None, value: bytes) -> Decoded:
    kind = _topic_kind(topic)
    decoders = _WRAPPED if _looks_wrapped(value) else _PLAIN
    try:
        decoded = decoders[kind].decode(value)
    except DECODE_ERRORS:
        return _decode_slowly(topic, key, value)
    if isinstance(decoded, _Wrapped):
        decoded = decoded.payload
    return _finish(kind, topic, decoded, key)


def _finish(kind: _Kind, topic: str, decoded: Any, key: bytes | None) -> Decoded:
    if kind == "heartbeat":
        return Heartbeat(prefix=topic[len(HEARTBEAT_PREFIX) :], ts_ms=decoded.ts_ms)
    if kind == "change":
        return _with_key(decoded, key)
    return decoded  # type: ignore[no-any-return]


def _with_key(event: ChangeEvent, key: bytes | None) -> ChangeEvent | Rejection:
    decoded_key = None if key is None else _decode_key(key)
    if isinstance(decoded_key, Rejection):
        return decoded_key
    # The key lives in the message key, not the value: whatever the value said is replaced.
    force_setattr(event, "key", decoded_key)
    return event


def _tombstone(key: bytes | None) -> Tombstone | Rejection:
    if key is None:
        return Rejection("empty", "null key and null value")
    decoded_key = _decode_key(key)
    if isinstance(decoded_key, Rejection):
        return decoded_key
    if decoded_key is None:
        return Rejection("empty", "null key payload and null value")
    return Tombstone(key=decoded_key)


def _decode_key(data: bytes) -> dict[str, Any] | Rejection | None:
    try:
        if _looks_wrapped(data):
            return _KEY_WRAPPED.decode(data).payload
        return _KEY.decode(data)
    except DECODE_ERRORS:
        pass
    try:
        key = _ANY.decode(data)
    except DECODE_ERRORS as err:
        return _rejection("bad_key", f"key: {str(err) or type(err).__name__}")
    if _is_wrapper(key):
        key = key["payload"]
    if key is None or isinstance(key, dict):
        return key
    return _rejection("bad_key", f"key: expected an object or null, got {_json_type(key)}")


def _is_wrapper(obj: object) -> bool:
    return isinstance(obj, dict) and len(obj) == 2 and "schema" in obj and "payload" in obj


def _decode_slowly(topic: str, key: bytes | None, value: bytes) -> Decoded:
    """Parse generically, unwrap, pick the kind from the content, convert or explain."""
    try:
        obj = _ANY.decode(value)
    except DECODE_ERRORS as err:
        return _rejection("bad_json", str(err) or type(err).__name__)
    wrapped = _is_wrapper(obj)
    if wrapped:
        obj = obj["payload"]
    if obj is None:
        return _tombstone(key)
    if not isinstance(obj, dict):
        where = "payload" if wrapped else "value"
        return _rejection("not_object", f"{where}: expected an object, got {_json_type(obj)}")
    kind = _topic_kind(topic)
    decoded: Any
    try:
        if kind == "marker" and "op" in obj:
            try:
                decoded = msgspec.convert(obj, TransactionMarker)
            except msgspec.ValidationError:
                kind = "change"  # a table named `transaction`
                decoded = msgspec.convert(obj, ChangeEvent)
        else:
            decoded = msgspec.convert(obj, _TYPES[kind])
    except msgspec.ValidationError as err:
        return _explain(err, wrapped)
    except (RecursionError, TypeError, ValueError) as err:  # defensive: convert's own limits
        return _rejection("bad_value", str(err) or type(err).__name__)
    return _finish(kind, topic, decoded, key)


def _explain(err: msgspec.ValidationError, wrapped: bool) -> Rejection:
    detail = str(err)
    if wrapped:
        detail = detail.replace("`$", "`$.payload")
    cause = err.__cause__
    if isinstance(cause, _Invalid):
        return _rejection(cause.reason, detail)
    return _rejection(_reason_for(str(err)), detail)


_WRONG_TYPE = re.compile(r"Expected `[^`]*`, got `[^`]*`")


def _reason_for(message: str) -> str:
    """Map a msgspec ValidationError message (our types only) to a rejection reason."""
    text, _, path = message.rpartition(" - at `")
    if not text:
        text, path = message, ""
    if text.startswith("Object missing required field"):
        return "missing_field"
    if path.rstrip("`") == "$.op":
        return "unknown_op"
    if _WRONG_TYPE.match(text):
        return "wrong_type"
    return "bad_value"


def _rejection(reason: str, detail: str) -> Rejection:
    if len(detail) > _DETAIL_LIMIT:
        # Keep both ends: the start says what was wrong, the end says where.
        detail = detail[:150] + "..." + detail[-(_DETAIL_LIMIT - 153) :]
    return Rejection(reason, detail)


def _json_type(obj: object) -> str:
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, list):
        return "an array"
    return "null"
