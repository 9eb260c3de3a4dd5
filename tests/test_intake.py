"""The intake loop: events reach the engine, and payloads the slow path, in payload order."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, engine, error_trigger, rollout
from rolloutd.core.decisions import Decision
from rolloutd.core.events import Event
from rolloutd.core.intake import BATCH, take

MAX_BYTES = 200


def _valid(i: int) -> bytes:
    cohort = "canary" if i % 2 else "control"
    return msgspec.json.encode(
        {"ts": T0 + i, "type": "request", "rollout": "co", "cohort": cohort, "ok": i % 7 != 0}
    )


# What a payload is: a valid event, or one of the kinds the slow path must take.
KINDS = ("valid", "none", "too_large", "array", "bad_json")


def _payload(kind: str, i: int) -> bytes | None:
    if kind == "valid":
        return _valid(i)
    if kind == "none":
        return None
    if kind == "too_large":
        return b" " * MAX_BYTES + _valid(i)
    if kind == "array":
        return b"[" + _valid(i) + b"]"
    return b"{not json"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(KINDS), max_size=3 * BATCH))
def test_events_and_slow_payloads_keep_their_order(kinds: list[str]) -> None:
    eng = engine(rollout(error_trigger(min_samples=1, for_=0.0)))
    payloads = [_payload(kind, i) for i, kind in enumerate(kinds)]
    seen: list[tuple[str, int]] = []  # (what, engine events taken at that moment)

    def slow(payload: bytes | None) -> int:
        seen.append(("slow", eng.stats.events))
        return 0

    def decided(event: Event, decisions: list[Decision]) -> None:
        seen.append(("decided", eng.stats.events))

    taken = take(eng, payloads, None, MAX_BYTES, slow, decided)

    assert taken == kinds.count("valid") == eng.stats.events
    # At each slow payload, exactly the valid events before it have been handled.
    expected_slow = [
        ("slow", kinds[:i].count("valid")) for i, kind in enumerate(kinds) if kind != "valid"
    ]
    assert [s for s in seen if s[0] == "slow"] == expected_slow
    # A decision is reported right after its event, before the next one is handled.
    counts = [n for what, n in seen if what == "decided"]
    assert counts == sorted(counts)
    assert len(counts) == len(set(counts))
