"""The intake loop: every payload taken once, in payload order, against a plain reference.

The reference decodes every payload with `decode_many` and hands its events to the engine
one by one; the intake batches single events on its fast path and sends everything else
down its slow path. Both must reach the same decisions, the same rejections (with the
payload's index) and the same count of events taken.
"""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import T0, engine, error_trigger, rollout
from rolloutd.core.decisions import Decision
from rolloutd.core.engine import FUTURE, Engine
from rolloutd.core.events import Rejection, decode_many
from rolloutd.core.intake import BATCH, FUTURE_TIMESTAMP, take

MAX_BYTES = 200
SKEW = 300.0
NOW = T0 + 10_000


def _valid(i: int, future: bool = False) -> bytes:
    cohort = "canary" if i % 2 else "control"
    ts = NOW + SKEW + 1 + i if future else T0 + i
    return msgspec.json.encode(
        {"ts": ts, "type": "request", "rollout": "co", "cohort": cohort, "ok": i % 7 != 0}
    )


# What a payload is: a valid event, or one of the kinds the slow path must take.
KINDS = ("valid", "valid", "none", "too_large", "array", "bad_json", "mixed", "future")


def _payload(kind: str, i: int) -> bytes | None:
    if kind == "valid":
        return _valid(i)
    if kind == "none":
        return None
    if kind == "too_large":
        return b" " * MAX_BYTES + _valid(i)
    if kind == "array":
        return b"[" + _valid(i) + b"," + _valid(i + 1) + b"]"
    if kind == "mixed":  # one good element, one bad: the bad one rejects only itself
        return b"[" + _valid(i) + b', {"ts": "soon"}]'
    if kind == "future":
        return _valid(i, future=True)
    return b"{not json"


def _fresh() -> Engine:
    return engine(rollout(error_trigger(min_samples=1, for_=0.0)))


def _reference(
    eng: Engine, payloads: list[bytes | None], now: float, guarded: bool
) -> tuple[list[Decision], list[tuple[int, str]], int]:
    decisions: list[Decision] = []
    rejected: list[tuple[int, str]] = []
    taken = 0
    for index, payload in enumerate(payloads):
        if payload is None:
            rejected.append((index, "empty"))
            continue
        if len(payload) > MAX_BYTES:
            rejected.append((index, "too_large"))
            continue
        events, rejections = decode_many(payload)
        rejected += [(index, r.reason) for r in rejections]
        for event in events:
            out = eng.handle(event, now, now + SKEW) if guarded else eng.handle(event, now)
            if out is FUTURE:
                rejected.append((index, FUTURE_TIMESTAMP))
                continue
            taken += 1
            decisions += out
    return decisions, rejected, taken


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(KINDS), max_size=3 * BATCH), st.booleans())
def test_the_intake_takes_what_the_reference_takes(kinds: list[str], guarded: bool) -> None:
    payloads = [_payload(kind, i) for i, kind in enumerate(kinds)]
    if not guarded:  # unguarded (replay) has no clock to be ahead of
        payloads = [p for p, kind in zip(payloads, kinds, strict=True) if kind != "future"]
    expected, rejected, count = _reference(_fresh(), payloads, NOW, guarded)

    eng = _fresh()
    taken = take(eng, payloads, NOW, MAX_BYTES, SKEW if guarded else None)

    assert taken.decisions() == expected
    assert [(i, r.reason) for i, r in taken.rejected] == rejected
    assert taken.events == count == eng.stats.events
    assert taken.failed == []
    # Each event's decisions come with that event's time, in order.
    times = [ts for ts, _ in taken.decided]
    assert times == sorted(times)
    assert all(d.ts == NOW for _, ds in taken.decided for d in ds)


def test_a_future_event_is_rejected_with_its_payload_and_the_rule() -> None:
    payloads = [_valid(0), _valid(1, future=True)]
    taken = take(_fresh(), payloads, NOW, MAX_BYTES, SKEW)
    ((index, rejection),) = taken.rejected
    assert index == 1
    assert rejection == Rejection(
        FUTURE_TIMESTAMP,
        f"ts {NOW + SKEW + 2!r} is more than 300s after the clock ({NOW!r}) - at `$.ts`",
    )
    assert taken.events == 1


# An event whose handling raises (skipped with its payload's index): tests/test_poison.py,
# through the daemon's pipeline and a real breaker made to raise.
