"""Labelled counters exist at 0 from the start (and from a reload), so `increase()` sees
the first rollback, the first failed delivery and the first invalid event."""

from __future__ import annotations

from pathlib import Path

from rolloutd.adapters.cdc.debezium import CDC_REJECTION_REASONS
from rolloutd.app.service import Service
from rolloutd.config import load_config
from rolloutd.core.events import REJECTION_REASONS

ROLLOUT = """
  - name: {name}
    flag: {name}_flag
    steps: [{{percent: 5, hold: 1h}}, {{percent: 100}}]
    triggers:
      - {{name: errors, metric: error_rate, window: 30s, op: ">", threshold: 0.1}}
      - {{name: slow, metric: latency_p99, window: 30s, op: ">", threshold: 500, action: pause}}
"""
MIGRATION = """
migrations:
  - name: orders-split
    rollout: co
    source: {topic: db.public.orders, table: public.orders}
    target: {topic: db.public.orders_v2, table: public.orders_v2}
    key: [id]
    columns: {id: id}
flag_table: {topic: db.public.feature_flags, key_column: name, percent_column: pct}
"""
STATUSES = ("ok", "retry", "dropped", "failed")
KINDS = ("percent", "phase", "trigger", "alert", "refused", "config", "flag", "breaker")


def config_text(tmp: Path, rollouts: list[str], notifiers: list[str]) -> str:
    hooks = "".join(
        f'  - {{name: {n}, type: webhook, url: "http://127.0.0.1:9/{n}"}}\n' for n in notifiers
    )
    return (
        "rollouts:"
        + "".join(ROLLOUT.format(name=n) for n in rollouts)
        + MIGRATION
        + 'sources:\n  kafka: {bootstrap_servers: "127.0.0.1:9"}\n'
        + '  mqtt: {url: "mqtt://127.0.0.1:9", topics: [t]}\n'
        + f'state: {{path: "{tmp / "s.db"}"}}\n'
        + f"alerts:\n{hooks}"
    )


def service(tmp_path: Path, rollouts: list[str], notifiers: list[str]) -> tuple[Service, Path]:
    path = tmp_path / "rolloutd.yaml"
    path.write_text(config_text(tmp_path, rollouts, notifiers))
    return Service(load_config(path), config_path=path), path


def value(svc: Service, name: str, **labels: str) -> float | None:
    return svc.registry.get_sample_value(name, labels)


async def test_every_known_counter_series_is_zero_before_anything_happened(
    tmp_path: Path,
) -> None:
    svc, _ = service(tmp_path, ["co"], ["team", "oncall"])
    try:
        assert value(svc, "rolloutd_rollbacks_total", rollout="co", trigger="errors") == 0.0
        for notifier in ("team", "oncall"):
            for status in STATUSES:
                sent = value(svc, "rolloutd_alerts_sent_total", notifier=notifier, status=status)
                assert sent == 0.0, (notifier, status)
        for source in ("kafka", "mqtt"):
            assert value(svc, "rolloutd_events_total", source=source) == 0.0
            for reason in (*REJECTION_REASONS, "empty", "too_large"):
                invalid = value(svc, "rolloutd_events_invalid_total", source=source, reason=reason)
                assert invalid == 0.0, (source, reason)
        assert value(svc, "rolloutd_events_total", source="cdc") == 0.0
        for reason in CDC_REJECTION_REASONS:
            assert value(svc, "rolloutd_events_invalid_total", source="cdc", reason=reason) == 0.0
        for kind in KINDS:
            assert value(svc, "rolloutd_decisions_total", kind=kind) is not None, kind
        assert value(svc, "rolloutd_decisions_total", kind="refused") == 0.0
        assert value(svc, "rolloutd_flag_drift_total", rollout="co") == 0.0
        for kind in ("missing", "extra", "mismatch"):
            failures = value(
                svc, "rolloutd_data_validation_failures_total", migration="orders-split", kind=kind
            )
            assert failures == 0.0, kind
    finally:
        svc.store.close()


async def test_counted_values_replace_the_zeros(tmp_path: Path) -> None:
    svc, _ = service(tmp_path, ["co"], ["team"])
    try:
        svc.pipeline.ingest("mqtt", [b"{not json", b"[1]"], 1_800_000_000.0)
        counted = value(svc, "rolloutd_events_invalid_total", source="mqtt", reason="bad_json")
        assert counted == 1.0
        not_object = value(svc, "rolloutd_events_invalid_total", source="mqtt", reason="not_object")
        assert not_object == 1.0
        assert value(svc, "rolloutd_events_invalid_total", source="kafka", reason="bad_json") == 0
    finally:
        svc.store.close()


async def test_a_reload_creates_the_series_of_new_rollouts_and_notifiers(tmp_path: Path) -> None:
    svc, path = service(tmp_path, ["co"], ["team"])
    try:
        assert value(svc, "rolloutd_rollbacks_total", rollout="search", trigger="errors") is None
        path.write_text(config_text(tmp_path, ["co", "search"], ["team", "pager"]))
        assert svc.reload(path)
        assert value(svc, "rolloutd_rollbacks_total", rollout="search", trigger="errors") == 0.0
        assert value(svc, "rolloutd_flag_drift_total", rollout="search") == 0.0
        for status in STATUSES:
            sent = value(svc, "rolloutd_alerts_sent_total", notifier="pager", status=status)
            assert sent == 0.0, status
        assert value(svc, "rolloutd_rollbacks_total", rollout="co", trigger="errors") == 0.0
    finally:
        svc.store.close()


JUDGED = """
  - name: co
    flag: co_flag
    steps: [{percent: 5, hold: 1h}, {percent: 100}]
    triggers:
      - {name: worse, metric: error_rate, judge: {alpha: 0.05}, min_samples: 100}
"""


async def test_a_judge_exports_its_evidence_per_trigger(tmp_path: Path) -> None:
    path = tmp_path / "rolloutd.yaml"
    path.write_text(f'rollouts:{JUDGED}state: {{path: "{tmp_path / "s.db"}"}}\n')
    svc = Service(load_config(path), config_path=path)
    try:
        now = 1_800_000_000.0
        events = [
            b'{"ts": %d, "type": "requests", "rollout": "co", "cohort": "%s", "count": %d, '
            b'"errors": %d}' % (now + i, cohort, n, errors)
            for i in range(60)
            for cohort, n, errors in ((b"canary", 50, 5), (b"control", 950, 10))
        ]
        svc.pipeline.ingest("mqtt", events, now + 60)
        svc.pipeline.tick(now + 61)  # the bucket closes: the judge reads it
        labels = {"rollout": "co", "trigger": "worse"}
        e_value = value(svc, "rolloutd_judge_e_value", **labels)
        assert e_value is not None
        assert e_value >= 20.0  # 10% errors on the canary against 1% on control
        assert value(svc, "rolloutd_trigger_value", **labels) == e_value
        p_value = value(svc, "rolloutd_judge_p_value", **labels)
        assert p_value is not None
        assert p_value <= 1 / e_value
        low, estimate, high = (
            value(svc, "rolloutd_judge_effect", **labels, point=p)
            for p in ("lower", "estimate", "upper")
        )
        assert low is not None
        assert estimate is not None
        assert high is not None
        assert 1.0 < low <= estimate <= high
        assert (
            value(svc, "rolloutd_judge_samples", **labels, cohort="canary") == 2950
        )  # not the first:
        # it came before the rollout started (0%: no split, the judge takes nothing)
        assert value(svc, "rolloutd_judge_samples", **labels, cohort="control") == 57000
        srm = {"rollout": "co", "trigger": "worse:srm"}
        assert value(svc, "rolloutd_judge_e_value", **srm) is not None
    finally:
        svc.store.close()
