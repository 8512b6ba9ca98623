"""How many instances a function with a cpu or qps rule wants, Kubernetes HPA style.

The pool's sweep hands ``Autoscaler.observe`` one ``Sample`` per sweep: the CPU seconds each
instance's process has used so far (``read_cpu_seconds``) or the calls the function has answered
so far. The rate over the last ``WINDOW_S`` is the load (percent of one core, or calls/s), and

    desired = ceil(load / target), clamped to [min-scale, max-scale]

except that the count stays as it is while the load per instance is within ``TOLERANCE`` of the
target, so small wobbles neither start nor stop instances.

Scaling up follows ``desired`` at once. From the moment the window wants more instances, and for
one window's time, the load of the last ``BURST_WINDOW_S`` may ask for still more: a sudden burst
shows there long before it fills the window (Knative's panic mode does the same). The long window
decides whether to scale up, the short one how far; noise in the short window alone starts
nothing. Scaling down follows the highest ``desired`` of the last ``scale-to-zero-after`` (the
patience the idle reaping has), which is HPA's scale-down stabilization window.

Concurrency rules need none of this: calls that find no instance with room start one
(``funcmesh.runtime.pool``). Only ``read_cpu_seconds`` reads anything; the rest is arithmetic on
the samples it is given, and nothing here starts or stops an instance.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from funcmesh.model.function import Scaling

WINDOW_S = 2.0
BURST_WINDOW_S = 0.5
MIN_SPAN_S = 0.5  # a rate over less is mostly the 10 ms granularity of CPU time, or one call
TOLERANCE = 0.1
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def read_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads, waited-for children) process ``pid`` has used.

    None when the process is gone. Reading ``/proc/<pid>/stat`` is a read of a small in-memory
    file, cheap enough for the event loop at a few samples per second.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    # Field 2, the command, is in parentheses and may hold spaces: count fields after it.
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS_PER_S


def desired_instances(
    *, load: float, target: float, current: int, min_scale: int, max_scale: int
) -> int:
    """HPA's rule: ``ceil(load / target)`` clamped to [min_scale, max_scale], or ``current``
    while ``load / (current * target)`` is within ``TOLERANCE`` of 1."""
    if current > 0 and abs(load / (current * target) - 1.0) <= TOLERANCE:
        wanted = current
    else:
        wanted = math.ceil(load / target - 1e-9)  # 2.0000000001 targets are 2 instances, not 3
    return max(min_scale, min(max_scale, wanted))


class RateWindow:
    """The rate of a growing counter (CPU seconds, answered calls) over the last ``window_s``."""

    __slots__ = ("_samples", "_window_s")

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, at: float, value: float) -> None:
        samples = self._samples
        samples.append((at, value))
        # Keep the last sample at or before the window's start, so the rate spans the window.
        while len(samples) > 2 and samples[1][0] <= at - self._window_s:
            samples.popleft()

    def rate(self, over_s: float | None = None) -> float | None:
        """Units per second over the window, or over the last ``over_s`` of it (from the newest
        sample back to the last one at or before ``over_s`` earlier); None over less than
        ``MIN_SPAN_S``."""
        samples = self._samples
        if len(samples) < 2:
            return None
        (begin, first), (end, last) = samples[0], samples[-1]
        if over_s is not None:
            begin, first = next(
                ((at, value) for at, value in reversed(samples) if at <= end - over_s),
                (begin, first),
            )
        if end - begin < MIN_SPAN_S:
            return None
        return max(0.0, last - first) / (end - begin)


class HighestRecent:
    """The highest count added in the last ``hold_s`` (a sliding-window maximum, O(1) each)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: deque[tuple[float, int]] = deque()  # counts fall from front to back

    def add(self, at: float, count: int, *, hold_s: float) -> int:
        counts = self._counts
        while counts and counts[-1][1] <= count:
            counts.pop()  # never the highest again: a higher or equal count is newer
        counts.append((at, count))
        while counts[0][0] < at - hold_s:
            counts.popleft()
        return counts[0][1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """What the sweep saw at ``at``: instances not draining, CPU seconds used so far by each
    one it could read (by pod name; cpu rules only), calls answered so far (qps rules only)."""

    at: float
    instances: int
    cpu_seconds: Mapping[str, float] = field(default_factory=dict)
    calls: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """Start instances up to ``desired``; stop idle ones beyond ``keep`` (>= ``desired``).

    ``per_instance`` is the load divided by the instances (percent of a core, or calls/s), to
    compare with ``target``; None until a window has been measured.
    """

    metric: str
    target: float
    per_instance: float | None
    desired: int
    keep: int

    def summary(self) -> dict[str, Any]:
        per_instance = None if self.per_instance is None else round(self.per_instance, 2)
        return {
            "metric": self.metric,
            "target": self.target,
            "current": per_instance,
            "desired": self.desired,
        }


class Autoscaler:
    """The samples of one function with a cpu or qps rule, and what they recommend."""

    def __init__(self, *, window_s: float = WINDOW_S) -> None:
        self._window_s = window_s
        self._cpu: dict[str, RateWindow] = {}
        self._calls = RateWindow(window_s)
        self._recent = HighestRecent()
        self._rule: tuple[str, float | None] | None = None
        self._burst_until = -math.inf  # the short window may scale up until then

    def observe(self, sample: Sample, scaling: Scaling) -> Recommendation:
        """Take ``sample`` in and recommend counts under ``scaling`` (metric cpu or qps)."""
        if scaling.target is None or scaling.metric not in ("cpu", "qps"):
            raise ValueError(f"no cpu or qps rule to scale on: {scaling}")
        if self._rule != (scaling.metric, scaling.target):
            self._rule, self._recent = (scaling.metric, scaling.target), HighestRecent()
        load, burst = self._cpu_load(sample) if scaling.metric == "cpu" else self._qps_load(sample)
        desired = _desired(load, sample.instances, scaling)
        if desired > sample.instances:
            self._burst_until = sample.at + self._window_s
        if sample.at <= self._burst_until:
            desired = max(desired, _desired(burst, sample.instances, scaling))
        return Recommendation(
            metric=scaling.metric,
            target=scaling.target,
            per_instance=None if load is None else load / max(1, sample.instances),
            desired=desired,
            keep=self._recent.add(sample.at, desired, hold_s=scaling.scale_to_zero_after_s),
        )

    def _cpu_load(self, sample: Sample) -> tuple[float | None, float | None]:
        """Percent of one core used by all instances together, over the window and over the
        burst window; None while no instance is measured."""
        for pod in self._cpu.keys() - sample.cpu_seconds.keys():
            del self._cpu[pod]  # stopped
        windows = []
        for pod, seconds in sample.cpu_seconds.items():
            window = self._cpu.setdefault(pod, RateWindow(self._window_s))
            window.add(sample.at, seconds)
            windows.append(window)
        return _total_percent(windows, None, sample), _total_percent(
            windows, BURST_WINDOW_S, sample
        )

    def _qps_load(self, sample: Sample) -> tuple[float | None, float | None]:
        """Calls answered per second, over the window and over the burst window."""
        self._calls.add(sample.at, sample.calls)
        return self._calls.rate(), self._calls.rate(BURST_WINDOW_S)


def _total_percent(windows: list[RateWindow], over_s: float | None, sample: Sample) -> float | None:
    rates = [rate for window in windows if (rate := window.rate(over_s)) is not None]
    if not rates and sample.instances > 0:
        return None
    return 100.0 * sum(rates)


def _desired(load: float | None, current: int, scaling: Scaling) -> int:
    """``desired_instances`` under ``scaling``; the current count while nothing is measured."""
    assert scaling.target is not None
    if load is None:
        return max(scaling.min_scale, min(scaling.max_scale, current))
    return desired_instances(
        load=load,
        target=scaling.target,
        current=current,
        min_scale=scaling.min_scale,
        max_scale=scaling.max_scale,
    )
