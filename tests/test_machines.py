"""The trigger and breaker tables: walked, matched against the runtimes, and drawn in docs/."""

from __future__ import annotations

import runpy
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import T0, command, engine, error_trigger, rollout
from rolloutd.core.breaker import BreakerRuntime, BreakerSpec
from rolloutd.core.decisions import to_dict
from rolloutd.core.machines import (
    ABORTED,
    BREACH_HELD,
    BREACH_SEEN,
    BREAKER_COMMANDS,
    BREAKER_EVENTS,
    BREAKER_STATES,
    BREAKER_TRANSITIONS,
    CLEAR_HELD,
    CLEAR_SEEN,
    CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    PAUSE,
    PROGRESSING,
    RETRY,
    ROLLED_BACK,
    TRANSITIONS,
    TRIAL_FAILED,
    TRIAL_PASSED,
    TRIGGER_EVENTS,
    TRIGGER_FIRING,
    TRIGGER_INACTIVE,
    TRIGGER_PENDING,
    TRIGGER_STATES,
    TRIGGER_TRANSITIONS,
    WAIT_ELAPSED,
    WINDOW_BREACHED,
)
from rolloutd.core.triggers import BREACH, INSUFFICIENT, OK, TriggerRuntime

ROOT = Path(__file__).resolve().parent.parent
DIAGRAMS = runpy.run_path(str(ROOT / "scripts" / "diagrams.py"))
BUCKET = 5.0
FOR = 10.0


def reachable(table: dict[tuple[str, str], str], start: str) -> set[str]:
    seen, frontier = {start}, [start]
    while frontier:
        state = frontier.pop()
        for (source, _event), target in table.items():
            if source == state and target not in seen:
                seen.add(target)
                frontier.append(target)
    return seen


def folded(table: dict[tuple[str, str], str], state: str, events: tuple[str, ...]) -> str:
    """The state after `events` in turn; an event without an entry leaves it."""
    for event in events:
        state = table.get((state, event), state)
    return state


# -- triggers -------------------------------------------------------------------------------


def test_every_trigger_state_is_reachable_and_every_entry_is_known() -> None:
    assert reachable(TRIGGER_TRANSITIONS, TRIGGER_INACTIVE) == set(TRIGGER_STATES)
    for (source, event), target in TRIGGER_TRANSITIONS.items():
        assert {source, target} <= set(TRIGGER_STATES)
        assert event in TRIGGER_EVENTS
        assert source != target  # a reading that keeps the state is no transition


def trigger_in(state: str, for_: float) -> TriggerRuntime:
    """A trigger loaded into `state` at T0 (pending since T0)."""
    trig = TriggerRuntime(error_trigger(for_=for_), BUCKET, 60.0)
    since = T0 if state == TRIGGER_PENDING else None
    trig.load([state, since, None, OK, None, None, 0])
    return trig


# A stimulus: the `for` of the trigger, (outcome, seconds after T0) readings, and the events
# the trigger may read them as, in turn.
TRIGGER_STIMULI: dict[str, tuple[float, list[tuple[int, float]], tuple[str, ...]]] = {
    "a breach before `for`": (FOR, [(BREACH, 1.0)], (BREACH_SEEN,)),
    "a breach once `for` held": (FOR, [(BREACH, FOR)], (BREACH_HELD,)),
    "a breach with for 0": (0.0, [(BREACH, 0.0)], (BREACH_HELD,)),
    "one clear reading": (FOR, [(OK, 1.0)], (CLEAR_SEEN,)),
    "clear for a bucket": (FOR, [(OK, 1.0), (OK, 1.0 + BUCKET)], (CLEAR_SEEN, CLEAR_HELD)),
    "insufficient data": (FOR, [(INSUFFICIENT, 1.0), (INSUFFICIENT, 100.0)], ()),
}


@pytest.mark.parametrize("stimulus", TRIGGER_STIMULI)
@pytest.mark.parametrize("state", TRIGGER_STATES)
def test_trigger_step_follows_the_table(state: str, stimulus: str) -> None:
    for_, readings, events = TRIGGER_STIMULI[stimulus]
    if state == TRIGGER_INACTIVE and stimulus == "a breach once `for` held":
        events = (BREACH_SEEN,)  # an inactive trigger's breach starts its `for`
    trig = trigger_in(state, for_)
    changes = []
    for outcome, at in readings:
        trig.outcome = outcome
        change = trig.step(T0 + at)
        if change is not None:
            changes.append(change)
            assert trig.state == change
    expected = folded(TRIGGER_TRANSITIONS, state, events)
    assert trig.state == expected
    assert len(changes) == (expected != state)
    # pending runs the `for` clock; inactive has no clock running
    if trig.state == TRIGGER_PENDING:
        assert trig.since is not None
    if trig.state == TRIGGER_INACTIVE:
        assert trig.since is None
        assert trig.ok_since is None


def test_the_trigger_table_drives_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TRIGGER_TRANSITIONS, (TRIGGER_INACTIVE, BREACH_SEEN), TRIGGER_FIRING)
    trig = trigger_in(TRIGGER_INACTIVE, FOR)
    trig.outcome = BREACH
    assert trig.step(T0) == TRIGGER_FIRING  # fires at once although `for` is 10 s


# -- breakers -------------------------------------------------------------------------------


def test_every_breaker_state_is_reachable_and_commands_work_everywhere() -> None:
    assert reachable(BREAKER_TRANSITIONS, CLOSED) == set(BREAKER_STATES)
    without_commands = {k: v for k, v in BREAKER_TRANSITIONS.items() if k[1] in BREAKER_EVENTS}
    assert reachable(without_commands, CLOSED) == {CLOSED, OPEN, HALF_OPEN}
    for state in BREAKER_STATES:
        assert {c for (s, c) in BREAKER_TRANSITIONS if s == state} >= set(BREAKER_COMMANDS)


SPEC = BreakerSpec(
    name="users", service="svc", window_size=10, minimum_calls=10, permitted_in_half_open=4
)
WAIT = SPEC.wait_in_open


def breaker_in(state: str) -> BreakerRuntime:
    """A breaker brought to `state` at T0 the way it gets there in service."""
    runtime = BreakerRuntime(SPEC)
    if state in (OPEN, HALF_OPEN):
        runtime.record(T0 - WAIT if state == HALF_OPEN else T0, 10, 10, 0)
        runtime.advance(T0)
    elif state != CLOSED:
        command = {FORCED_OPEN: "force_open", "disabled": "disable"}.get(state, state)
        runtime.command(T0, command)
    assert runtime.state == state
    return runtime


# A stimulus: what happens to the breaker after T0, and the events it may read it as.
BREAKER_STIMULI: dict[str, tuple[Callable[[BreakerRuntime], list[object]], tuple[str, ...]]] = {
    "ten failed calls": (lambda b: [*b.record(T0, 10, 10, 0)], (WINDOW_BREACHED, TRIAL_FAILED)),
    "ten slow calls": (lambda b: [*b.record(T0, 10, 0, 10)], (WINDOW_BREACHED, TRIAL_FAILED)),
    "ten good calls": (lambda b: [*b.record(T0, 10, 0, 0)], (TRIAL_PASSED,)),
    "the wait passing": (lambda b: [*b.advance(T0 + WAIT)], (WAIT_ELAPSED,)),
}


@pytest.mark.parametrize("stimulus", BREAKER_STIMULI)
@pytest.mark.parametrize("state", BREAKER_STATES)
def test_breaker_events_follow_the_table(state: str, stimulus: str) -> None:
    runtime = breaker_in(state)
    act, events = BREAKER_STIMULI[stimulus]
    decisions = act(runtime)
    expected = folded(BREAKER_TRANSITIONS, state, events)
    assert runtime.state == expected
    assert len(decisions) == (expected != state)


@pytest.mark.parametrize("command", BREAKER_COMMANDS)
@pytest.mark.parametrize("state", BREAKER_STATES)
def test_breaker_commands_follow_the_table(state: str, command: str) -> None:
    runtime = breaker_in(state)
    decisions = runtime.command(T0 + 1, command)
    assert runtime.state == BREAKER_TRANSITIONS[(state, command)]
    assert len(decisions) == (runtime.state != state)


def test_the_breaker_table_drives_the_breaker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BREAKER_TRANSITIONS, (HALF_OPEN, TRIAL_PASSED), OPEN)
    runtime = breaker_in(HALF_OPEN)
    runtime.record(T0, 4, 0, 0)
    assert runtime.state == OPEN


# -- rollouts -------------------------------------------------------------------------------


def test_the_rollout_table_drives_phase_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    eng = engine(rollout(start="manual"))
    eng.handle(command(T0, "start"))
    monkeypatch.setitem(TRANSITIONS, (PROGRESSING, PAUSE), ROLLED_BACK)
    out = [to_dict(d) for d in eng.handle(command(T0 + 1, "pause"))]
    assert [(d["phase"], d["reason"]) for d in out if d["kind"] == "phase"] == [
        (ROLLED_BACK, "command: pause")
    ]
    monkeypatch.setitem(TRANSITIONS, (ROLLED_BACK, RETRY), ABORTED)  # not a stepping target
    out = [to_dict(d) for d in eng.handle(command(T0 + 2, "retry"))]
    assert [d["phase"] for d in out if d["kind"] == "phase"] == [ABORTED]


# -- the diagrams ---------------------------------------------------------------------------


def test_committed_diagrams_are_current() -> None:
    """docs/machines.md is what scripts/diagrams.py renders from today's tables."""
    assert (ROOT / "docs" / "machines.md").read_text() == DIAGRAMS["render"]()


def test_diagrams_draw_every_entry_of_every_table() -> None:
    text = DIAGRAMS["render"]()
    for table in (TRANSITIONS, TRIGGER_TRANSITIONS):
        for (source, event), target in table.items():
            arrows = [line for line in text.splitlines() if f" {source} --> {target} : " in line]
            assert len(arrows) == 1
            assert event in arrows[0].split(" : ")[1].split(", ")
    for (source, event), target in BREAKER_TRANSITIONS.items():
        line = (
            f"    note right of {target} : {event} here keeps the state"
            if source == target
            else f"    {source} --> {target} : "
        )
        assert line in text
