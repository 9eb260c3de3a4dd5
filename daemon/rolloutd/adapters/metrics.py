"""Prometheus metrics, read from the daemon's state at scrape time.

Rules: metrics go into an injected `CollectorRegistry` (tests build a fresh one). State
gauges and counters are not updated on the hot path: a collector reads the engine and the
pipeline's counters when Prometheus scrapes, so an event costs nothing extra. Only the
decision latency is observed as it happens (a histogram).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rolloutd.adapters.known_series import KnownSeries
from rolloutd.adapters.status import StatusView
from rolloutd.core.rollout import PHASES
from rolloutd.core.triggers import FIRING, PENDING

TRIGGER_STATE_VALUES = {PENDING: 1.0, FIRING: 2.0}  # anything else is 0 (inactive)
_K = TypeVar("_K", str, tuple[str, str])  # a counter's label values
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class DaemonState:
    """What the collector reads besides the pipeline; the service keeps it current."""

    ready: Callable[[], bool] = lambda: False
    reload_success: bool = True
    consumer_lag: dict[tuple[str, int], int] = field(default_factory=dict)
    alerts_sent: Mapping[tuple[str, str], int] = field(default_factory=dict)
    outbox_pending: Callable[[], int] = lambda: 0
    breakers: Callable[[], Mapping[str, str]] = dict
    migrations: Callable[[], Mapping[str, Mapping[str, float]]] = dict
    known: KnownSeries = field(default_factory=KnownSeries)  # counters exported from 0
    sources: Callable[[], Mapping[str, bool]] = dict  # configured source -> up
    leader: Callable[[], bool] = lambda: True  # this daemon acts (always, with SQLite state)


def _from_zero(counts: Mapping[_K, float], known: tuple[_K, ...]) -> list[tuple[_K, float]]:
    """Every known label set (0 until counted) and every counted one, in label order."""
    keys: list[_K] = sorted(set(known).union(counts))
    return [(key, float(counts[key]) if key in counts else 0.0) for key in keys]


class RolloutdCollector(Collector):
    def __init__(self, pipeline: Callable[[], StatusView], state: DaemonState) -> None:
        self.pipeline = pipeline  # a callable: a reload may swap the pipeline's engine
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._rollouts()
        yield from self._pipeline_counters()
        yield from self._event_fates()
        yield from self._daemon()

    def _rollouts(self) -> Iterator[Metric]:
        engine = self.pipeline().engine
        percent = GaugeMetricFamily(
            "rolloutd_rollout_percent",
            "Flag percent the rollout decided",
            labels=["rollout", "flag"],
        )
        phase = GaugeMetricFamily(
            "rolloutd_rollout_phase",
            "1 for the rollout's current phase",
            labels=["rollout", "phase"],
        )
        state = GaugeMetricFamily(
            "rolloutd_trigger_state",
            "0 inactive, 1 pending, 2 firing",
            labels=["rollout", "trigger"],
        )
        value = GaugeMetricFamily(
            "rolloutd_trigger_value",
            "Last measured value of the trigger's metric",
            labels=["rollout", "trigger"],
        )
        bound = GaugeMetricFamily(
            "rolloutd_trigger_threshold",
            "Bound the trigger compares with (after baseline)",
            labels=["rollout", "trigger"],
        )
        for rollout in engine.rollouts:
            name = rollout.spec.name
            percent.add_metric([name, rollout.spec.flag], rollout.percent)
            for candidate in PHASES:
                phase.add_metric([name, candidate], 1.0 if candidate == rollout.phase else 0.0)
            for trig in rollout.triggers:
                trig.refresh()
                labels = [name, trig.spec.name]
                state.add_metric(labels, TRIGGER_STATE_VALUES.get(trig.state, 0.0))
                if trig.value is not None:
                    value.add_metric(labels, trig.value)
                if trig.bound is not None:
                    bound.add_metric(labels, trig.bound)
        yield from (percent, phase, state, value, bound)
        yield from self._judges()

    def _judges(self) -> Iterator[Metric]:
        """The evidence of judge triggers (and their sample-ratio checks), per trigger."""
        e_value = GaugeMetricFamily(
            "rolloutd_judge_e_value",
            "Judge's e-value (Lambda for proportion and mean); decides at 1/alpha",
            labels=["rollout", "trigger"],
        )
        p_value = GaugeMetricFamily(
            "rolloutd_judge_p_value",
            "Judge's always-valid p-value (the minimum over time of 1/e-value)",
            labels=["rollout", "trigger"],
        )
        effect = GaugeMetricFamily(
            "rolloutd_judge_effect",
            "Effect estimate with its always-valid bounds (rate ratio for counts and the "
            "split, canary minus control for proportion and mean)",
            labels=["rollout", "trigger", "point"],
        )
        samples = GaugeMetricFamily(
            "rolloutd_judge_samples",
            "Requests the judge has seen, by cohort",
            labels=["rollout", "trigger", "cohort"],
        )
        for rollout in self.pipeline().engine.rollouts:
            for trig in rollout.triggers:
                evidence = trig.evidence()
                if evidence is None:
                    continue
                labels = [rollout.spec.name, trig.spec.name]
                e_value.add_metric(labels, evidence.e_value)
                p_value.add_metric(labels, evidence.p_value)
                points = {"estimate": evidence.estimate, "lower": evidence.lower}
                for point, x in {**points, "upper": evidence.upper}.items():
                    if x is not None:
                        effect.add_metric([*labels, point], x)
                for cohort, n in evidence.samples.items():
                    samples.add_metric([*labels, cohort], float(n))
        yield from (e_value, p_value, effect, samples)

    def _pipeline_counters(self) -> Iterator[Metric]:
        stats = self.pipeline().stats
        known = self.state.known
        events = CounterMetricFamily(
            "rolloutd_events", "Valid events taken in, by source", labels=["source"]
        )
        for source, n in _from_zero(stats.events, known.events):
            events.add_metric([source], n)
        invalid = CounterMetricFamily(
            "rolloutd_events_invalid", "Events rejected and skipped", labels=["source", "reason"]
        )
        for (source, reason), n in _from_zero(stats.invalid, known.invalid):
            invalid.add_metric([source, reason], n)
        decisions = CounterMetricFamily(
            "rolloutd_decisions", "Decisions made, by kind", labels=["kind"]
        )
        for kind, n in _from_zero(stats.decisions, known.decisions):
            decisions.add_metric([kind], n)
        rollbacks = CounterMetricFamily(
            "rolloutd_rollbacks",
            "Rollbacks by the trigger that caused them",
            labels=["rollout", "trigger"],
        )
        for (rollout, trigger), n in _from_zero(stats.rollbacks, known.rollbacks):
            rollbacks.add_metric([rollout, trigger], n)
        drift = CounterMetricFamily(
            "rolloutd_flag_drift",
            "Flag table values that disagreed with the decision",
            labels=["rollout"],
        )
        for rollout, n in _from_zero(stats.flag_drift, known.flag_drift):
            drift.add_metric([rollout], n)
        yield from (events, invalid, decisions, rollbacks, drift)

    def _event_fates(self) -> Iterator[Metric]:
        """Events that were valid but failed, or that the engine took and could not use."""
        stats, known = self.pipeline().stats, self.state.known
        failed = CounterMetricFamily(
            "rolloutd_events_failed",
            "Events whose handling raised; each was logged and skipped",
            labels=["source"],
        )
        for source, n in _from_zero(stats.failed, known.failed):
            failed.add_metric([source], n)
        dropped = CounterMetricFamily(
            "rolloutd_events_dropped",
            "Events taken but of no use: too_old (older than every window), unrouted (for no "
            "configured rollout), ignored (a cohort or metric no trigger reads)",
            labels=["source", "reason"],
        )
        for (source, reason), n in _from_zero(stats.dropped, known.dropped):
            dropped.add_metric([source, reason], n)
        yield from (failed, dropped)

    def _daemon(self) -> Iterator[Metric]:
        state = self.state
        yield GaugeMetricFamily("rolloutd_ready", "1 when ready", value=float(state.ready()))
        yield GaugeMetricFamily(
            "rolloutd_leader",
            "1 while this daemon leads (holds the lease, or owns its SQLite file), 0 on standby",
            value=float(state.leader()),
        )
        up = GaugeMetricFamily(
            "rolloutd_source_up",
            "1 while the source is connected and consuming, 0 otherwise",
            labels=["source"],
        )
        for source, connected in sorted(state.sources().items()):
            up.add_metric([source], float(connected))
        yield up
        yield GaugeMetricFamily(
            "rolloutd_config_reload_success",
            "1 if the last config reload succeeded",
            value=float(state.reload_success),
        )
        yield GaugeMetricFamily(
            "rolloutd_outbox_pending",
            "Messages waiting to be published or delivered",
            value=float(state.outbox_pending()),
        )
        lag = GaugeMetricFamily(
            "rolloutd_consumer_lag",
            "Messages behind the partition's end",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(state.consumer_lag.items()):
            lag.add_metric([topic, str(partition)], n)
        sent = CounterMetricFamily(
            "rolloutd_alerts_sent", "Alert deliveries by outcome", labels=["notifier", "status"]
        )
        for (notifier, status), count in _from_zero(state.alerts_sent, state.known.alerts_sent):
            sent.add_metric([notifier, status], count)
        yield from (lag, sent)
        yield from self._breakers_and_migrations()

    def _breakers_and_migrations(self) -> Iterator[Metric]:
        breaker = GaugeMetricFamily(
            "rolloutd_breaker_state",
            "1 for the breaker's current state",
            labels=["breaker", "state"],
        )
        for name, current in sorted(self.state.breakers().items()):
            breaker.add_metric([name, current], 1.0)
        yield breaker
        lag = GaugeMetricFamily(
            "rolloutd_cdc_lag_seconds", "Source commit to target apply", labels=["migration"]
        )
        progress = GaugeMetricFamily(
            "rolloutd_migration_progress_ratio", "Target rows / source rows", labels=["migration"]
        )
        failures = CounterMetricFamily(
            "rolloutd_data_validation_failures",
            "Keys that failed validation",
            labels=["migration", "kind"],
        )
        counted: dict[tuple[str, str], float] = {}
        for name, values in sorted(self.state.migrations().items()):
            if "cdc_lag_seconds" in values:
                lag.add_metric([name], values["cdc_lag_seconds"])
            if "progress" in values:
                progress.add_metric([name], values["progress"])
            for kind in ("missing", "extra", "mismatch"):
                if kind in values:
                    counted[(name, kind)] = values[kind]
        for (name, kind), n in _from_zero(counted, self.state.known.validation):
            failures.add_metric([name, kind], n)
        yield from (lag, progress, failures)


def build_registry(
    pipeline: Callable[[], StatusView], state: DaemonState
) -> tuple[CollectorRegistry, Histogram, Histogram]:
    """A registry with the collector, and the decision-latency and flag-confirmation
    histograms."""
    registry = CollectorRegistry()
    registry.register(RolloutdCollector(pipeline, state))
    latency = Histogram(
        "rolloutd_decision_latency_seconds",
        "From the time of the event that caused a decision to the decision",
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    confirm = Histogram(
        "rolloutd_flag_confirmation_delay_seconds",
        "From a percent decision to the flag table holding it (seen through CDC)",
        buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
        registry=registry,
    )
    return registry, latency, confirm
