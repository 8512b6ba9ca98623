from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from funcmesh.runtime.stats import FunctionStats, Metrics


def test_summary_and_prometheus_agree() -> None:
    registry = CollectorRegistry()
    stats = FunctionStats(Metrics(registry), "default", "hello")
    for index in range(100):
        stats.record_call(ok=index % 10 != 0, duration_s=(index + 1) / 1000)
    stats.record_cold_start()
    summary = stats.summary(instances=2)
    assert summary["calls"] == 100
    assert summary["failures"] == 10
    assert summary["p50_ms"] == 50.0
    assert summary["p99_ms"] == 99.0
    assert summary["coldStarts"] == 1
    text = generate_latest(registry).decode()
    assert 'funcmesh_function_calls_total{function="hello",namespace="default"} 100.0' in text
    assert 'funcmesh_function_failures_total{function="hello",namespace="default"} 10.0' in text


def test_no_calls_means_no_percentiles() -> None:
    stats = FunctionStats(Metrics(CollectorRegistry()), "default", "idle")
    assert stats.summary(instances=0)["p50_ms"] is None
