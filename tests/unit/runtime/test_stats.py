from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from funcmesh.runtime.stats import FunctionStats, Metrics


def test_summary_and_prometheus_agree() -> None:
    registry = CollectorRegistry()
    stats = Metrics(registry).stats_for("default", "hello")
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
    stats = FunctionStats("default", "idle")
    assert stats.summary(instances=0)["p50_ms"] is None


def test_histogram_buckets_are_cumulative_and_forgotten_functions_vanish() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    stats = metrics.stats_for("default", "hello")
    for duration_s in (0.0005, 0.003, 0.003, 40.0):
        stats.record_call(ok=True, duration_s=duration_s)
    stats.set_instances(2)
    text = generate_latest(registry).decode()
    prefix = 'funcmesh_function_duration_seconds_bucket{function="hello",le='
    assert prefix + '"0.001",namespace="default"} 1.0' in text
    assert prefix + '"0.005",namespace="default"} 3.0' in text
    assert prefix + '"30.0",namespace="default"} 3.0' in text
    assert prefix + '"+Inf",namespace="default"} 4.0' in text
    assert 'funcmesh_function_instances{function="hello",namespace="default"} 2.0' in text
    metrics.forget("default", "hello")
    assert "hello" not in generate_latest(registry).decode()
