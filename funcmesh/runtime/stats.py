"""Call statistics per function: what ``function top`` and the API's ``/metrics`` show.

Recording happens once per call on the hot path, so it is a few attribute updates and one
histogram observation on a pre-bound Prometheus child; percentiles come from a bounded window
of recent durations, computed only when someone asks.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

WINDOW_CALLS = 2048
DURATION_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """The daemon's Prometheus metrics for functions, in one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("namespace", "function")
        self.calls = Counter("funcmesh_function_calls", "Calls answered", labels, registry=registry)
        self.failures = Counter(
            "funcmesh_function_failures", "Calls answered with an error", labels, registry=registry
        )
        self.duration = Histogram(
            "funcmesh_function_duration_seconds",
            "Time from taking an instance to the end of the answer",
            labels,
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.cold_starts = Counter(
            "funcmesh_function_cold_starts", "Instances started", labels, registry=registry
        )
        self.instances = Gauge(
            "funcmesh_function_instances", "Instances running", labels, registry=registry
        )

    def forget(self, namespace: str, function: str) -> None:
        for metric in (self.calls, self.failures, self.duration, self.cold_starts, self.instances):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, function)


class FunctionStats:
    """Counters of one function, bound to its metric children."""

    def __init__(self, metrics: Metrics, namespace: str, function: str) -> None:
        self.calls = 0
        self.failures = 0
        self.cold_starts = 0
        self._window: deque[float] = deque(maxlen=WINDOW_CALLS)
        self._calls = metrics.calls.labels(namespace, function)
        self._failures = metrics.failures.labels(namespace, function)
        self._duration = metrics.duration.labels(namespace, function)
        self._cold_starts = metrics.cold_starts.labels(namespace, function)
        self._instances = metrics.instances.labels(namespace, function)

    def record_call(self, *, ok: bool, duration_s: float) -> None:
        self.calls += 1
        self._calls.inc()
        if not ok:
            self.failures += 1
            self._failures.inc()
        self._window.append(duration_s)
        self._duration.observe(duration_s)

    def record_cold_start(self) -> None:
        self.cold_starts += 1
        self._cold_starts.inc()

    def set_instances(self, count: int) -> None:
        self._instances.set(count)

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


def _percentile_ms(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))  # nearest rank
    return round(ordered[index] * 1000.0, 3)
