"""Where an outgoing message goes: a typed sink.

Rules: every outbox row names its sink as a `Sink` value (a Kafka topic, an MQTT topic, or a
notifier by name); code asks its `kind` and reads its `target`, never slices a string. The
store keeps the sink as text, `"<kind>:<target>"` (`str(sink)`, read back with
`Sink.parse`), the form rows have always had on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SinkKind(StrEnum):
    KAFKA = "kafka"  # target: the topic
    MQTT = "mqtt"  # target: the topic
    ALERT = "alert"  # target: the notifier's name (the alert dispatcher delivers it)


_KINDS = frozenset(kind.value for kind in SinkKind)


@dataclass(frozen=True, slots=True)
class Sink:
    kind: SinkKind
    target: str

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.target}"

    @staticmethod
    def parse(text: str) -> Sink:
        """The sink of a stored row; ValueError for a kind that does not exist."""
        kind, sep, target = text.partition(":")
        if not sep or not target or kind not in _KINDS:
            raise ValueError(f"not a sink: {text!r}")
        return Sink(SinkKind(kind), target)

    @staticmethod
    def kafka(topic: str) -> Sink:
        return Sink(SinkKind.KAFKA, topic)

    @staticmethod
    def mqtt(topic: str) -> Sink:
        return Sink(SinkKind.MQTT, topic)

    @staticmethod
    def alert(notifier: str) -> Sink:
        return Sink(SinkKind.ALERT, notifier)
