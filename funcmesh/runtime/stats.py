"""Call statistics per function: what ``function top`` and the API's ``/metrics`` show.

Recording happens once per call on the hot path, so it is a few integer updates on plain
attributes: no locks, no metric objects. Prometheus reads the numbers only when scraped,
through one collector; percentiles come from a bounded window of recent durations, computed
only when someone asks.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

WINDOW_CALLS = 2048
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LABELS = ("namespace", "function")


class FunctionStats:
    """Counters of one function."""

    __slots__ = (
        "_bucket_counts",
        "_window",
        "calls",
        "cold_starts",
        "duration_sum_s",
        "failures",
        "function",
        "instances",
        "namespace",
    )

    def __init__(self, namespace: str, function: str) -> None:
        self.namespace = namespace
        self.function = function
        self.calls = 0
        self.failures = 0
        self.cold_starts = 0
        self.instances = 0
        self.duration_sum_s = 0.0
        self._bucket_counts = [0] * (len(DURATION_BUCKETS_S) + 1)  # the last one is +Inf
        self._window: deque[float] = deque(maxlen=WINDOW_CALLS)

    def record_call(self, *, ok: bool, duration_s: float) -> None:
        self.calls += 1
        if not ok:
            self.failures += 1
        self.duration_sum_s += duration_s
        self._bucket_counts[bisect.bisect_left(DURATION_BUCKETS_S, duration_s)] += 1
        self._window.append(duration_s)

    def record_cold_start(self) -> None:
        self.cold_starts += 1

    def set_instances(self, count: int) -> None:
        self.instances = count

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """Prometheus ``le`` buckets: counts of calls at or below each bound."""
        total, buckets = 0, []
        for bound, count in zip((*DURATION_BUCKETS_S, math.inf), self._bucket_counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
        return buckets

    def summary(self, *, instances: int) -> dict[str, Any]:
        ordered = sorted(self._window)
        return {
            "calls": self.calls,
            "failures": self.failures,
            "p50_ms": _percentile_ms(ordered, 0.50),
            "p99_ms": _percentile_ms(ordered, 0.99),
            "instances": instances,
            "coldStarts": self.cold_starts,
        }


class Metrics:
    """Every function's statistics, exported as ``funcmesh_function_*`` when scraped."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._stats: dict[tuple[str, str], FunctionStats] = {}
        registry.register(self)  # a collector: Prometheus calls collect() when scraped

    def stats_for(self, namespace: str, function: str) -> FunctionStats:
        stats = self._stats.get((namespace, function))
        if stats is None:
            stats = self._stats[(namespace, function)] = FunctionStats(namespace, function)
        return stats

    def forget(self, namespace: str, function: str) -> None:
        self._stats.pop((namespace, function), None)

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily("funcmesh_function_calls", "Calls answered", labels=LABELS)
        failures = CounterMetricFamily(
            "funcmesh_function_failures", "Calls answered with an error", labels=LABELS
        )
        cold_starts = CounterMetricFamily(
            "funcmesh_function_cold_starts", "Instances started", labels=LABELS
        )
        instances = GaugeMetricFamily(
            "funcmesh_function_instances", "Instances running", labels=LABELS
        )
        duration = HistogramMetricFamily(
            "funcmesh_function_duration_seconds",
            "Time from taking an instance to the end of the answer",
            labels=LABELS,
        )
        for stats in list(self._stats.values()):
            labels = [stats.namespace, stats.function]
            calls.add_metric(labels, stats.calls)
            failures.add_metric(labels, stats.failures)
            cold_starts.add_metric(labels, stats.cold_starts)
            instances.add_metric(labels, stats.instances)
            duration.add_metric(labels, stats.cumulative_buckets(), stats.duration_sum_s)
        yield from (calls, failures, cold_starts, instances, duration)


def _percentile_ms(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))  # nearest rank
    return round(ordered[index] * 1000.0, 3)
