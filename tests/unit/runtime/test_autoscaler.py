"""The cpu/qps autoscaler's arithmetic: HPA's rule, its tolerance and clamping, the sliding
windows, and the patience before scaling down."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from funcmesh.model.function import Scaling
from funcmesh.runtime.autoscaler import (
    MIN_SPAN_S,
    Autoscaler,
    HighestRecent,
    RateWindow,
    Sample,
    desired_instances,
    read_cpu_seconds,
)

CPU_50 = Scaling(max_scale=10, metric="cpu", target=50.0, scale_to_zero_after_s=5.0)
QPS_20 = Scaling(max_scale=4, metric="qps", target=20.0, scale_to_zero_after_s=5.0)


@pytest.mark.parametrize(
    ("load", "target", "current", "bounds", "expected"),
    [
        (100.0, 50.0, 1, (0, 10), 2),  # one instance at a full core, target half a core
        (95.0, 50.0, 1, (0, 10), 2),
        (100.0, 50.0, 2, (0, 10), 2),  # on target
        (109.0, 50.0, 2, (0, 10), 2),  # 9 % above: within the tolerance, no third instance
        (111.0, 50.0, 2, (0, 10), 3),  # 11 % above: ceil(2.22)
        (91.0, 10.0, 10, (0, 10), 10),  # 9 % below: within the tolerance, nothing stops
        (89.0, 10.0, 10, (0, 10), 9),  # 11 % below: ceil(8.9)
        (80.0, 50.0, 3, (0, 10), 2),
        (1000.0, 10.0, 1, (0, 4), 4),  # clamped to max-scale
        (0.0, 10.0, 0, (2, 5), 2),  # clamped to min-scale
        (0.0, 10.0, 3, (0, 5), 0),  # no load: scale to zero
        (1.1, 0.1, 0, (0, 100), 11),  # 11.000000000000002 is 11 instances, not 12
        (12.0, 5.0, 9, (0, 10), 3),  # current above max (lowered): the rule decides
    ],
)
def test_desired_is_ceil_of_load_over_target_with_tolerance_and_bounds(
    load: float, target: float, current: int, bounds: tuple[int, int], expected: int
) -> None:
    low, high = bounds
    desired = desired_instances(
        load=load, target=target, current=current, min_scale=low, max_scale=high
    )
    assert desired == expected


def test_rate_window_spans_the_last_window_only() -> None:
    window = RateWindow(window_s=2.0)
    window.add(0.0, 0.0)
    assert window.rate() is None  # one sample
    window.add(MIN_SPAN_S / 2, 5.0)
    assert window.rate() is None  # too short to mean anything
    for tick in range(1, 13):  # 10 units/s for 3 s
        window.add(tick * 0.25, tick * 2.5)
    assert window.rate() == pytest.approx(10.0)
    for tick in range(13, 25):  # then nothing more for 3 s
        window.add(tick * 0.25, 30.0)
    assert window.rate() == 0.0  # the 10/s are out of the window


def test_rate_window_never_reports_a_negative_rate() -> None:
    window = RateWindow()
    window.add(0.0, 10.0)
    window.add(1.0, 4.0)
    assert window.rate() == 0.0


def test_highest_recent_holds_a_count_for_hold_s() -> None:
    recent = HighestRecent()
    assert recent.add(0.0, 5, hold_s=2.0) == 5
    assert recent.add(1.0, 3, hold_s=2.0) == 5
    assert recent.add(2.0, 1, hold_s=2.0) == 5  # 5 was added exactly hold_s ago
    assert recent.add(2.5, 1, hold_s=2.0) == 3
    assert recent.add(3.5, 0, hold_s=2.0) == 1
    assert recent.add(3.6, 4, hold_s=2.0) == 4  # up at once
    assert recent.add(10.0, 0, hold_s=0.0) == 0


def cpu_samples(
    autoscaler: Autoscaler, scaling: Scaling, *, cores: dict[str, float], seconds: float, at: float
) -> tuple[float, int, int]:
    """Feed 4 samples/s of pods using ``cores`` each; returns (time, last desired, last keep)."""
    used = dict.fromkeys(cores, 0.0)
    desired = keep = -1
    for _ in range(int(seconds * 4)):
        at += 0.25
        used = {pod: used.get(pod, 0.0) + 0.25 * share for pod, share in cores.items()}
        sample = Sample(at=at, instances=len(cores), cpu_seconds=used)
        recommendation = autoscaler.observe(sample, scaling)
        desired, keep = recommendation.desired, recommendation.keep
    return at, desired, keep


def test_cpu_one_busy_instance_against_a_half_core_target_wants_two() -> None:
    autoscaler = Autoscaler()
    first = autoscaler.observe(Sample(at=0.0, instances=1, cpu_seconds={"a": 0.0}), CPU_50)
    assert (first.desired, first.per_instance) == (1, None)  # nothing measured yet: as it is

    at, desired, _ = cpu_samples(autoscaler, CPU_50, cores={"a": 1.0}, seconds=1, at=0.0)
    assert desired == 2
    # the second instance takes no calls (one serial caller): still 100 % over 2 x 50 %
    _, desired, _ = cpu_samples(autoscaler, CPU_50, cores={"a": 1.0, "b": 0.0}, seconds=3, at=at)
    assert desired == 2
    summary = autoscaler.observe(
        Sample(at=at + 3.25, instances=2, cpu_seconds={"a": 3.25, "b": 0.0}), CPU_50
    ).summary()
    assert summary == {"metric": "cpu", "target": 50.0, "current": 50.0, "desired": 2}


def test_cpu_of_stopped_instances_no_longer_counts() -> None:
    autoscaler = Autoscaler()
    at, desired, _ = cpu_samples(autoscaler, CPU_50, cores={"a": 1.0, "b": 1.0}, seconds=2, at=0)
    assert desired == 4
    _, desired, _ = cpu_samples(autoscaler, CPU_50, cores={"a": 0.25}, seconds=3, at=at)
    assert desired == 1


def qps_sample(autoscaler: Autoscaler, at: float, calls: int, *, instances: int) -> tuple[int, int]:
    recommendation = autoscaler.observe(Sample(at=at, instances=instances, calls=calls), QPS_20)
    return recommendation.desired, recommendation.keep


def test_qps_scales_up_at_once_and_down_only_after_scale_to_zero_after() -> None:
    autoscaler = Autoscaler()
    calls, instances, at = 0, 1, 0.0
    history = []
    while at < 3.0:  # 100 calls/s
        at, calls = at + 0.25, calls + 25
        desired, keep = qps_sample(autoscaler, at, calls, instances=instances)
        instances = max(instances, desired)
        history.append(desired)
    assert history[:2] == [1, 1]  # less than MIN_SPAN_S measured: as it is
    assert history[2] == 4  # 100/s over 20/s each is 5, at most max-scale 4: at once
    stopped = at
    while at < stopped + 2.25:  # the load stops; the 2 s window empties
        at += 0.25
        desired, keep = qps_sample(autoscaler, at, calls, instances=instances)
    assert (desired, keep) == (0, 4)  # no longer needed, but held for scale-to-zero-after
    while desired == 0 and keep > 0:
        at += 0.25
        desired, keep = qps_sample(autoscaler, at, calls, instances=instances)
    assert keep == 0
    # the last sample that still saw calls was at most 2 s after the stop; then 5 s of patience
    assert stopped + 5.0 < at <= stopped + 2.0 + 5.0 + 0.25


def test_a_burst_scales_as_far_as_its_last_half_second_asks() -> None:
    autoscaler = Autoscaler()
    for step in range(1, 9):  # 2 s without calls
        qps_sample(autoscaler, step * 0.25, 0, instances=1)
    assert qps_sample(autoscaler, 2.25, 25, instances=1)[0] == 1  # 12.5/s over 2 s: no change
    # 25/s over 2 s says "more"; 100/s over the last 0.5 s says how many: 5, at most max 4
    assert qps_sample(autoscaler, 2.5, 50, instances=1)[0] == 4


def test_a_noisy_short_window_alone_starts_nothing() -> None:
    autoscaler = Autoscaler()
    calls, desired = 0, []
    for step in range(1, 25):  # 20 calls/s, exactly the target, then 3 extra calls at once
        calls += 8 if step == 18 else 5
        desired.append(qps_sample(autoscaler, step * 0.25, calls, instances=1)[0])
    # the last 0.5 s said 26/s (2 instances); the 2 s window 21.5/s, within the tolerance
    assert set(desired[2:]) == {1}


def test_a_new_rule_forgets_the_counts_held_for_the_old_one() -> None:
    autoscaler = Autoscaler()
    for step in range(1, 9):
        qps_sample(autoscaler, step * 0.25, step * 25, instances=1)
    lenient = Scaling(max_scale=4, metric="qps", target=1000.0, scale_to_zero_after_s=5.0)
    recommendation = autoscaler.observe(Sample(at=2.25, instances=4, calls=225), lenient)
    assert (recommendation.desired, recommendation.keep) == (1, 1)


def test_a_concurrency_rule_is_not_the_autoscalers() -> None:
    with pytest.raises(ValueError, match="no cpu or qps rule"):
        Autoscaler().observe(Sample(at=0.0, instances=1), Scaling())


def test_cpu_seconds_of_a_real_process_grow_while_it_works() -> None:
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    # a command name with a space and a parenthesis, as /proc/<pid>/stat shows it
    rename = "open('/proc/self/comm', 'w').write('a) b (c')\n"
    child = subprocess.Popen(
        [sys.executable, "-c", rename + busy + "import sys\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while (used := read_cpu_seconds(child.pid) or 0.0) < 0.3:
            assert time.monotonic() < deadline, used
            time.sleep(0.02)
        assert used < 5.0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
    assert read_cpu_seconds(child.pid) is None  # gone (and reaped)
    assert read_cpu_seconds(os.getpid()) is not None
