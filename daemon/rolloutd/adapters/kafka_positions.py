"""Where each assigned partition starts reading, known before the daemon says it is ready.

Rules:
* A partition with an offset in the state store continues there: the store, not the
  group's committed offsets, says what the engine has seen.
* With `auto_offset_reset: latest`, a partition the store does not know starts at the
  daemon's start time (a new store) or at the engine time the store was last written (a
  restart: a partition with no stored offset had nothing persisted, so what a crashed run
  read of it is read again): the first record produced at or after it (ListOffsets by
  timestamp), or the partition's end when there is none. "Latest when assigned" would skip
  what was produced between the start and the assignment, which takes seconds in a group.
* A broker that answers a timestamp lookup per record batch (Tansu does) may point before
  the start; the records of that batch older than the start are then dropped on reading
  (`drop_before_start`), up to the first one at or after it, which is where Kafka itself
  would have pointed.
* Every partition's position is resolved before returning, so a ready daemon is consuming.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

from aiokafka import TopicPartition

Key = tuple[str, int]


class _Record(Protocol):
    @property
    def timestamp(self) -> int: ...


async def seek_assigned(
    consumer: Any,  # AIOKafkaConsumer (untyped)
    partitions: Sequence[TopicPartition],
    offsets: Mapping[Key, int],
    reset: Literal["earliest", "latest"],
    started_ms: int,
) -> dict[Key, int]:
    """Seek every partition; returns the start-time floors to drop older records below."""
    fresh: list[TopicPartition] = []
    for tp in partitions:
        stored = offsets.get((tp.topic, tp.partition))
        if stored is not None:
            consumer.seek(tp, stored)
        elif reset == "latest":
            fresh.append(tp)
    floors: dict[Key, int] = {}
    if fresh:
        # The ends first: a record produced between the two requests is then at or after
        # the end, so it is read either way.
        ends = await consumer.end_offsets(fresh)
        found = await consumer.offsets_for_times(dict.fromkeys(fresh, started_ms))
        for tp in fresh:
            hit = found.get(tp)
            # None is Kafka's "no record at or after it"; Tansu answers offset 0 with
            # timestamp -1 instead.
            if hit is None or hit.timestamp < 0:
                consumer.seek(tp, ends[tp])
            else:
                consumer.seek(tp, hit.offset)
                floors[(tp.topic, tp.partition)] = started_ms
    for tp in partitions:
        await consumer.position(tp)  # resolves an earliest reset (or committed offset) too
    return floors


def drop_before_start(records: Sequence[_Record], floor_ms: int) -> tuple[int, bool]:
    """How many leading records are older than the start, and whether one at or after it
    came (then the floor is done with)."""
    for index, record in enumerate(records):
        if record.timestamp >= floor_ms:
            return index, True
    return len(records), False
