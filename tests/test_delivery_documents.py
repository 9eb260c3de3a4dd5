"""Flag delivery documents, checked against the SDKs' own evaluators (no processes).

The flagd document is read by the flagd provider's evaluator (`FlagdCore`, what the
providers' in-process mode runs; the provider package ships no JSON schema), the Unleash
features document by the Unleash SDK's engine (yggdrasil). Shares and user sets are measured
over 10,000 keys.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from yggdrasil_engine.engine import UnleashEngine

from rolloutd.adapters.delivery import flagd, unleash
from rolloutd.adapters.delivery.board import FlagBoard, FlagEntry, Rendered
from rolloutd.adapters.delivery.routes import not_modified
from rolloutd.bucketing import in_rollout
from rolloutd.config import ConfigError, DeliveryVariants, parse_config
from rolloutd.core.events import Counter, Event, Gauge, Rejection, decode_one

USERS = [f"user-{i}" for i in range(10_000)]
FLAG = "new_checkout"


def entry(percent: float, phase: str = "progressing", revision: int = 7) -> FlagEntry:
    return FlagEntry(FLAG, "checkout-v2", percent, phase, revision)


def flagd_core(*entries: FlagEntry, variants: DeliveryVariants | None = None) -> FlagdCore:
    core = FlagdCore()
    document = flagd.document(entries, variants or DeliveryVariants())
    core.set_flags(json.dumps(document))  # the provider parses the JSON text, as from a file
    return core


def flagd_on(core: FlagdCore, flag: str = FLAG) -> set[str]:
    return {
        user
        for user in USERS
        if core.resolve_boolean_value(flag, False, EvaluationContext(targeting_key=user)).value
    }


@pytest.mark.parametrize("percent", [1, 5, 25, 50, 99, 2.5, 33.3])
def test_flagd_share_follows_the_percent(percent: float) -> None:
    share = len(flagd_on(flagd_core(entry(percent)))) / len(USERS) * 100
    assert abs(share - percent) <= 1.5


def test_flagd_users_stay_in_as_the_percent_grows() -> None:
    walked = [flagd_on(flagd_core(entry(p))) for p in (1, 2.5, 5, 25, 50, 100)]
    for smaller, larger in pairwise(walked):
        assert smaller <= larger


def test_flagd_at_zero_is_off_for_everyone_with_or_without_a_key() -> None:
    core = flagd_core(entry(0, "rolled_back"))
    assert flagd_on(core) == set()
    bare = core.resolve_boolean_value(FLAG, True, None)
    assert (bare.value, bare.variant, bare.reason) == (False, "off", Reason.STATIC)


def test_flagd_at_100_is_on_for_everyone_with_or_without_a_key() -> None:
    core = flagd_core(entry(100, "promoted"))
    assert flagd_on(core) == set(USERS)
    assert core.resolve_boolean_value(FLAG, False, None).value is True


def test_flagd_metadata_carries_rollout_phase_and_revision() -> None:
    core = flagd_core(entry(25, "paused", revision=1796301459324007))
    details = core.resolve_boolean_value(FLAG, False, EvaluationContext(targeting_key="u"))
    assert details.flag_metadata["rollout"] == "checkout-v2"
    assert details.flag_metadata["phase"] == "paused"
    assert details.flag_metadata["revision"] == 1796301459324007
    assert details.flag_metadata["percent"] == 25
    assert details.flag_metadata["flagSetId"] == "rolloutd"
    assert core.get_flag_set_metadata()["revision"] == 1796301459324007


def test_flagd_document_shape_and_variant_names_from_config() -> None:
    variants = DeliveryVariants(enabled="new", disabled="old")
    document = flagd.document([entry(25), FlagEntry("a_flag", "a", 0, "aborted", 3)], variants)
    assert document["$schema"] == flagd.SCHEMA
    assert list(document["flags"]) == ["a_flag", FLAG]
    definition = document["flags"][FLAG]
    assert definition["state"] == "ENABLED"
    assert definition["variants"] == {"new": True, "old": False}
    assert definition["defaultVariant"] == "old"
    assert definition["targeting"] == {"fractional": [["new", 25], ["old", 75]]}
    assert "targeting" not in document["flags"]["a_flag"]
    core = flagd_core(entry(25), variants=variants)
    details = core.resolve_boolean_value(FLAG, False, EvaluationContext(targeting_key="u"))
    assert details.variant in ("new", "old")


def test_fractional_weights_are_exact() -> None:
    assert flagd.weights(25) == (25, 75)
    assert flagd.weights(2.5) == (25, 975)
    assert flagd.weights(33.33) == (3333, 6667)
    assert flagd.weights(0) == (0, 100)


# -- Unleash --------------------------------------------------------------------------


def unleash_engine(*entries: FlagEntry) -> UnleashEngine:
    engine = UnleashEngine()
    engine.take_state(msgspec.json.encode(unleash.features(entries)).decode())
    return engine


@pytest.mark.parametrize("percent", [0, 1, 5, 25, 50, 99, 100, 2.5, 99.9])
def test_unleash_sdk_buckets_every_user_as_in_rollout(percent: float) -> None:
    engine = unleash_engine(entry(percent))
    for user in USERS:
        got = engine.is_enabled(FLAG, {"userId": user}).is_enabled
        assert got == in_rollout(FLAG, user, percent), user


def test_unleash_rollout_is_the_whole_percent_below() -> None:
    # The SDK engine reads a rollout of "2.5" as 0% (nobody): whole percents only.
    engine = UnleashEngine()
    state = unleash.features([entry(0)])
    state["features"][0]["strategies"][0]["parameters"]["rollout"] = "2.5"
    engine.take_state(json.dumps(state))
    assert not any(engine.is_enabled(FLAG, {"userId": u}).is_enabled for u in USERS)
    assert unleash.rollout_parameter(2.5) == "2"
    assert unleash.rollout_parameter(100) == "100"


def test_unleash_features_document_shape() -> None:
    document = unleash.features([entry(25, revision=9)])
    assert document["version"] == 2
    (feature,) = document["features"]
    assert (feature["name"], feature["enabled"]) == (FLAG, True)
    (strategy,) = feature["strategies"]
    assert strategy["name"] == "flexibleRollout"
    assert strategy["parameters"] == {"rollout": "25", "stickiness": "default", "groupId": FLAG}


def test_client_tokens_compare_exactly() -> None:
    tokens = [b"first-token", b"second-token"]
    assert unleash.authorized("second-token", tokens)
    assert unleash.authorized("Bearer first-token", tokens)
    for header in ("", "Bearer ", "first-toke", "first-token2", "third", "Bearer third"):
        assert not unleash.authorized(header, tokens), header


def metrics_body(toggles: Any, stop: Any = "2026-11-01T10:00:00.5+00:00") -> bytes:
    return json.dumps(
        {"appName": "shop", "bucket": {"start": stop, "stop": stop, "toggles": toggles}}
    ).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"bucket": 5}',
        b'{"bucket": {"toggles": []}}',
        metrics_body({FLAG: {"yes": -1, "no": 2}}),
        metrics_body({FLAG: {"yes": "3", "no": 2}}),
        metrics_body({FLAG: {"yes": 1 << 41, "no": 2}}),
        metrics_body({FLAG: {"yes": 1, "no": 2}}, stop="yesterday"),
        metrics_body({FLAG: {"yes": 1, "no": 2}}, stop="2026-11-01T10:00:00"),
        b'{"bucket": ' * 10_000 + b"}" * 10_000,
    ],
)
def test_malformed_metrics_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(unleash.Malformed):
        unleash.decode_metrics(body)


def accepted(data: bytes) -> Event:
    """One event through the decoder, which must accept it."""
    event = decode_one(data)
    assert not isinstance(event, Rejection), event
    return event


def test_metrics_become_contract_events_per_cohort() -> None:
    body = metrics_body({FLAG: {"yes": 30, "no": 90, "variants": {}}, "unknown": {"yes": 1}})
    metrics = unleash.decode_metrics(body)
    events = [accepted(e) for e in unleash.exposure_events(metrics, {FLAG: "co"}.get, 2e9)]
    counters = {(e.cohort, e.name, e.value) for e in events if isinstance(e, Counter)}
    assert counters == {("canary", "exposures", 30), ("control", "exposures", 90)}
    (gauge,) = [e for e in events if isinstance(e, Gauge)]
    assert (gauge.rollout, gauge.cohort, gauge.name, gauge.value) == (
        "co",
        "canary",
        "exposure_share",
        0.25,
    )
    assert all(e.ts == 1793527200.5 for e in events)  # the bucket's end
    later = unleash.exposure_events(metrics, {FLAG: "co"}.get, 1e9)  # a sender's clock ahead
    assert {accepted(e).ts for e in later} == {1e9}


def test_if_none_match() -> None:
    assert not_modified('"abc"', '"abc"')
    assert not_modified('W/"abc"', '"abc"')
    assert not_modified('"x", "abc"', '"abc"')
    assert not_modified("*", '"abc"')
    assert not not_modified('"abd"', '"abc"')
    assert not not_modified(None, '"abc"')


# -- the board ------------------------------------------------------------------------


class State(msgspec.Struct, frozen=True):
    flag: str
    percent: float | int
    rollout: str
    phase: str
    revision: int


def test_board_never_takes_an_older_revision_and_rebuilds_on_change() -> None:
    board = FlagBoard({"u": unleash.features})
    board.publish([State(FLAG, 25, "co", "progressing", 5)])
    first = board.rendered["u"]
    board.publish([State(FLAG, 5, "co", "progressing", 4)])
    assert board.rendered["u"] == first
    board.publish([State(FLAG, 0, "co", "rolled_back", 6)])
    assert board.rendered["u"].etag != first.etag
    assert board.rendered["u"] == Rendered.of(unleash.features([board.entries[FLAG]]))
    board.retain(set())
    assert board.rollout_of(FLAG) is None


def test_a_failed_file_write_is_counted_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "flags.json"
    render = {"f": lambda entries: flagd.document(entries, DeliveryVariants())}
    board = FlagBoard(render, ("f", path), flagd.write_atomically)
    board.publish([State(FLAG, 25, "co", "progressing", 5)])
    assert board.stats.file_writes["failed"] == 1
    path.parent.mkdir()
    board.publish([])  # the next commit (a tick)
    assert board.stats.file_writes["ok"] == 1
    assert json.loads(path.read_bytes())["flags"][FLAG]["metadata"]["revision"] == 5
    board.publish([])
    assert board.stats.file_writes["ok"] == 1  # nothing changed: nothing written
    assert [p.name for p in path.parent.iterdir()] == ["flags.json"]  # no temporary left


# -- config ---------------------------------------------------------------------------


def config_errors(delivery: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(yaml.safe_dump({"delivery": delivery}))
    return caught.value.errors


def test_config_errors_name_their_path() -> None:
    (error,) = config_errors({"variants": {"enabled": "on", "disabled": "on"}})
    assert error.startswith("delivery.variants.disabled")
    (error,) = config_errors({"flagd": {}})
    assert error.startswith("delivery.flagd.file")
    (error,) = config_errors({"unleash": {"client_tokens": []}})
    assert error.startswith("delivery.unleash.client_tokens")
    (error,) = config_errors({"unleash": {"client_tokens": ["t0k", " "]}})
    assert error.startswith("delivery.unleash.client_tokens[1]")


def test_config_takes_the_delivery_section() -> None:
    text = (
        "delivery:\n"
        "  flagd: {file: ./flags.json, http: true}\n"
        '  unleash: {client_tokens: ["${TOKEN}"]}\n'
    )
    config = parse_config(text, env={"TOKEN": "t0k"})
    assert config.delivery.flagd is not None
    assert config.delivery.flagd.http
    assert config.delivery.unleash is not None
    assert config.delivery.unleash.client_tokens[0].get_secret_value() == "t0k"
    assert "t0k" not in repr(config)
    assert parse_config("rollouts: []\n").delivery.flagd is None
