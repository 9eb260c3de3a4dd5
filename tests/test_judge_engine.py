"""Judge triggers in the engine: a sequential test of canary against control decides per event.

The tests of core/judge.py have their known answers in test_judge.py; here they run inside a
rollout: fed every request of both cohorts at the rollout's share, read as a trigger (`for`,
`min_samples`, actions), their evidence carried by the decisions, kept by snapshots, reset by
a retry, and configured under `judge:` with errors that name the path.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from helpers import T0, command, kinds
from rolloutd.config import ConfigError, parse_config
from rolloutd.core.decisions import Decision, to_dict
from rolloutd.core.engine import Engine
from rolloutd.core.events import Event, Request, Requests
from rolloutd.core.spec import EngineSpec

BASE: dict[str, Any] = {
    "triggers": {
        "worse": {
            "metric": "error_rate",
            "judge": {"alpha": 0.05},
            "min_samples": 200,
            "action": "rollback",
        },
    },
    "rollouts": [
        {
            "name": "co",
            "flag": "new_co",
            "steps": [
                {"percent": 5, "hold": "2h"},
                {"percent": 25, "hold": "2h"},
                {"percent": 100},
            ],
            "triggers": ["worse"],
        },
    ],
}


def config(change: dict[str, Any] | None = None, **judge: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["triggers"]["worse"]["judge"].update(judge)
    data["triggers"]["worse"].update(change or {})
    return data


def spec_of(data: dict[str, Any]) -> EngineSpec:
    return parse_config(yaml.safe_dump(data, sort_keys=False), env={}).to_spec()


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump(data, sort_keys=False), env={})
    return caught.value.errors


def traffic(
    eng: Engine,
    ratio: float,
    seconds: int,
    *,
    seed: int = 1,
    rate: float = 0.01,
    per_second: int = 400,
    start: float = T0,
    share: float | None = None,
) -> Iterator[Event]:
    """Batches of both cohorts each second: each request goes to the canary with the
    rollout's share (or `share`, to break the split), errors at `rate` (x `ratio` on the
    canary)."""
    rng = random.Random(seed)
    for i in range(seconds):
        rho = eng.rollout("co").percent / 100 if share is None else share
        canary = sum(rng.random() < rho for _ in range(per_second))
        for cohort, n, p in (
            ("canary", canary, rate * ratio),
            ("control", per_second - canary, rate),
        ):
            errors = sum(rng.random() < p for _ in range(n))
            yield Requests(ts=start + i + 0.5, rollout="co", cohort=cohort, count=n, errors=errors)


def run(eng: Engine, events: Iterator[Event]) -> list[dict[str, Any]]:
    out: list[Decision] = []
    for ev in events:
        out.extend(eng.handle(ev))
    return [to_dict(d) for d in out]


def judged(decisions: list[dict[str, Any]], trigger: str = "worse") -> list[dict[str, Any]]:
    return [d for d in kinds(decisions, "trigger") if d["trigger"] == trigger]


def started(spec: EngineSpec) -> tuple[Engine, list[dict[str, Any]]]:
    eng = Engine(spec)
    return eng, [to_dict(d) for d in eng.begin(T0)]


# -- deciding ---------------------------------------------------------------------------


def test_a_2x_regression_at_5_percent_is_rolled_back_with_its_evidence() -> None:
    eng, _ = started(spec_of(config()))
    decisions = run(eng, traffic(eng, 2.0, 1800))
    firing = [d for d in judged(decisions) if d["state"] == "firing"]
    assert len(firing) == 1
    fired = firing[0]
    evidence = fired["evidence"]
    assert evidence["test"] == "counts"
    assert evidence["alpha"] == 0.05
    assert fired["threshold"] == pytest.approx(20.0)  # 1/alpha
    assert evidence["e_value"] >= 20.0
    assert fired["value"] == pytest.approx(evidence["e_value"])
    assert evidence["p_value"] <= 0.05
    # The always-valid confidence set for the rate ratio excludes "no difference".
    assert 1.0 < evidence["lower"] <= evidence["estimate"] <= evidence["upper"]
    assert set(evidence["samples"]) == {"canary", "control"}
    assert evidence["samples"]["canary"] == fired["samples"] >= 200
    assert evidence["errors"]["canary"] > 0.05 * sum(evidence["errors"].values())
    phase = [d for d in kinds(decisions, "phase") if d["phase"] == "rolled_back"]
    assert phase
    assert phase[0]["reason"] == "worse"
    assert phase[0]["ts"] == fired["ts"]
    # At the end of the bucket that completed the evidence (or, while the rollout was quiet,
    # at the first event after it): never inside a bucket, where cohorts arrive in order.
    assert fired["ts"] == int(fired["ts"]) or fired["ts"] == int(fired["ts"]) + 0.5
    assert json.loads(json.dumps(fired)) == fired  # plain JSON


def test_no_difference_stays_silent_through_the_ramp() -> None:
    spec = spec_of(
        {
            **BASE,
            "rollouts": [
                {
                    **BASE["rollouts"][0],
                    "steps": [
                        {"percent": 5, "hold": "10m"},
                        {"percent": 25, "hold": "10m"},
                        {"percent": 50, "hold": "10m"},
                        {"percent": 100},
                    ],
                    "bake": "1m",
                }
            ],
        }
    )
    eng, _ = started(spec)
    decisions = run(eng, traffic(eng, 1.0, 2000, seed=7))
    assert judged(decisions) == []
    assert eng.rollout("co").phase == "completed"


def test_the_judge_is_insufficient_until_both_cohorts_have_min_samples() -> None:
    # 5x worse, but the canary never reaches 100,000 requests: insufficient data decides nothing.
    eng, _ = started(spec_of(config({"min_samples": 100_000})))
    decisions = run(eng, traffic(eng, 5.0, 600))
    assert judged(decisions) == []
    value = eng.rollout("co").triggers[0].value
    assert value is not None
    assert value >= 1e6  # the evidence is there; min_samples holds it back


def test_for_delays_the_judge_like_any_trigger() -> None:
    eng, _ = started(spec_of(config({"for": "30s"})))
    decisions = run(eng, traffic(eng, 5.0, 900))
    states = [(d["state"], d["ts"]) for d in judged(decisions)]
    assert states[0][0] == "pending"
    firing = [ts for state, ts in states if state == "firing"]
    assert firing
    assert firing[0] >= states[0][1] + 30


@pytest.mark.parametrize(
    ("metric", "judge", "worse"),
    [
        ("error_rate", {"test": "proportion", "tau": 0.01}, {"ratio": 3.0}),
        ("availability", {}, {"ratio": 3.0}),
        ("latency_mean", {"tau": 5.0}, {"slower": 20.0}),
    ],
)
def test_the_mixture_sprt_judges_proportions_and_means(
    metric: str, judge: dict[str, Any], worse: dict[str, float]
) -> None:
    spec = spec_of(config({"metric": metric}, **judge))
    for bad, expect in ((worse, True), ({}, False)):
        eng, _ = started(spec)
        decisions = run(eng, requests(eng, 900, **bad))
        firing = [d for d in judged(decisions) if d["state"] == "firing"]
        assert bool(firing) is expect, (metric, bad)
        if expect:
            evidence = firing[0]["evidence"]
            assert evidence["test"] == ("mean" if metric == "latency_mean" else "proportion")
            # canary minus control: higher error rate, lower availability, slower
            low, high = evidence["lower"], evidence["upper"]
            assert low <= evidence["estimate"] <= high
            assert high < 0 if metric == "availability" else low > 0


def requests(
    eng: Engine, seconds: int, *, ratio: float = 1.0, slower: float = 0.0
) -> Iterator[Event]:
    """Single request events with latencies (a mean of 50 ms, +`slower` on the canary)."""
    rng = random.Random(3)
    for i in range(seconds):
        rho = eng.rollout("co").percent / 100
        for j in range(200):
            canary = rng.random() < rho
            fail = rng.random() < 0.02 * (ratio if canary else 1.0)
            latency = rng.expovariate(1 / 50) + (slower if canary else 0.0)
            yield Request(
                ts=T0 + i + j / 200,
                rollout="co",
                cohort="canary" if canary else "control",
                ok=not fail,
                latency_ms=latency,
            )


# -- the split ----------------------------------------------------------------------------


def test_a_broken_split_alerts_holds_the_step_and_silences_the_judge() -> None:
    data = config()
    data["rollouts"][0]["steps"][0]["hold"] = "5m"
    eng, _ = started(spec_of(data))
    # The canary gets 15% of requests while the rollout says 5%, and is 3x worse.
    decisions = run(eng, traffic(eng, 3.0, 1200, share=0.15))
    srm = judged(decisions, "worse:srm")
    assert srm
    assert srm[0]["state"] == "firing"
    assert srm[0]["evidence"]["test"] == "srm"
    assert srm[0]["evidence"]["lower"] > 1.0  # more canary requests than planned
    alerts = [d for d in kinds(decisions, "alert") if d["trigger"] == "worse:srm"]
    assert alerts
    assert alerts[0]["severity"] == "warning"
    assert judged(decisions) == []  # not trusted while the split is broken
    rollout = eng.rollout("co")
    assert rollout.phase == "progressing"
    assert rollout.percent == 5.0


def test_srm_false_leaves_the_check_out() -> None:
    spec = spec_of(config(srm=False))
    assert [t.name for t in spec.rollouts[0].triggers] == ["worse"]
    eng, _ = started(spec)
    decisions = run(eng, traffic(eng, 3.0, 900, share=0.15))
    assert judged(decisions, "worse:srm") == []
    assert [d["state"] for d in judged(decisions)][-1] == "firing"


# -- keys ---------------------------------------------------------------------------------


def one_noisy_key(eng: Engine, seconds: int) -> Iterator[Event]:
    """Healthy traffic, plus one canary device failing 2,000 times within second 100."""
    rng = random.Random(5)
    for i in range(seconds):
        rho = eng.rollout("co").percent / 100
        for j in range(100):
            canary = rng.random() < rho
            yield Request(
                ts=T0 + i + j / 200,
                rollout="co",
                cohort="canary" if canary else "control",
                ok=rng.random() >= 0.01,
                key=f"user-{rng.randrange(10_000)}",
            )
        for j in range(2000 if i == 100 else 0):
            yield Request(
                ts=T0 + i + 0.5 + j / 5000, rollout="co", cohort="canary", ok=False, key="device-7"
            )


def test_per_key_counts_one_error_per_key_per_bucket() -> None:
    fired = {}
    for per_key in (False, True):
        data = config(per_key=per_key, srm=False)
        eng, _ = started(spec_of(data))
        fired[per_key] = judged(run(eng, one_noisy_key(eng, 600)))
    assert fired[False]
    assert fired[False][0]["state"] == "firing"
    assert fired[True] == []


# -- state --------------------------------------------------------------------------------


def test_a_snapshot_keeps_the_evidence() -> None:
    spec = spec_of(config())
    whole, _ = started(spec)
    events = list(traffic(whole, 2.0, 1800))
    expected = run(whole, iter(events))
    first, _ = started(spec)
    half = len(events) // 3
    before = run(first, iter(events[:half]))
    restored = Engine.restore(spec, first.snapshot())
    after = run(restored, iter(events[half:]))
    assert judged(expected)
    assert before + after == expected


def test_a_snapshot_without_judges_loads() -> None:
    plain = copy.deepcopy(BASE)
    plain["triggers"]["worse"] = {
        "metric": "error_rate",
        "op": ">",
        "threshold": 0.5,
        "window": "1m",
    }
    old, _ = started(spec_of(plain))
    run(old, traffic(old, 1.0, 10))
    spec = spec_of(config())
    restored = Engine.restore(spec, old.snapshot())
    decisions = run(restored, traffic(restored, 2.0, 1800, start=T0 + 10))
    assert [d["state"] for d in judged(decisions)] == ["firing"]


def test_a_restore_mid_bucket_still_reads_that_bucket_at_its_end() -> None:
    """A restored engine slides its routes at their first event; the open bucket's batch
    must wait for the bucket's end all the same (reading it early would peek)."""
    spec = spec_of(config({"min_samples": 10, "for": "0s"}))
    eng, _ = started(spec)
    worse = [
        Requests(ts=T0 + 0.2, rollout="co", cohort="canary", count=20, errors=20),
        Requests(ts=T0 + 0.3, rollout="co", cohort="control", count=380, errors=0),
    ]
    run(eng, iter(worse))
    restored = Engine.restore(spec, eng.snapshot())
    same_bucket = [Requests(ts=T0 + 0.6, rollout="co", cohort="control", count=1, errors=0)]
    assert run(restored, iter(same_bucket)) == run(eng, iter(same_bucket)) == []
    next_bucket = [Requests(ts=T0 + 1.1, rollout="co", cohort="control", count=1, errors=0)]
    decided = run(restored, iter(next_bucket))
    assert decided == run(eng, iter(next_bucket))
    assert [d["state"] for d in judged(decided)] == ["firing"]


def test_a_retry_judges_the_new_attempt_alone() -> None:
    eng, _ = started(spec_of(config()))
    decisions = run(eng, traffic(eng, 2.0, 1800))
    fired = next(d for d in judged(decisions) if d["state"] == "firing")
    assert fired["ts"] < T0 + 1700
    at = T0 + 1800  # the engine's time: the rest of the stream saw the rolled back flag
    retried = [to_dict(d) for d in eng.handle(command(at + 1, "retry"))]
    reset = judged(retried)
    assert [d["state"] for d in reset] == ["inactive"]
    assert reset[0]["evidence"]["e_value"] >= 20.0  # the old attempt's, as it ended
    # A healthy new attempt: the old evidence does not roll it back again.
    events = list(traffic(eng, 1.0, 900, start=at + 2, seed=11))
    assert judged(run(eng, iter(events))) == []
    eng.advance(at + 2 + 901)  # the last bucket closes
    canary = sum(e.count for e in events if isinstance(e, Requests) and e.cohort == "canary")
    assert eng.rollout("co").triggers[0].samples == canary  # counted from the retry on


# -- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "judge", "path", "fragment"),
    [
        ({"op": ">"}, {}, "triggers.worse.op", "not allowed with a judge"),
        ({"threshold": 0.1}, {}, "triggers.worse.threshold", "not allowed with a judge"),
        ({"window": "5m"}, {}, "triggers.worse.window", "not allowed with a judge"),
        ({"metric": "latency_p99"}, {}, "triggers.worse.metric", "a judge reads"),
        ({"metric": "latency_mean"}, {}, "triggers.worse.judge.tau", "required"),
        ({}, {"test": "mean"}, "triggers.worse.judge.test", "does not apply"),
        ({"metric": "availability"}, {"test": "counts"}, "triggers.worse.judge.test", "does not"),
        ({}, {"against": "canary"}, "triggers.worse.judge.against", "must differ"),
        ({}, {"alpha": 1.5}, "triggers.worse.judge.alpha", ""),
        ({}, {"mixture": "beta"}, "triggers.worse.judge.mixture", ""),
        ({}, {"srm": {"alpha": 0}}, "triggers.worse.judge.srm.alpha", ""),
    ],
)
def test_a_wrong_judge_names_the_path(
    change: dict[str, Any], judge: dict[str, Any], path: str, fragment: str
) -> None:
    errors = errors_of(config(change, **judge))
    matching = [e for e in errors if e.startswith(f"{path}: ")]
    assert matching, errors
    assert any(fragment in e for e in matching), errors


def test_latency_mean_needs_a_judge() -> None:
    data = copy.deepcopy(BASE)
    data["triggers"]["worse"] = {"metric": "latency_mean", "op": ">", "threshold": 1, "window": 60}
    assert any(e.startswith("triggers.worse.metric: ") for e in errors_of(data))


def test_a_trigger_without_op_or_judge_is_refused() -> None:
    data = copy.deepcopy(BASE)
    data["triggers"]["worse"] = {"metric": "error_rate", "threshold": 0.1, "window": 60}
    assert any(e.startswith("triggers.worse.op: ") for e in errors_of(data))


def test_the_judge_spec_carries_the_options() -> None:
    spec = spec_of(config(mixture="dirichlet", concentration=50, per_key=True, alpha=0.01))
    own, check = spec.rollouts[0].triggers
    assert own.judge is not None
    assert check.judge is not None
    assert (own.judge.test, own.judge.mixture, own.judge.concentration) == (
        "counts",
        "dirichlet",
        50,
    )
    assert (own.judge.alpha, own.judge.per_key, own.judge.srm_of) == (0.01, True, None)
    assert (check.name, check.action, check.severity) == ("worse:srm", "alert", "warning")
    assert (check.judge.srm_of, check.judge.srm_alpha) == ("worse", 0.001)
