"""Stateful properties of the engine: invariants under interleaved events, clock jumps,
commands and restarts from snapshots."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from helpers import T0, batch, command, error_trigger, event, rollout
from rolloutd.core.decisions import Decision, encode
from rolloutd.core.engine import Engine, bucket_number
from rolloutd.core.rollout import COMMANDS
from rolloutd.core.spec import EngineSpec, StepSpec, TriggerSpec

SPEC = EngineSpec(
    rollouts=(
        rollout(
            error_trigger(window=10.0, for_=3.0, min_samples=20),
            error_trigger(
                name="slow",
                metric="latency_p99",
                threshold=500.0,
                baseline=None,
                window=5.0,
                for_=0.0,
                min_samples=5,
                action="pause",
            ),
            TriggerSpec(
                name="stall", metric="gauge:progress", op="unchanged", window=20.0, action="alert"
            ),
            steps=(StepSpec(5, 15), StepSpec(25, 15), StepSpec(100)),
            bake=20.0,
        ),
        rollout(
            error_trigger(
                name="other", baseline=None, min_samples=0, for_=0.0, after_completion=True
            ),
            name="side",
            flag="side_flag",
            start="manual",
            steps=(StepSpec(50, 5), StepSpec(100)),
            bake=5.0,
        ),
    ),
)


class EngineMachine(RuleBasedStateMachine):
    """Drives an engine and a twin restored from its snapshots; they must never disagree.

    The twin evaluates every bucket boundary (no skipping of quiet rollouts), so agreement
    also shows that skipping quiet rollouts changes no decision.
    """

    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(SPEC)
        self.twin = Engine(SPEC, shortcuts=False)
        self.ts = T0
        self.decisions: list[Decision] = []
        self.trigger_states: dict[tuple[str, str], str] = {}
        # What a store holds when only changed rollouts are rewritten after each call.
        self.stored_global: bytes | None = None
        self.stored_parts: dict[str, bytes] = {}

    def _both(self, call: str, *args: object) -> None:
        mine = getattr(self.engine, call)(*args)
        theirs = getattr(self.twin, call)(*args)
        assert [encode(d) for d in mine] == [encode(d) for d in theirs]
        self._check_step_rules(mine)
        self.decisions.extend(mine)
        self.stored_global = self.engine.snapshot_global()
        for name in self.engine.take_changed():
            self.stored_parts[name] = self.engine.snapshot_rollout(name)

    def _check_step_rules(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if d.kind == "trigger":
                self.trigger_states[(d.rollout, d.trigger)] = d.state
            elif d.kind == "percent" and d.reason == "hold elapsed":
                # Never advances while one of its triggers is pending or firing.
                states = [s for (r, _), s in self.trigger_states.items() if r == d.rollout]
                assert all(s == "inactive" for s in states), (d, states)

    @rule(dt=st.one_of(st.floats(min_value=0.0, max_value=8.0), st.floats(60.0, 400.0)))
    def tick(self, dt: float) -> None:
        self.ts += dt
        self._both("advance", self.ts)

    @rule(
        dt=st.floats(min_value=0.0, max_value=3.0),
        cohort=st.sampled_from(["canary", "control", "other"]),
        count=st.integers(0, 60),
        bad=st.floats(0.0, 1.0),
        lat=st.lists(st.floats(0.0, 2000.0), max_size=5),
        which=st.sampled_from(["co", "side"]),
        late=st.floats(0.0, 4.0),
    )
    def traffic(
        self,
        dt: float,
        cohort: str,
        count: int,
        bad: float,
        lat: list[float],
        which: str,
        late: float,
    ) -> None:
        self.ts += dt
        ev = batch(self.ts - late, cohort, count, int(count * bad), latency_ms=lat, rollout=which)
        self._both("handle", ev)

    @rule(dt=st.floats(0.0, 5.0), value=st.sampled_from([0.1, 0.2, 0.2, 0.2]))
    def gauge(self, dt: float, value: float) -> None:
        self.ts += dt
        self._both("handle", event(ts=self.ts, type="gauge", name="progress", value=value))

    @rule(
        cmd=st.sampled_from(COMMANDS),
        which=st.sampled_from(["co", "side"]),
        full=st.booleans(),
        pct=st.integers(0, 100),
    )
    def operator(self, cmd: str, which: str, full: bool, pct: int) -> None:
        extra = {"percent": pct} if cmd == "set_percent" else {}
        self._both("handle", command(self.ts, cmd, rollout=which, full=full, **extra))

    @precondition(lambda self: self.engine.now is not None)
    @rule()
    def restart_twin_from_snapshot(self) -> None:
        self.twin = Engine.restore(SPEC, self.engine.snapshot(), shortcuts=False)
        assert self.twin.snapshot() == self.engine.snapshot()

    @precondition(lambda self: self.stored_global is not None)
    @rule()
    def restart_twin_from_incremental_parts(self) -> None:
        self.twin = Engine.restore_parts(
            SPEC, self.stored_global, dict(self.stored_parts), shortcuts=False
        )

    @invariant()
    def percent_matches_phase(self) -> None:
        for rt in self.engine.rollouts:
            if rt.phase in ("pending", "rolled_back", "aborted"):
                assert rt.percent == 0
            if rt.phase in ("promoted", "completed"):
                assert rt.percent == 100

    @invariant()
    def failed_rollouts_leave_only_by_retry(self) -> None:
        last: dict[str, str] = {}
        for d in self.decisions:
            if d.kind != "phase":
                continue
            before = last.get(d.rollout)
            if before in ("rolled_back", "aborted"):
                assert d.reason == "command: retry", d
            last[d.rollout] = d.phase

    @invariant()
    def decision_times_never_go_back(self) -> None:
        times = [d.ts for d in self.decisions]
        assert times == sorted(times)


EngineMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)
TestEngineMachine = EngineMachine.TestCase


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_bucket_numbers_of_one_second_buckets_are_floor_division(ts: float) -> None:
    assert bucket_number(ts, 1.0) == int(ts // 1.0)
    assert bucket_number(ts, 0.25) == int(ts // 0.25)
