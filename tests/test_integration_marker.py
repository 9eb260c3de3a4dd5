"""The unit/integration split: what needs a process is integration, and nothing else starts one."""

from __future__ import annotations

import importlib

import pytest

from integration import TESTS, is_integration


@pytest.mark.parametrize(
    ("module", "test", "fixtures"),
    [
        ("test_brokers.py", "any_test", ["tansu"]),  # a broker fixture
        ("test_deploy.py", "test_dashboard_queries_parse_with_promtool", []),  # via helpers
        ("test_deploy.py", "test_unit_passes_systemd_analyze_verify", []),
        # A fixture imported from another test module, which starts the daemon.
        (
            "test_kafka_start.py",
            "test_a_spike_produced_as_soon_as_ready_is_counted_in_full",
            ["daemon_factory"],
        ),
    ],
)
def test_a_test_that_starts_a_process_is_integration(
    module: str, test: str, fixtures: list[str]
) -> None:
    assert is_integration(TESTS / module, test, fixtures)


@pytest.mark.parametrize(
    ("module", "test"),
    [
        ("test_windows.py", "test_request_series_matches_reference"),
        ("test_deploy.py", "test_dashboard_queries_use_only_contract_metrics_and_labels"),
        ("test_metrics.py", "test_counted_values_replace_the_zeros"),
    ],
)
def test_a_test_that_starts_nothing_is_a_unit_test(module: str, test: str) -> None:
    assert not is_integration(TESTS / module, test, ["tmp_path"])


def test_a_unit_test_that_starts_a_process_anyway_is_refused() -> None:
    # The name is hidden from the classifier, so this test runs as a unit test.
    hidden = importlib.import_module("sub" + "process")
    with pytest.raises(RuntimeError, match="not marked integration"):
        hidden.run(["true"], check=True)
