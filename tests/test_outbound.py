"""Typed sinks: the stored text form round-trips, and a row naming no known sink is refused."""

from __future__ import annotations

import pytest

from rolloutd.core.outbound import Sink, SinkKind


@pytest.mark.parametrize(
    ("sink", "text"),
    [
        (Sink.kafka("rollout.flags"), "kafka:rollout.flags"),
        (Sink.mqtt("rollouts/flags/new_checkout"), "mqtt:rollouts/flags/new_checkout"),
        (Sink.alert("oncall"), "alert:oncall"),
        (Sink.kafka("a:b"), "kafka:a:b"),  # a topic may hold the separator; only the first counts
    ],
)
def test_the_stored_form_round_trips(sink: Sink, text: str) -> None:
    assert str(sink) == text
    assert Sink.parse(text) == sink


def test_the_kind_and_target_are_read_not_sliced() -> None:
    sink = Sink.parse("mqtt:rollouts/breakers/users")
    assert sink.kind is SinkKind.MQTT
    assert sink.target == "rollouts/breakers/users"


@pytest.mark.parametrize("text", ["", "kafka", "kafka:", "smtp:ops", ":topic"])
def test_a_row_naming_no_sink_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a sink"):
        Sink.parse(text)
