"""The rollout state machine: the transition table, commands, gates and actions."""

from __future__ import annotations

import pytest

from helpers import T0, batch, command, drive, engine, error_trigger, kinds, rollout, steady
from rolloutd.core.decisions import PhaseDecision, to_dict
from rolloutd.core.rollout import (
    ABORTED,
    COMMANDS,
    PHASES,
    ROLLED_BACK,
    STEPPING,
    TERMINAL,
    TRANSITIONS,
)
from rolloutd.core.spec import StepSpec

# -- the table ------------------------------------------------------------------------------


def test_every_phase_is_reachable_from_pending() -> None:
    seen = {"pending"}
    frontier = ["pending"]
    while frontier:
        phase = frontier.pop()
        for (source, _event), target in TRANSITIONS.items():
            if source != phase:
                continue
            targets = ("progressing", "promoted") if target == STEPPING else (target,)
            for t in targets:
                if t not in seen:
                    seen.add(t)
                    frontier.append(t)
    assert seen == set(PHASES)


@pytest.mark.parametrize("phase", [ROLLED_BACK, ABORTED])
def test_failed_phases_leave_only_by_retry(phase: str) -> None:
    exits = {event for (source, event) in TRANSITIONS if source == phase}
    assert exits == {"retry"}


def test_completed_leaves_only_by_abort_rollback_or_a_guarding_trigger() -> None:
    exits = {event for (source, event) in TRANSITIONS if source == "completed"}
    assert exits == {"abort", "rollback", "trigger rollback"}
    assert set(TERMINAL) == {"completed", "rolled_back", "aborted"}


def test_table_mentions_only_known_phases_and_commands() -> None:
    for (source, event), target in TRANSITIONS.items():
        assert source in PHASES
        assert target in PHASES or target == STEPPING
        assert event in COMMANDS or " " in event  # clock and trigger events have spaces


# -- commands -------------------------------------------------------------------------------

# (phase reached by the setup commands, command) -> accepted?
ACCEPTS = {(phase, cmd): (phase, cmd) in TRANSITIONS for phase in PHASES for cmd in COMMANDS}


def _to_phase(phase: str) -> list[str]:
    """Commands that bring a manual single-trigger rollout to `phase`."""
    return {
        "pending": [],
        "progressing": ["start"],
        "paused": ["start", "pause"],
        "promoted": ["start", "promote+full"],
        "completed": ["start", "promote+full", "wait"],
        "rolled_back": ["start", "rollback"],
        "aborted": ["start", "abort"],
    }[phase]


@pytest.mark.parametrize(("phase", "cmd"), sorted(ACCEPTS))
def test_each_command_in_each_phase_is_applied_or_refused(phase: str, cmd: str) -> None:
    eng = engine(rollout(start="manual", bake=10.0))
    ts = T0
    for step in _to_phase(phase):
        ts += 1
        if step == "wait":
            eng.advance(ts + 20)
            ts += 20
        elif step == "promote+full":
            eng.handle(command(ts, "promote", full=True))
        else:
            eng.handle(command(ts, step))
    assert eng.rollout("co").phase == phase
    extra = {"percent": 40} if cmd == "set_percent" else {}
    out = [to_dict(d) for d in eng.handle(command(ts + 1, cmd, actor="alice", **extra))]
    refused = kinds(out, "refused")
    if ACCEPTS[(phase, cmd)] and not (
        cmd == "promote" and phase in ("promoted", "paused") and eng.rollout("co").step == 2
    ):
        assert refused == []
        assert out, "an accepted command decides something"
        assert all(d.get("actor") == "alice" for d in out if d["kind"] in ("percent", "phase"))
    else:
        assert len(refused) == 1
        assert refused[0]["command"] == cmd
        assert refused[0]["reason"]
        assert eng.rollout("co").phase == phase


def test_manual_rollout_decides_nothing_until_start() -> None:
    eng = engine(rollout(start="manual"))
    assert drive(eng, steady(), 30) == []
    out = [to_dict(d) for d in eng.handle(command(T0 + 31, "start", actor="bob"))]
    assert [(d["kind"], d["reason"]) for d in out] == [
        ("percent", "command: start"),
        ("phase", "command: start"),
    ]
    assert out[0]["percent"] == 5


def test_promote_restarts_the_hold_and_full_goes_to_the_last_step() -> None:
    eng = engine(rollout())
    eng.handle(batch(T0, "canary", 1))
    out = eng.handle(command(T0 + 50, "promote"))
    assert [(d.kind, getattr(d, "percent", None)) for d in out] == [("percent", 25)]
    # The hold of step 2 runs from the promote, not from the original schedule.
    assert [d.kind for d in eng.advance(T0 + 109)] == []
    assert [getattr(d, "percent", None) for d in eng.advance(T0 + 110)] == [100, None]
    eng2 = engine(rollout())
    eng2.handle(batch(T0, "canary", 1))
    out = eng2.handle(command(T0 + 1, "promote", full=True))
    assert [(d.kind, getattr(d, "phase", None)) for d in out] == [
        ("percent", None),
        ("phase", "promoted"),
    ]


def test_pause_holds_and_resume_restarts_the_hold() -> None:
    eng = engine(rollout())
    eng.handle(batch(T0, "canary", 1))
    eng.handle(command(T0 + 10, "pause"))
    assert [d.kind for d in eng.advance(T0 + 500)] == []
    (resumed,) = eng.handle(command(T0 + 500, "resume"))
    assert isinstance(resumed, PhaseDecision)
    assert (resumed.kind, resumed.phase) == ("phase", "progressing")
    assert eng.advance(T0 + 559) == []
    assert [d.kind for d in eng.advance(T0 + 560)] == ["percent"]


def test_abort_and_rollback_always_decide_percent_zero() -> None:
    for cmd, phase in (("abort", "aborted"), ("rollback", "rolled_back")):
        eng = engine(rollout())
        eng.handle(batch(T0, "canary", 1))
        eng.advance(T0 + 61)
        out = [to_dict(d) for d in eng.handle(command(T0 + 62, cmd, reason="bad deploy"))]
        assert [(d["kind"], d.get("percent"), d.get("phase")) for d in out] == [
            ("percent", 0, None),
            ("phase", None, phase),
        ]
        assert out[0]["step"] == 2


def test_retry_into_a_breach_still_in_the_window_rolls_back_again() -> None:
    eng = engine(rollout(error_trigger(for_=0.0)))
    decisions = drive(eng, steady(0.5, 0.0, count=200), 5)
    assert eng.rollout("co").phase == "rolled_back"
    out = [to_dict(d) for d in eng.handle(command(T0 + 5.5, "retry"))]
    # Retry resets the firing trigger (resolved), restarts at step 1, and the breach still
    # in the window rolls it back at once.
    assert [
        (d["kind"], d.get("state") or d.get("phase") or d.get("status") or d.get("percent"))
        for d in out
    ] == [
        ("trigger", "inactive"),
        ("alert", "resolved"),
        ("percent", 5),
        ("phase", "progressing"),
        ("trigger", "firing"),
        ("percent", 0),
        ("phase", "rolled_back"),
        ("alert", "firing"),
    ]
    assert len(kinds(decisions, "alert")) == 1


def test_set_percent_holds_manually_until_resume_returns_to_the_plan() -> None:
    eng = engine(rollout())
    eng.handle(batch(T0, "canary", 1))
    out = [to_dict(d) for d in eng.handle(command(T0 + 1, "set_percent", percent=12.5))]
    assert [(d["kind"], d.get("percent"), d.get("phase")) for d in out] == [
        ("percent", 12.5, None),
        ("phase", None, "paused"),
    ]
    out = [to_dict(d) for d in eng.handle(command(T0 + 2, "resume"))]
    assert [(d["kind"], d.get("percent"), d.get("phase")) for d in out] == [
        ("percent", 5, None),
        ("phase", None, "progressing"),
    ]


def test_command_for_unknown_rollout_is_refused() -> None:
    eng = engine(rollout())
    out = [to_dict(d) for d in eng.handle(command(T0, "pause", rollout="nope"))]
    assert out[-1]["kind"] == "refused"
    reason = out[-1]["reason"]
    assert isinstance(reason, str)
    assert "unknown rollout" in reason


# -- triggers acting on the machine -----------------------------------------------------------


def test_pause_action_holds_percent_until_resume_and_resolution_does_not_unpause() -> None:
    trig = error_trigger(for_=0.0, action="pause", window=5.0)
    eng = engine(rollout(trig))
    decisions = drive(eng, steady(0.5, 0.0, count=200), 3)
    assert eng.rollout("co").phase == "paused"
    assert eng.rollout("co").percent == 5
    decisions += drive(eng, steady(0.0, 0.0, count=200), 30, start=T0 + 3)
    assert [d["status"] for d in kinds(decisions, "alert")] == ["firing", "resolved"]
    assert eng.rollout("co").phase == "paused"


def test_several_firing_at_once_act_in_config_order_and_rollback_ends_evaluation() -> None:
    warn = error_trigger(name="warn", for_=0.0, action="alert", severity="warning")
    stop = error_trigger(name="stop", for_=0.0, action="rollback")
    late = error_trigger(name="late", for_=0.0, action="alert")
    eng = engine(rollout(warn, stop, late))
    decisions = drive(eng, steady(0.5, 0.0, count=200), 2)
    fired = [(d["trigger"], d["state"]) for d in kinds(decisions, "trigger")]
    assert fired == [("warn", "firing"), ("stop", "firing")]
    assert eng.rollout("co").phase == "rolled_back"


def test_after_completion_trigger_keeps_guarding_at_full_rollout() -> None:
    guard = error_trigger(name="guard", for_=0.0, after_completion=True, baseline=None)
    eng = engine(rollout(guard, steps=(StepSpec(50, 10), StepSpec(100)), bake=10.0))
    drive(eng, steady(0.0, 0.0, count=200), 40)
    assert eng.rollout("co").phase == "completed"
    decisions = drive(eng, steady(0.9, 0.0, count=200), 5, start=T0 + 40)
    assert kinds(decisions, "phase")[-1]["phase"] == "rolled_back"


def test_without_after_completion_a_completed_rollout_is_not_guarded() -> None:
    eng = engine(rollout(error_trigger(for_=0.0, baseline=None), bake=10.0))
    drive(eng, steady(0.0, 0.0, count=200), 200)
    assert eng.rollout("co").phase == "completed"
    assert drive(eng, steady(0.9, 0.0, count=200), 5, start=T0 + 200) == []
