"""One destination's members: outlier detection, connection limits, updates and their errors."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

import pytest

from funcmesh.errors import Unavailable
from funcmesh.mesh.endpoint_sets import EndpointSet, NoHealthyUpstream, Overflow
from funcmesh.model.istio_destinations import (
    ConnectionPool,
    LoadBalancer,
    OutlierDetection,
    TrafficPolicy,
)

A, B, C, D = "pod-a", "pod-b", "pod-c", "pod-d"


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def endpoint_set(
    *,
    detection: OutlierDetection | None = None,
    pool: ConnectionPool | None = None,
    members: Sequence[str] = (A, B, C),
    simple: str = "ROUND_ROBIN",
) -> tuple[EndpointSet[str], Clock]:
    clock = Clock()
    endpoints: EndpointSet[str] = EndpointSet(
        TrafficPolicy(
            load_balancer=LoadBalancer(simple=simple),
            outlier_detection=detection,
            connection_pool=pool or ConnectionPool(),
        ),
        clock=clock,
        rng=random.Random(5),
        label="reviews.default",
    )
    endpoints.update(members)
    return endpoints, clock


def feed(endpoints: EndpointSet[str], member: str, statuses: Sequence[int]) -> None:
    """Route calls until ``member`` takes one, answer it with the next status; others say 200."""
    for status in statuses:
        for _ in range(20):
            chosen = endpoints.choose()
            if chosen == member:
                break
            endpoints.finished(chosen, latency_s=0.001, status=200)
        else:
            raise AssertionError(f"{member} is no longer chosen")
        endpoints.finished(member, latency_s=0.001, status=status)


def choices(endpoints: EndpointSet[str], count: int = 30) -> set[str]:
    chosen = set()
    for _ in range(count):
        member = endpoints.choose()
        chosen.add(member)
        endpoints.finished(member, latency_s=0.001, status=200)
    return chosen


EVERY_100 = OutlierDetection(max_ejection_percent=100)


@pytest.mark.parametrize(
    ("detection", "statuses", "ejected"),
    [
        (EVERY_100, [500] * 5, True),  # consecutive5xxErrors defaults to 5
        (EVERY_100, [500] * 4, False),
        (EVERY_100, [500] * 4 + [200] + [500] * 4, False),  # a success resets the count
        (EVERY_100, [500, 0, 503, 599, 502], True),  # a failed connection counts as a 5xx
        (EVERY_100, [404] * 10, False),  # the caller's fault, not the member's
        (OutlierDetection(consecutive_5xx_errors=0, max_ejection_percent=100), [500] * 9, False),
        (OutlierDetection(consecutive_5xx_errors=2, max_ejection_percent=100), [500] * 2, True),
        (
            OutlierDetection(consecutive_gateway_errors=3, consecutive_5xx_errors=0),
            [502, 0, 504],
            True,
        ),
        (
            OutlierDetection(consecutive_gateway_errors=3, consecutive_5xx_errors=0),
            [502, 503, 500, 502, 503],  # a 500 is no gateway error and breaks the run
            False,
        ),
        (
            OutlierDetection(consecutive_gateway_errors=3, consecutive_5xx_errors=0),
            [503, 503, 429, 503],
            False,
        ),
    ],
)
def test_a_member_is_ejected_after_consecutive_errors(
    detection: OutlierDetection, statuses: list[int], ejected: bool
) -> None:
    endpoints, _ = endpoint_set(detection=detection)
    feed(endpoints, A, statuses)
    assert endpoints.ejected() == ([A] if ejected else [])
    assert (A in choices(endpoints)) is not ejected


def test_without_outlier_detection_nobody_is_ejected() -> None:
    endpoints, _ = endpoint_set(detection=None)
    feed(endpoints, A, [503] * 50)
    assert endpoints.ejected() == []


def eject(endpoints: EndpointSet[str], clock: Clock, member: str = A) -> float:
    """Eject ``member`` now and return how long it stays out, to a quarter of a second."""
    feed(endpoints, member, [500] * 5)
    assert endpoints.ejected() == [member]
    start_s, quarters = clock.now_s, 0
    while member in endpoints.ejected():
        quarters += 1
        clock.now_s = start_s + quarters * 0.25  # exact in binary: no drift
    return quarters * 0.25


@pytest.mark.parametrize(
    ("base_s", "durations_s"),
    [
        (30.0, [30.0, 60.0, 90.0]),  # baseEjectionTime times the number of ejections
        (100.0, [100.0, 200.0, 300.0, 300.0]),  # at most 300 s, Envoy's max_ejection_time
        (400.0, [400.0, 400.0]),  # ... or baseEjectionTime when longer
    ],
)
def test_ejection_time_grows_with_each_ejection(base_s: float, durations_s: list[float]) -> None:
    detection = OutlierDetection(base_ejection_time_s=base_s, max_ejection_percent=100)
    endpoints, clock = endpoint_set(detection=detection)
    assert [eject(endpoints, clock) for _ in durations_s] == durations_s


@pytest.mark.parametrize(
    ("healthy_for_s", "next_duration_s"),
    [(0.0, 60.0), (9.9, 60.0), (10.0, 30.0), (45.0, 30.0)],
)
def test_the_ejection_multiplier_wears_off_one_step_per_healthy_interval(
    healthy_for_s: float, next_duration_s: float
) -> None:
    endpoints, clock = endpoint_set(detection=OutlierDetection(interval_s=10.0))
    assert eject(endpoints, clock) == 30.0
    clock.now_s += healthy_for_s
    assert eject(endpoints, clock) == next_duration_s


@pytest.mark.parametrize(
    ("members", "percent", "ejected"),
    [
        (3, 10, 1),  # Istio's default 10 %: still one, Envoy ejects at least one
        (3, 0, 1),
        (3, 34, 1),
        (3, 67, 2),
        (3, 100, 3),
        (10, 20, 2),
        (10, 25, 2),
    ],
)
def test_max_ejection_percent_bounds_the_ejected_members(
    members: int, percent: int, ejected: int
) -> None:
    names = [f"pod-{i}" for i in range(members)]
    detection = OutlierDetection(max_ejection_percent=percent)
    endpoints, _ = endpoint_set(detection=detection, members=names)
    for name in names:
        feed(endpoints, name, [500] * 5)  # every member fails, not every one may go
    assert len(endpoints.ejected()) == ejected
    kept = {name for name in names if name not in endpoints.ejected()}
    if kept:
        assert choices(endpoints, 10 * members) == kept
    else:
        with pytest.raises(NoHealthyUpstream):
            endpoints.choose()


def test_all_members_ejected_is_no_healthy_upstream_that_says_why() -> None:
    endpoints, clock = endpoint_set(detection=EVERY_100)
    for member in (A, B, C):
        feed(endpoints, member, [500] * 5)
    clock.now_s += 10.0
    with pytest.raises(NoHealthyUpstream) as refused:
        endpoints.choose()
    assert str(refused.value) == (
        "no healthy upstream: reviews.default: all 3 endpoints ejected by outlier detection"
        " after consecutive 5xx errors; the first returns in 20.0 s"
    )
    assert isinstance(refused.value, Unavailable)
    clock.now_s += 20.0
    assert choices(endpoints) == {A, B, C}  # all back after baseEjectionTime
    assert endpoints.ejected() == []


def test_the_message_names_gateway_errors_too() -> None:
    detection = OutlierDetection(consecutive_gateway_errors=2, max_ejection_percent=100)
    endpoints, _ = endpoint_set(detection=detection, members=(A, B))
    feed(endpoints, A, [0, 503])
    feed(endpoints, B, [500] * 5)
    with pytest.raises(NoHealthyUpstream, match=r"after consecutive 5xx errors / consecutive gat"):
        endpoints.choose()


def test_no_members_is_no_healthy_upstream() -> None:
    endpoints, _ = endpoint_set(members=())
    with pytest.raises(
        NoHealthyUpstream, match=r"^no healthy upstream: reviews.default has no ready endpoints$"
    ):
        endpoints.choose()
    endpoints.update((B,))
    assert endpoints.choose() == B


def test_update_keeps_the_statistics_of_members_that_stay() -> None:
    endpoints, _ = endpoint_set(detection=OutlierDetection())
    feed(endpoints, A, [500] * 5)
    endpoints.update((A, B, C, D))
    assert endpoints.ejected() == [A]  # still out
    assert choices(endpoints) == {B, C, D}
    endpoints.update((B, C))
    endpoints.update((A, B, C))  # A left and came back: a fresh member
    assert endpoints.ejected() == []
    assert choices(endpoints) == {A, B, C}


def test_update_keeps_the_attempts_in_flight() -> None:
    endpoints, _ = endpoint_set(simple="LEAST_REQUEST", members=(A, B))
    busy = endpoints.choose()
    endpoints.update((A, B, C))
    assert busy not in choices(endpoints)  # it still has an attempt in flight
    endpoints.finished(busy, latency_s=0.001, status=200)
    assert busy in choices(endpoints)


def test_update_keeps_the_latency_estimates() -> None:
    endpoints, clock = endpoint_set(simple="", members=(A, B))
    for member in (endpoints.choose(), endpoints.choose()):
        endpoints.finished(member, latency_s=0.050 if member == A else 0.001, status=200)
    endpoints.update((A, B, C))
    clock.now_s += 0.1
    assert A not in choices(endpoints, 100)  # the slowest of three is never the cheaper


def limited(max_connections: int, pending: int | None = None) -> EndpointSet[str]:
    pool = ConnectionPool(max_connections=max_connections, http1_max_pending_requests=pending)
    return endpoint_set(pool=pool)[0]


def test_choose_overflows_at_max_connections_and_try_choose_says_none() -> None:
    endpoints = limited(2)
    held = [endpoints.choose(), endpoints.choose()]
    assert endpoints.try_choose() is None
    with pytest.raises(Overflow) as refused:
        endpoints.choose()
    assert str(refused.value) == (
        "upstream overflow: reviews.default has 2 requests in flight (maxConnections 2)"
    )
    endpoints.finished(held[0], latency_s=0.001, status=503)
    assert endpoints.try_choose() is not None


def test_a_member_that_left_still_holds_its_connection_until_it_finishes() -> None:
    endpoints = limited(1)
    held = endpoints.choose()
    endpoints.update((D,))
    assert endpoints.try_choose() is None
    endpoints.finished(held, latency_s=0.001, status=200)
    assert endpoints.try_choose() == D


async def until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0)


async def take_turn(endpoints: EndpointSet[str], served: list[str], name: str) -> str:
    member = endpoints.try_choose()
    while member is None:
        await endpoints.wait_turn()
        member = endpoints.try_choose()
    served.append(name)
    return member


async def test_waiters_are_served_in_arrival_order_as_attempts_finish() -> None:
    endpoints = limited(1)
    held = endpoints.choose()
    served: list[str] = []
    tasks = []
    for name in ("first", "second", "third"):
        tasks.append(asyncio.create_task(take_turn(endpoints, served, name)))
        await until(lambda: endpoints.waiting == len(tasks))
    for task in tasks:
        endpoints.finished(held, latency_s=0.001, status=200)
        assert endpoints.try_choose() is None  # the freed turn is the waiter's, not a newcomer's
        held = await task
    assert served == ["first", "second", "third"]
    assert endpoints.in_flight == 1


async def test_wait_turn_overflows_at_once_when_the_pending_requests_are_full() -> None:
    endpoints = limited(1, pending=1)
    held = endpoints.choose()
    served: list[str] = []
    waiting = asyncio.create_task(take_turn(endpoints, served, "queued"))
    await until(lambda: endpoints.waiting == 1)
    with pytest.raises(Overflow) as refused:
        await endpoints.wait_turn()
    assert str(refused.value) == (
        "upstream overflow: reviews.default has 1 request in flight (maxConnections 1)"
        " and 1 waiting (http1MaxPendingRequests 1)"
    )
    waiting.cancel()  # a cancelled waiter frees its place in the queue ...
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert endpoints.waiting == 0
    later = asyncio.create_task(take_turn(endpoints, served, "later"))
    await until(lambda: endpoints.waiting == 1)
    endpoints.finished(held, latency_s=0.001, status=200)
    endpoints.finished(await later, latency_s=0.001, status=200)
    assert served == ["later"]
    assert endpoints.in_flight == 0  # ... and takes no connection with it


async def test_a_waiter_cancelled_after_its_turn_came_passes_it_on() -> None:
    endpoints = limited(1)
    held = endpoints.choose()
    served: list[str] = []
    first = asyncio.create_task(take_turn(endpoints, served, "first"))
    await until(lambda: endpoints.waiting == 1)
    second = asyncio.create_task(take_turn(endpoints, served, "second"))
    await until(lambda: endpoints.waiting == 2)
    endpoints.finished(held, latency_s=0.001, status=200)  # first's turn, it has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    member = await second
    assert served == ["second"]
    assert endpoints.in_flight == 1
    endpoints.finished(member, latency_s=0.001, status=200)
    assert endpoints.in_flight == 0


async def test_waiters_learn_in_turn_that_the_members_are_gone() -> None:
    endpoints = limited(1)
    held = endpoints.choose()
    served: list[str] = []
    tasks = [asyncio.create_task(take_turn(endpoints, served, str(i))) for i in range(3)]
    await until(lambda: endpoints.waiting == 3)
    endpoints.update(())
    endpoints.finished(held, latency_s=0.001, status=200)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(outcome, NoHealthyUpstream) for outcome in outcomes), outcomes
    assert endpoints.waiting == 0


async def test_without_limits_nothing_waits() -> None:
    endpoints, _ = endpoint_set()
    held = [endpoints.choose() for _ in range(1000)]
    await endpoints.wait_turn()
    assert endpoints.try_choose() is not None
    assert endpoints.in_flight == len(held) + 1
