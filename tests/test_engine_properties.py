"""Stateful properties of the engine: invariants under interleaved events, clock jumps,
commands and restarts from snapshots; and decision-for-decision agreement with the plain
reference of tests/reference_engine.py, which recomputes every trigger from the raw samples
in its window at every evaluation point (and every judge from all it took)."""

from __future__ import annotations

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from helpers import T0, batch, command, error_trigger, event, rollout
from reference_engine import ReferenceEngine
from rolloutd.app.messages import Positions
from rolloutd.config import parse_config
from rolloutd.core.decisions import (
    Decision,
    PercentDecision,
    PhaseDecision,
    TriggerDecision,
    encode,
)
from rolloutd.core.engine import Engine, bucket_number
from rolloutd.core.rollout import COMMANDS
from rolloutd.core.spec import Baseline, EngineSpec, StepSpec, TriggerSpec

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


# Three rollouts whose metrics flap in and out of breach and run short of data: a request
# rate that needs steady traffic, a 2 s window, short `for`s, gauges with a baseline, a
# counter that must keep arriving.
FLAPPING = EngineSpec(
    rollouts=(
        rollout(
            error_trigger(
                baseline=Baseline("control", 2.0),
                threshold=0.05,
                window=10.0,
                for_=3.0,
                min_samples=20,
            ),
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
                name="quiet",
                metric="request_rate",
                op="<",
                threshold=5.0,
                window=2.0,
                for_=4.0,
                action="alert",
                severity="warning",
            ),
            TriggerSpec(
                name="stall", metric="gauge:progress", op="unchanged", window=20.0, action="alert"
            ),
            steps=(StepSpec(5, 8), StepSpec(25, 8), StepSpec(100)),
            bake=10.0,
        ),
        rollout(
            error_trigger(
                name="other",
                baseline=None,
                threshold=0.3,
                window=3.0,
                for_=2.0,
                min_samples=5,
                after_completion=True,
                action="alert",
            ),
            TriggerSpec(
                name="crashes", metric="counter:crashes", op=">", threshold=2.0, window=5.0
            ),
            name="side",
            flag="side_flag",
            start="manual",
            steps=(StepSpec(50, 5), StepSpec(100)),
            bake=5.0,
        ),
        rollout(
            error_trigger(
                name="avail",
                metric="availability",
                op="<",
                threshold=0.9,
                baseline=None,
                window=4.0,
                for_=1.0,
                min_samples=10,
            ),
            TriggerSpec(
                name="hot",
                metric="gauge:temp",
                op=">",
                threshold=50.0,
                baseline=Baseline("control", 1.5),
                window=6.0,
                for_=2.0,
                min_samples=1,
                action="alert",
                severity="warning",
            ),
            TriggerSpec(
                name="heartbeat",
                metric="counter:heartbeat",
                op="absent",
                window=8.0,
                action="pause",
            ),
            name="third",
            flag="third_flag",
            steps=(StepSpec(10, 3), StepSpec(20, 3), StepSpec(100)),
            bake=4.0,
        ),
    ),
)


# Judges of every kind beside a threshold trigger: the grid count test with its sample-ratio
# check, the Dirichlet test counting one error per key, proportions on availability, and
# mean latency after completion; small `min_samples` so they decide within a run.
JUDGED = parse_config(
    yaml.safe_dump(
        {
            "triggers": {
                "worse": {
                    "metric": "error_rate",
                    "judge": {"alpha": 0.05, "srm": {"alpha": 0.01}},
                    "min_samples": 30,
                    "for": "2s",
                },
                "errors": {
                    "metric": "error_rate",
                    "op": ">",
                    "threshold": 0.6,
                    "window": "5s",
                    "min_samples": 10,
                    "action": "pause",
                },
                "keyed": {
                    "metric": "error_rate",
                    "judge": {"mixture": "dirichlet", "per_key": True, "alpha": 0.1, "srm": False},
                    "min_samples": 5,
                    "action": "alert",
                },
                "avail": {
                    "metric": "availability",
                    "judge": {"test": "proportion", "tau": 0.05},
                    "min_samples": 20,
                    "action": "pause",
                },
                "slow": {
                    "metric": "latency_mean",
                    "judge": {"tau": 50.0, "srm": False},
                    "min_samples": 3,
                    "after_completion": True,
                },
            },
            "rollouts": [
                {
                    "name": "co",
                    "flag": "new_co",
                    "steps": [
                        {"percent": 5, "hold": "15s"},
                        {"percent": 25, "hold": "15s"},
                        {"percent": 100},
                    ],
                    "bake": "20s",
                    "triggers": ["worse", "errors", "keyed"],
                },
                {
                    "name": "side",
                    "flag": "side_flag",
                    "start": "manual",
                    "steps": [
                        {"percent": 10, "hold": "5s"},
                        {"percent": 50, "hold": "5s"},
                        {"percent": 100},
                    ],
                    "bake": "5s",
                    "triggers": ["avail"],
                },
                {
                    "name": "third",
                    "flag": "third_flag",
                    "steps": [{"percent": 20, "hold": "3s"}, {"percent": 100}],
                    "bake": "4s",
                    "triggers": ["slow"],
                },
            ],
        },
        sort_keys=False,
    ),
    env={},
).to_spec()


class EngineMachine(RuleBasedStateMachine):
    """Drives an engine and a twin restored from its snapshots; they must never disagree.

    The twin evaluates every bucket boundary (no skipping of quiet rollouts), so agreement
    also shows that skipping quiet rollouts changes no decision.
    """

    spec = SPEC
    names: tuple[str, ...] = ("co", "side")

    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine(self.spec)
        self.twin = Engine(self.spec, shortcuts=False)
        self.reference = ReferenceEngine(self.spec)
        self.ts = T0
        self.decisions: list[Decision] = []
        self.trigger_states: dict[tuple[str, str], str] = {}
        # What a store holds when only changed rollouts are rewritten after each call.
        self.stored_global: bytes | None = None
        self.stored_parts: dict[str, bytes] = {}
        # What the daemon's messages say of each rollout: moved by the decisions alone.
        self.positions = Positions(self.engine.rollouts)

    def _both(self, call: str, *args: object) -> None:
        mine = getattr(self.engine, call)(*args)
        theirs = getattr(self.twin, call)(*args)
        reference = getattr(self.reference, call)(*args)
        assert [encode(d) for d in mine] == [encode(d) for d in theirs]
        assert [encode(d) for d in mine] == [encode(d) for d in reference]
        self._check_step_rules(mine)
        self.decisions.extend(mine)
        for decision in mine:
            self.positions.apply(decision)
        self.stored_global = self.engine.snapshot_global()
        for name in self.engine.take_changed():
            self.stored_parts[name] = self.engine.snapshot_rollout(name)

    def _check_step_rules(self, decisions: list[Decision]) -> None:
        for d in decisions:
            if isinstance(d, TriggerDecision):
                self.trigger_states[(d.rollout, d.trigger)] = d.state
            elif isinstance(d, PercentDecision) and d.reason == "hold elapsed":
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
        which=st.integers(0, 3),
        late=st.floats(0.0, 4.0),
    )
    def traffic(
        self,
        dt: float,
        cohort: str,
        count: int,
        bad: float,
        lat: list[float],
        which: int,
        late: float,
    ) -> None:
        self.ts += dt
        name = self._name(which)
        ev = batch(self.ts - late, cohort, count, int(count * bad), latency_ms=lat, rollout=name)
        self._both("handle", ev)

    @rule(
        dt=st.floats(min_value=0.0, max_value=1.5),
        cohort=st.sampled_from(["canary", "control"]),
        ok=st.booleans(),
        lat=st.none() | st.floats(0.0, 2000.0),
        which=st.integers(0, 3),
        late=st.sampled_from([0.0, 0.0, 0.7, 2.5]),
        key=st.sampled_from([None, "u1", "u1", "u2"]),
    )
    def single(
        self,
        dt: float,
        cohort: str,
        ok: bool,
        lat: float | None,
        which: int,
        late: float,
        key: str | None,
    ) -> None:
        """One `request`: the engine's single-request path (`add_one`); a `key` for the
        judges that count one error per key."""
        self.ts += dt
        extra: dict[str, object] = {} if lat is None else {"latency_ms": lat}
        if key is not None:
            extra["key"] = key
        ev = event(
            ts=self.ts - late,
            type="request",
            cohort=cohort,
            ok=ok,
            rollout=self._name(which),
            **extra,
        )
        self._both("handle", ev)

    @rule(
        dt=st.floats(0.0, 5.0),
        value=st.sampled_from([0.1, 0.2, 0.2, 0.2, 40.0, 70.0]),
        name=st.sampled_from(["progress", "temp"]),
        cohort=st.sampled_from(["canary", "control"]),
        which=st.integers(0, 3),
    )
    def gauge(self, dt: float, value: float, name: str, cohort: str, which: int) -> None:
        self.ts += dt
        ev = event(
            ts=self.ts,
            type="gauge",
            name=name,
            value=value,
            cohort=cohort,
            rollout=self._name(which),
        )
        self._both("handle", ev)

    @rule(
        dt=st.floats(0.0, 4.0),
        value=st.sampled_from([0.0, 1.0, 1.5, 3.0]),
        name=st.sampled_from(["crashes", "heartbeat"]),
        which=st.integers(0, 3),
    )
    def counter(self, dt: float, value: float, name: str, which: int) -> None:
        self.ts += dt
        ev = event(ts=self.ts, type="counter", name=name, value=value, rollout=self._name(which))
        self._both("handle", ev)

    def _name(self, which: int) -> str:
        """A rollout of the spec, or (past the end) one no config defines."""
        return self.names[which] if which < len(self.names) else "unknown"

    @rule(
        cmd=st.sampled_from(COMMANDS),
        which=st.integers(0, 3),
        full=st.booleans(),
        pct=st.integers(0, 100),
    )
    def operator(self, cmd: str, which: int, full: bool, pct: int) -> None:
        extra = {"percent": pct} if cmd == "set_percent" else {}
        name = self._name(which)
        self._both("handle", command(self.ts, cmd, rollout=name, full=full, **extra))

    @precondition(lambda self: self.engine.now is not None)
    @rule()
    def restart_twin_from_snapshot(self) -> None:
        self.twin = Engine.restore(self.spec, self.engine.snapshot(), shortcuts=False)
        assert self.twin.snapshot() == self.engine.snapshot()

    @precondition(lambda self: self.stored_global is not None)
    @rule()
    def restart_twin_from_incremental_parts(self) -> None:
        self.twin = Engine.restore_parts(
            self.spec, self.stored_global, dict(self.stored_parts), shortcuts=False
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
            if not isinstance(d, PhaseDecision):
                continue
            before = last.get(d.rollout)
            if before in ("rolled_back", "aborted"):
                assert d.reason == "command: retry", d
            last[d.rollout] = d.phase

    @invariant()
    def the_decisions_carry_every_move(self) -> None:
        """A flag message built from the decisions alone says what the engine holds."""
        for rt in self.engine.rollouts:
            position = self.positions.of[rt.spec.name]
            assert (position.flag, position.percent, position.phase) == (
                rt.spec.flag,
                rt.percent,
                rt.phase,
            )

    @invariant()
    def decision_times_never_go_back(self) -> None:
        times = [d.ts for d in self.decisions]
        assert times == sorted(times)


EngineMachine.TestCase.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)
TestEngineMachine = EngineMachine.TestCase


class FlappingMachine(EngineMachine):
    """The same checks on three rollouts whose metrics flap and run short of data."""

    spec = FLAPPING
    names = ("co", "side", "third")


FlappingMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=80, deadline=None
)
TestFlappingMachine = FlappingMachine.TestCase


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_bucket_numbers_of_one_second_buckets_are_floor_division(ts: float) -> None:
    assert bucket_number(ts, 1.0) == int(ts // 1.0)
    assert bucket_number(ts, 0.25) == int(ts // 0.25)


class JudgeMachine(EngineMachine):
    """The same checks with judge triggers: what each took, when it reads (bucket ends),
    resets, the sample-ratio check's hold, and their evidence, against the reference."""

    spec = JUDGED
    names = ("co", "side", "third")

    @rule(
        dt=st.floats(min_value=0.0, max_value=2.0),
        which=st.integers(0, 2),
        total=st.integers(20, 200),
        canary_bad=st.sampled_from([0.0, 0.02, 0.1, 0.4]),
        control_bad=st.sampled_from([0.0, 0.02, 0.1]),
        lat=st.lists(st.floats(0.0, 1000.0), max_size=4),
        slower=st.sampled_from([0.0, 0.0, 400.0]),
    )
    def split(
        self,
        dt: float,
        which: int,
        total: int,
        canary_bad: float,
        control_bad: float,
        lat: list[float],
        slower: float,
    ) -> None:
        """Both cohorts' batches split as planned (so the sample-ratio check holds), the
        canary as good as control or worse, in errors or latency: the judges decide."""
        self.ts += dt
        name = self.names[which]
        canary = round(total * self.engine.rollout(name).percent / 100)
        for cohort, count, bad, shift in (
            ("canary", canary, canary_bad, slower),
            ("control", total - canary, control_bad, 0.0),
        ):
            latencies = [v + shift for v in lat]
            ev = batch(self.ts, cohort, count, int(count * bad), latency_ms=latencies, rollout=name)
            self._both("handle", ev)

    @rule(
        dt=st.floats(min_value=0.0, max_value=1.0),
        cohort=st.sampled_from(["canary", "control"]),
        key=st.sampled_from(["u1", "u2"]),
        errors=st.integers(1, 5),
        late=st.sampled_from([0.0, 0.0, 1.5]),
    )
    def noisy_key(self, dt: float, cohort: str, key: str, errors: int, late: float) -> None:
        """One user's burst of errors: counted once per bucket by the per-key judge."""
        self.ts += dt
        for _ in range(errors):
            ev = event(
                ts=self.ts - late, type="request", cohort=cohort, ok=False, rollout="co", key=key
            )
            self._both("handle", ev)

    @invariant()
    def the_judges_saw_what_the_reference_took(self) -> None:
        """Between decisions too: every armed rollout's judges hold the evidence the
        reference computes from all it took in the buckets closed by now. The twin's
        closed buckets are flushed first, as its next reading would (after a restore its
        routes slide at their next event); flushing early changes no decision."""
        if self.reference.now is None:
            return
        head = self.reference.head
        for ref in self.reference.rollouts:
            if not ref.armed:
                continue
            triggers = self.twin.rollout(ref.spec.name).triggers
            for mine, theirs in zip(triggers, ref.triggers, strict=True):
                if theirs.judge is None:
                    continue
                assert mine.judge is not None
                mine.judge.flush(head)
                expected = theirs.judge.evidence(head, theirs.srm_check)
                assert mine.evidence() == expected, mine.spec.name


JudgeMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=80, deadline=None)
TestJudgeMachine = JudgeMachine.TestCase
