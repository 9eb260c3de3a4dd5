"""The three state machines as data: their states, their events and their tables.

Rules:
* Each set (rollout phases, rollout commands, trigger states, breaker states, breaker
  commands) is defined here and only here; every other module imports it.
* A table maps (state, event) -> state. The code that moves a machine looks its target up
  in the table; a pair with no entry is not a transition (a refused command, or a reading
  that changes nothing).
* The names are plain `Final` str constants with a tuple per set, not `StrEnum`s: the
  rollout, trigger and engine modules are compiled with mypyc, where a `Final` str is
  inlined and compared as a str, while an enum member costs an attribute load and a
  slower comparison on the per-event path. As plain str the values are also exactly what
  the JSON snapshots, decisions and HTTP answers carry.
* A rollout target of STEPPING means "progressing, or promoted when the step entered is
  the last": the step decides, not the table.
"""

from __future__ import annotations

from typing import Final

# -- rollouts --------------------------------------------------------------------------
PENDING: Final = "pending"
PROGRESSING: Final = "progressing"
PAUSED: Final = "paused"
PROMOTED: Final = "promoted"
COMPLETED: Final = "completed"
ROLLED_BACK: Final = "rolled_back"
ABORTED: Final = "aborted"
PHASES: Final = (PENDING, PROGRESSING, PAUSED, PROMOTED, COMPLETED, ROLLED_BACK, ABORTED)
TERMINAL: Final = (COMPLETED, ROLLED_BACK, ABORTED)
ARMED: Final = (PROGRESSING, PAUSED, PROMOTED)
STEPPING: Final = "stepping"

START: Final = "start"
PROMOTE: Final = "promote"
PAUSE: Final = "pause"
RESUME: Final = "resume"
ABORT: Final = "abort"
RETRY: Final = "retry"
ROLLBACK: Final = "rollback"
SET_PERCENT: Final = "set_percent"
COMMANDS: Final = (START, PROMOTE, PAUSE, RESUME, ABORT, RETRY, ROLLBACK, SET_PERCENT)
# Events that are not commands: the clock and the triggers.
HOLD_ELAPSED: Final = "hold elapsed"
BAKE_ELAPSED: Final = "bake elapsed"
TRIGGER_ROLLBACK: Final = "trigger rollback"
TRIGGER_PAUSE: Final = "trigger pause"

_STOPPABLE: Final = (PENDING, PROGRESSING, PAUSED, PROMOTED, COMPLETED)
TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (PENDING, START): STEPPING,
    (PROGRESSING, PROMOTE): STEPPING,
    (PAUSED, PROMOTE): STEPPING,
    (PROGRESSING, PAUSE): PAUSED,
    (PROMOTED, PAUSE): PAUSED,
    (PAUSED, RESUME): STEPPING,
    (ROLLED_BACK, RETRY): STEPPING,
    (ABORTED, RETRY): STEPPING,
    (PROGRESSING, SET_PERCENT): PAUSED,
    (PAUSED, SET_PERCENT): PAUSED,
    (PROMOTED, SET_PERCENT): PAUSED,
    (PROGRESSING, HOLD_ELAPSED): STEPPING,
    (PROMOTED, BAKE_ELAPSED): COMPLETED,
    (PROGRESSING, TRIGGER_ROLLBACK): ROLLED_BACK,
    (PAUSED, TRIGGER_ROLLBACK): ROLLED_BACK,
    (PROMOTED, TRIGGER_ROLLBACK): ROLLED_BACK,
    (COMPLETED, TRIGGER_ROLLBACK): ROLLED_BACK,
    (PROGRESSING, TRIGGER_PAUSE): PAUSED,
    (PROMOTED, TRIGGER_PAUSE): PAUSED,
    **{(phase, ABORT): ABORTED for phase in _STOPPABLE},
    **{(phase, ROLLBACK): ROLLED_BACK for phase in _STOPPABLE},
}


def refusal_reason(phase: str, command: str) -> str:
    """Why `command` is refused in `phase`: the phases the table accepts it in."""
    allowed = sorted(p for (p, c) in TRANSITIONS if c == command)
    return f"{command} does not apply in phase {phase} (only in {', '.join(allowed)})"


# -- triggers --------------------------------------------------------------------------
TRIGGER_INACTIVE: Final = "inactive"
TRIGGER_PENDING: Final = "pending"
TRIGGER_FIRING: Final = "firing"
TRIGGER_STATES: Final = (TRIGGER_INACTIVE, TRIGGER_PENDING, TRIGGER_FIRING)
# What a sufficient reading means for the state (insufficient data is no event at all).
BREACH_SEEN: Final = "breach"  # the condition reads true, its `for` not yet held
BREACH_HELD: Final = "breach held"  # true for `for` (at once with `for: 0`)
CLEAR_SEEN: Final = "clear"  # the condition reads false
CLEAR_HELD: Final = "clear for a bucket"  # false for one full bucket
TRIGGER_EVENTS: Final = (BREACH_SEEN, BREACH_HELD, CLEAR_SEEN, CLEAR_HELD)
TRIGGER_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (TRIGGER_INACTIVE, BREACH_SEEN): TRIGGER_PENDING,
    (TRIGGER_INACTIVE, BREACH_HELD): TRIGGER_FIRING,
    (TRIGGER_PENDING, BREACH_HELD): TRIGGER_FIRING,
    (TRIGGER_PENDING, CLEAR_SEEN): TRIGGER_INACTIVE,  # a pending streak ends at once
    (TRIGGER_FIRING, CLEAR_HELD): TRIGGER_INACTIVE,  # so a firing trigger does not flap
}

# -- breakers --------------------------------------------------------------------------
CLOSED: Final = "closed"
OPEN: Final = "open"
HALF_OPEN: Final = "half_open"
FORCED_OPEN: Final = "forced_open"
DISABLED: Final = "disabled"
METRICS_ONLY: Final = "metrics_only"
BREAKER_STATES: Final = (CLOSED, OPEN, HALF_OPEN, FORCED_OPEN, DISABLED, METRICS_ONLY)
OPEN_STATES: Final = (OPEN, FORCED_OPEN)  # what a `breaker:<name>` trigger reads as 1
FORCE_OPEN: Final = "force_open"
DISABLE: Final = "disable"
RESET: Final = "reset"
BREAKER_COMMANDS: Final = (FORCE_OPEN, DISABLE, METRICS_ONLY, RESET)
WINDOW_BREACHED: Final = "window breached"
WAIT_ELAPSED: Final = "wait elapsed"
TRIAL_FAILED: Final = "trial failed"
TRIAL_PASSED: Final = "trial passed"
BREAKER_EVENTS: Final = (WINDOW_BREACHED, WAIT_ELAPSED, TRIAL_FAILED, TRIAL_PASSED)
_BREAKER_COMMAND_TARGETS: Final = {
    FORCE_OPEN: FORCED_OPEN,
    DISABLE: DISABLED,
    METRICS_ONLY: METRICS_ONLY,
    RESET: CLOSED,
}
BREAKER_TRANSITIONS: Final[dict[tuple[str, str], str]] = {
    (CLOSED, WINDOW_BREACHED): OPEN,
    (OPEN, WAIT_ELAPSED): HALF_OPEN,
    (HALF_OPEN, TRIAL_FAILED): OPEN,
    (HALF_OPEN, TRIAL_PASSED): CLOSED,
    # Commands work in every state; one for the state already held is a self-loop.
    **{
        (state, command): target
        for state in BREAKER_STATES
        for command, target in _BREAKER_COMMAND_TARGETS.items()
    },
}
