"""Prometheus counters of flag delivery, read from the board at scrape time.

Rules: like every rolloutd counter, each label set the config makes possible is exported
at 0 from the start (each served endpoint with each status; each driven rollout with both
exposure cohorts while the Unleash API is on), so `increase()` sees the first one.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from rolloutd.adapters.delivery import unleash
from rolloutd.adapters.delivery.routes import DeliveryRoutes


class DeliveryCollector(Collector):
    def __init__(self, routes: DeliveryRoutes) -> None:
        self.routes = routes

    def collect(self) -> Iterator[Metric]:
        stats = self.routes.board.stats
        requests = CounterMetricFamily(
            "rolloutd_delivery_requests",
            "Requests to the flag delivery endpoints, by endpoint and outcome",
            labels=["endpoint", "status"],
        )
        known = set(self.routes.outcomes())
        for key in sorted(known | stats.requests.keys()):
            requests.add_metric(list(key), float(stats.requests.get(key, 0)))
        yield requests
        if self.routes.unleash_tokens is not None:
            exposures = CounterMetricFamily(
                "rolloutd_exposures",
                "Flag evaluations the Unleash SDKs reported, by rollout and cohort "
                "(canary: enabled, control: disabled)",
                labels=["rollout", "cohort"],
            )
            rollouts = {e.rollout for e in self.routes.board.entries.values()}
            cohorts = (unleash.ENABLED_COHORT, unleash.DISABLED_COHORT)
            seen = {(r, c) for r in rollouts for c in cohorts} | stats.exposures.keys()
            for key in sorted(seen):
                exposures.add_metric(list(key), float(stats.exposures.get(key, 0)))
            yield exposures
        if self.routes.board.file is not None:
            writes = CounterMetricFamily(
                "rolloutd_flagd_file_writes",
                "Writes of the flagd flag-definition file, by result",
                labels=["result"],
            )
            for result in ("ok", "failed"):
                writes.add_metric([result], float(stats.file_writes.get(result, 0)))
            yield writes
