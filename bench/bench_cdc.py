"""CDC throughput and memory: Debezium decoding plus migration checks.

Throughput: three loops over the same generated Kafka messages (a dual write: every source
change of `public.users` followed, a few messages later, by its mapped counterpart on
`public.users_v2`; inserts, updates and some deletes), once with JsonConverter's schema
wrapper and once without:
* decode only: one typed msgspec decode of the value and nothing else (the floor);
* decode_change: the adapter (key and value, wrapper detection, checks);
* decode + check: decode_change then `MigrationChecker.on_change`, what the daemon does.
Each loop runs `--repeat` times; the best run is shown. Rates are per second of this
process's CPU time (`time.process_time`), so a busy shared machine skews them less.

Memory: a child process per run builds a checker (max_pending = the key count, unless
`--cap` is given) and feeds it generated messages one at a time: a source insert for each of
N keys (all N keys pending at once: the peak), then every target insert (all settled), then
time moves past the memo TTL (nothing held). It reports VmRSS at each stage and the peak
(VmHWM).

Run: .venv/bin/python bench/bench_cdc.py [--messages N] [--keys N] [--cap N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from rolloutd.adapters.cdc.debezium import ChangeEvent, decode_change
from rolloutd.core.cdc.migration import MigrationChecker, MigrationSpec
from rolloutd.core.events import Rejection

SOURCE_TOPIC = "app.public.users"
TARGET_TOPIC = "app.public.users_v2"
SPEC = MigrationSpec(
    name="users-split",
    source_table="public.users",
    target_table="public.users_v2",
    key_columns=("id",),
    columns=(
        ("id", "id", "identity"),
        ("email", "email", "lower"),
        ("full_name", "name", "trim"),
        ("plan", "plan", "identity"),
        ("credits", "credits", "int"),
    ),
)
Message = tuple[str, bytes | None, bytes]
MB = 1024 * 1024


class _Wrapped(msgspec.Struct):
    payload: ChangeEvent


_PLAIN = msgspec.json.Decoder(ChangeEvent)
_WRAPPED = msgspec.json.Decoder(_Wrapped)


def _field(name: str, kind: str, optional: bool = False) -> dict[str, Any]:
    return {"type": kind, "optional": optional, "field": name}


def _schema(table: str, columns: list[tuple[str, str]]) -> dict[str, Any]:
    """A value schema shaped like the PostgreSQL connector's (about 2 KB of JSON)."""
    row = {"type": "struct", "optional": True, "name": f"app.public.{table}.Value"}
    row["fields"] = [_field(name, kind) for name, kind in columns]
    source_fields = [("version", "string"), ("connector", "string"), ("name", "string"),
                     ("ts_ms", "int64"), ("snapshot", "string"), ("db", "string"),
                     ("sequence", "string"), ("schema", "string"), ("table", "string"),
                     ("txId", "int64"), ("lsn", "int64"), ("xmin", "int64")]  # fmt: skip
    fields = [
        row | {"field": "before"},
        row | {"field": "after"},
        {"type": "struct", "fields": [_field(n, k) for n, k in source_fields],
         "optional": False, "name": "io.debezium.connector.postgresql.Source", "field": "source"},
        _field("op", "string"),
        _field("ts_ms", "int64", True),
        {"type": "struct", "fields": [_field("id", "string"), _field("total_order", "int64"),
                                      _field("data_collection_order", "int64")],
         "optional": True, "name": "event.block", "field": "transaction"},
    ]  # fmt: skip
    return {"type": "struct", "fields": fields, "optional": False, "name": f"{table}.Envelope"}


SOURCE_COLUMNS = [("id", "int32"), ("email", "string"), ("name", "string"), ("plan", "string"),
                  ("credits", "string"), ("created_at", "int64")]  # fmt: skip
TARGET_COLUMNS = [("id", "int32"), ("email", "string"), ("full_name", "string"),
                  ("plan", "string"), ("credits", "int32")]  # fmt: skip
KEY_SCHEMA = {"type": "struct", "fields": [_field("id", "int32")], "optional": False}


class Generator:
    """Debezium messages of a dual write, as JsonConverter would print them."""

    def __init__(self, wrapped: bool) -> None:
        self.wrapped = wrapped
        self.lsn = {SOURCE_TOPIC: 30_000_000, TARGET_TOPIC: 90_000_000}
        self.schemas = {
            SOURCE_TOPIC: _schema("users", SOURCE_COLUMNS),
            TARGET_TOPIC: _schema("users_v2", TARGET_COLUMNS),
        }

    def message(self, topic: str, op: str, key: int, row: dict[str, Any] | None) -> Message:
        self.lsn[topic] += 1
        lsn = self.lsn[topic]
        ts_ms = 1_763_719_200_000 + lsn % 10_000_000
        payload = {
            "before": {"id": key} if op == "d" else None,
            "after": row,
            "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "app",
                       "ts_ms": ts_ms, "snapshot": "false", "db": "app",
                       "sequence": f'["{lsn - 1}","{lsn}"]', "schema": "public",
                       "table": topic.rsplit(".", 1)[1], "txId": lsn // 3, "lsn": lsn,
                       "xmin": None},
            "op": op,
            "ts_ms": ts_ms + 40,
            "transaction": None,
        }  # fmt: skip
        key_doc: dict[str, Any] = {"id": key}
        value: dict[str, Any] = payload
        if self.wrapped:
            key_doc = {"schema": KEY_SCHEMA, "payload": key_doc}
            value = {"schema": self.schemas[topic], "payload": payload}
        return topic, msgspec.json.encode(key_doc), msgspec.json.encode(value)

    def pair(self, op: str, key: int, version: int) -> tuple[Message, Message]:
        """A source change and its mapped counterpart on the target."""
        if op == "d":
            return self.message(SOURCE_TOPIC, "d", key, None), self.message(
                TARGET_TOPIC, "d", key, None
            )
        name = f" User {key} v{version} "
        source = {"id": key, "email": f"User{key}@Example.com", "name": name, "plan": "pro",
                  "credits": str(version * 10), "created_at": 1_700_000_000_000 + key}  # fmt: skip
        target = {"id": key, "email": f"user{key}@example.com", "full_name": name.strip(),
                  "plan": "pro", "credits": version * 10}  # fmt: skip
        return self.message(SOURCE_TOPIC, op, key, source), self.message(
            TARGET_TOPIC, op, key, target
        )


def dual_write(count: int, wrapped: bool, lag: int = 8) -> list[Message]:
    """`count` messages: source changes, each target counterpart `lag` pairs later."""
    gen = Generator(wrapped)
    sources: list[Message] = []
    targets: list[Message] = []
    key = 0
    while len(sources) < count // 2:
        key += 1
        for version, op in enumerate(("c", "u", "u", "d" if key % 10 == 0 else "u")):
            source, target = gen.pair(op, key, version)
            sources.append(source)
            targets.append(target)
    half = count // 2
    out: list[Message] = []
    for i, source in enumerate(sources[:half]):
        out.append(source)
        if i >= lag:
            out.append(targets[i - lag])
    out.extend(targets[max(0, half - lag) : half])
    return out


def _loop(messages: list[Message], body: Callable[[Message], object]) -> float:
    gc.collect()
    start = time.process_time()
    for message in messages:
        body(message)
    return len(messages) / (time.process_time() - start)


def _checking(checker: MigrationChecker) -> Callable[[Message], object]:
    """decode_change then the checker, with `now` advancing 10 us per message."""
    clock = iter(range(1 << 62))

    def check(message: Message) -> object:
        event = decode_change(*message)
        if isinstance(event, ChangeEvent):
            return checker.on_change(event, next(clock) * 1e-5)
        raise ValueError(f"the generator wrote a bad message: {event}")

    return check


def rates(messages: list[Message], wrapped: bool, repeat: int) -> dict[str, float]:
    decoder = _WRAPPED if wrapped else _PLAIN

    def decode_only(message: Message) -> object:
        return decoder.decode(message[2])

    def decode(message: Message) -> object:
        return decode_change(*message)

    best = {"decode only": 0.0, "decode_change": 0.0, "decode + check": 0.0}
    for _ in range(repeat):
        best["decode only"] = max(best["decode only"], _loop(messages, decode_only))
        best["decode_change"] = max(best["decode_change"], _loop(messages, decode))
        checker = MigrationChecker(SPEC)
        best["decode + check"] = max(best["decode + check"], _loop(messages, _checking(checker)))
        failures = sum(checker.failures().values())
        if failures or checker.pending() > 20:
            raise AssertionError(f"a clean dual write failed checks: {checker.failures()}")
    return best


def _status_mb(field_name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field_name)


def _messages(gen: Generator, topic: str, keys: int) -> Iterator[ChangeEvent]:
    for key in range(keys):
        source, target = gen.pair("c", key, 1)
        event = decode_change(*(source if topic == SOURCE_TOPIC else target))
        if isinstance(event, Rejection):
            raise ValueError(event)
        yield event


def memory_child(keys: int, cap: int) -> dict[str, float]:
    """Run in a fresh process: RSS (MB) at each stage of `keys` keys changed."""
    report = {"start": _status_mb("VmRSS")}
    gen = Generator(wrapped=False)
    checker = MigrationChecker(MigrationSpec(**{**_spec_fields(), "max_pending": cap}))
    for i, event in enumerate(_messages(gen, SOURCE_TOPIC, keys)):
        checker.on_change(event, i * 1e-6)
    report["pending"] = float(checker.pending())
    report["overflow"] = float(checker.overflow())
    report["all pending"] = _status_mb("VmRSS")
    for i, event in enumerate(_messages(gen, TARGET_TOPIC, keys)):
        checker.on_change(event, 2.0 + i * 1e-6)
    report["failures"] = float(sum(checker.failures().values()))
    report["all settled"] = _status_mb("VmRSS")
    checker.advance(1000.0)  # judges what is left (with a cap: the refused keys' targets)
    checker.advance(2000.0)  # and forgets the memos
    report["held after TTL"] = float(checker.held())
    report["unverified"] = float(checker.unverified())
    gc.collect()
    report["after TTL"] = _status_mb("VmRSS")
    report["peak"] = _status_mb("VmHWM")
    return report


def _spec_fields() -> dict[str, Any]:
    return {f: getattr(SPEC, f) for f in SPEC.__dataclass_fields__}


def measure_memory(keys: int, cap: int | None) -> dict[str, float]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_cdc; "
        "print(json.dumps(bench_cdc.memory_child(int(sys.argv[2]), int(sys.argv[3]))))"
    )
    args = [sys.executable, "-c", code, str(Path(__file__).parent), str(keys), str(cap or keys)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def print_rates(rows: dict[str, dict[str, float]], count: int) -> None:
    print(f"{count:,} messages (half source, half target; inserts, updates, some deletes)")
    print(f"{'loop':<34}{'events/s':>12}{'us/event':>10}{'vs decode-only':>16}")
    for form, best in rows.items():
        floor = best["decode only"]
        for loop, rate in best.items():
            share = "" if loop == "decode only" else f"{rate / floor:.1%}"
            print(f"{form + ', ' + loop:<34}{rate:>12,.0f}{1e6 / rate:>10.2f}{share:>16}")


def print_memory(keys: int, report: dict[str, float]) -> None:
    per_key = (report["all pending"] - report["start"]) * MB / max(report["pending"], 1)
    print(
        f"{keys:,} keys changed: {report['pending']:,.0f} pending, "
        f"{report['overflow']:,.0f} overflow, {report['failures']:.0f} failures, "
        f"{report['unverified']:,.0f} unverified"
    )
    for stage in ("start", "all pending", "all settled", "after TTL", "peak"):
        print(f"  {stage:<14}{report[stage]:>9.1f} MB")
    print(f"  {'per pending key':<14}{per_key:>9.0f} bytes (held after TTL: "
          f"{report['held after TTL']:.0f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400_000)
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for the memory run")
    parser.add_argument("--cap", type=int, help="max_pending for the memory run (default: keys)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="40k messages, 100k keys, 1 run")
    args = parser.parse_args()
    if args.quick:
        args.messages, args.keys, args.repeat = 40_000, 100_000, 1
    rows = {}
    for wrapped in (True, False):
        form = "with schema" if wrapped else "payload only"
        rows[form] = rates(dual_write(args.messages, wrapped), wrapped, args.repeat)
    print_rates(rows, args.messages)
    print()
    print_memory(args.keys, measure_memory(args.keys, args.cap))
    if args.cap is None:
        capped = SPEC.max_pending
        print(f"with the default cap (max_pending={capped:,}):")
        print_memory(args.keys, measure_memory(args.keys, capped))


if __name__ == "__main__":
    main()
