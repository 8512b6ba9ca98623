"""Which member takes each attempt: the default peak EWMA, round robin, random, least request, hash.

The balancing cases run a discrete-event simulation on a fake clock: ``concurrency`` callers
each choose a member, finish after that member's latency, and start the next call, as a
closed-loop load generator would against real replicas.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.mesh.balancers import picker_for
from funcmesh.mesh.endpoint_sets import EndpointSet
from funcmesh.model.istio_destinations import LoadBalancer, TrafficPolicy, parse_destination_rule

A, B, C = ("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080)
Endpoint = tuple[str, int]


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def policy(simple: str = "", **hash_key: Any) -> TrafficPolicy:
    return TrafficPolicy(load_balancer=LoadBalancer(simple=simple, **hash_key))


def endpoint_set(
    simple: str = "", members: tuple[Endpoint, ...] = (A, B, C), seed: int = 7, **hash_key: Any
) -> tuple[EndpointSet[Endpoint], Clock]:
    clock = Clock()
    endpoints: EndpointSet[Endpoint] = EndpointSet(
        policy(simple, **hash_key), clock=clock, rng=random.Random(seed), label="reviews.default"
    )
    endpoints.update(members)
    return endpoints, clock


def simulate(
    simple: str,
    behaviour: dict[str, tuple[float, int]],
    *,
    calls: int = 2000,
    concurrency: int = 10,
    seed: int = 1,
) -> Counter[str]:
    """How many of ``calls`` each member took; ``behaviour``: member -> (latency, status)."""
    clock = Clock()
    endpoints: EndpointSet[str] = EndpointSet(
        policy(simple), clock=clock, rng=random.Random(seed), label="sim"
    )
    endpoints.update(list(behaviour))
    taken: Counter[str] = Counter()
    ends: list[tuple[float, int, str]] = []
    order = itertools.count()

    def start() -> None:
        member = endpoints.choose()
        taken[member] += 1
        heapq.heappush(ends, (clock.now_s + behaviour[member][0], next(order), member))

    for _ in range(concurrency):
        start()
    while ends:
        clock.now_s, _, member = heapq.heappop(ends)
        latency_s, status = behaviour[member]
        endpoints.finished(member, latency_s=latency_s, status=status)
        if taken.total() < calls:
            start()
    assert taken.total() == calls
    return taken


SLOW_AND_FAST = {"slow": (0.050, 200), "fast1": (0.001, 200), "fast2": (0.001, 200)}


@pytest.mark.parametrize(
    ("simple", "low", "high"),
    [
        ("", 0.0, 0.10),  # peak EWMA + P2C: the number
        ("LEAST_REQUEST", 0.0, 0.10),  # the slow one piles up requests in flight
        ("ROUND_ROBIN", 0.32, 0.34),  # blind to latency: a third
        ("RANDOM", 0.28, 0.38),
    ],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_slow_member_gets_little_traffic_unless_the_balancer_is_blind(
    simple: str, low: float, high: float, seed: int
) -> None:
    taken = simulate(simple, SLOW_AND_FAST, seed=seed)
    assert low <= taken["slow"] / 2000 <= high, taken


@pytest.mark.parametrize("status", [500, 503, 0])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_member_failing_fast_does_not_attract_the_traffic(status: int, seed: int) -> None:
    behaviour = {"failing": (0.0001, status), "ok1": (0.001, 200), "ok2": (0.001, 200)}
    taken = simulate("", behaviour, seed=seed)
    assert taken["failing"] / 2000 < 0.10, taken


def test_a_member_that_failed_once_is_tried_again_after_a_while() -> None:
    endpoints, clock = endpoint_set(members=(A, B))
    first = endpoints.choose()
    endpoints.finished(first, latency_s=0.001, status=503)
    probed_at = []
    for _ in range(12_000):  # a call every 10 ms for two minutes
        clock.now_s += 0.010
        member = endpoints.choose()
        endpoints.finished(member, latency_s=0.001, status=200)
        if member == first:
            probed_at.append(clock.now_s - 1000.0)
    assert probed_at, "the member that failed once never got traffic again"
    # Avoided at first: its 1 s penalty decays to the 1 ms of the other after 10 s * ln(1000).
    assert 60.0 < probed_at[0] < 80.0
    assert len(probed_at) > 100  # answering well again, it keeps getting some


def test_round_robin_goes_one_member_further_each_time() -> None:
    endpoints, _ = endpoint_set("ROUND_ROBIN")
    chosen = [endpoints.choose() for _ in range(7)]
    assert chosen == [A, B, C, A, B, C, A]


def test_random_spreads_evenly() -> None:
    endpoints, _ = endpoint_set("RANDOM")
    taken = Counter(endpoints.choose() for _ in range(3000))
    assert all(900 <= taken[member] <= 1100 for member in (A, B, C)), taken


@pytest.mark.parametrize(("members", "least_share"), [((A, B), 1.0), ((A, B, C), 0.6)])
def test_least_request_prefers_the_idle_member(
    members: tuple[Endpoint, ...], least_share: float
) -> None:
    endpoints, _ = endpoint_set("LEAST_REQUEST", members)
    held = [endpoints.choose() for _ in range(3 * len(members))]  # evenly: 3 each
    assert Counter(held) == dict.fromkeys(members, 3)
    for member in held:
        if member == A:
            endpoints.finished(member, latency_s=0.001, status=200)  # A is idle now
    taken = Counter()
    for _ in range(300):
        member = endpoints.choose()
        taken[member] += 1
        endpoints.finished(member, latency_s=0.001, status=200)
    assert taken[A] / 300 >= least_share, taken


KEYS = [f"user-{i}".encode() for i in range(1000)]


def test_consistent_hash_sends_a_key_to_the_same_member_every_time() -> None:
    endpoints, _ = endpoint_set(hash_header="x-user")
    first = {key: endpoints.choose(hash_key=key) for key in KEYS}
    again, _ = endpoint_set(hash_header="x-user", seed=99)  # another instance, same members
    assert {key: again.choose(hash_key=key) for key in KEYS} == first
    assert all(endpoints.choose(hash_key=key) == first[key] for key in KEYS)
    shares = Counter(first.values())
    assert all(shares[member] > 200 for member in (A, B, C)), shares


def test_consistent_hash_moves_only_the_keys_of_a_removed_member() -> None:
    endpoints, _ = endpoint_set(hash_header="x-user")
    before = {key: endpoints.choose(hash_key=key) for key in KEYS}
    endpoints.update((A, C))
    after = {key: endpoints.choose(hash_key=key) for key in KEYS}
    moved = [key for key in KEYS if after[key] != before[key]]
    assert {before[key] for key in moved} == {B}  # only B's keys moved, and all of them
    assert all(after[key] in (A, C) for key in KEYS)
    endpoints.update((A, B, C))
    assert {key: endpoints.choose(hash_key=key) for key in KEYS} == before


def test_consistent_hash_without_a_key_is_random() -> None:
    endpoints, _ = endpoint_set(hash_cookie="session")
    taken = Counter(endpoints.choose(hash_key=None) for _ in range(3000))
    assert all(900 <= taken[member] <= 1100 for member in (A, B, C)), taken


@pytest.mark.parametrize(
    "balancer",
    [
        LoadBalancer(),
        LoadBalancer(simple="ROUND_ROBIN"),
        LoadBalancer(simple="RANDOM"),
        LoadBalancer(simple="LEAST_REQUEST"),
        LoadBalancer(hash_header="x-user"),
    ],
)
def test_a_retry_goes_to_another_member_when_there_is_one(balancer: LoadBalancer) -> None:
    for members in ((A, B), (A, B, C)):
        endpoints: EndpointSet[Endpoint] = EndpointSet(
            TrafficPolicy(load_balancer=balancer), clock=Clock(), rng=random.Random(3)
        )
        endpoints.update(members)
        for key in KEYS[:50]:
            first = endpoints.choose(hash_key=key)
            retry = endpoints.choose(hash_key=key, exclude=first)
            assert retry != first
            assert endpoints.choose(hash_key=key, exclude=retry) != retry
            for member in (first, retry):
                endpoints.finished(member, latency_s=0.001, status=200)
        endpoints.update((A,))
        assert endpoints.choose(exclude=A) == A  # nobody else: the same member again


@pytest.mark.parametrize("simple", ["LEAST_CONN", "PASSTHROUGH", "UNSPECIFIED"])
def test_load_balancers_not_served_are_refused_when_the_rule_is_applied(simple: str) -> None:
    rule = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default"},
        "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": simple}}},
    }
    with pytest.raises(Invalid) as refused:
        parse_destination_rule(rule)
    assert "spec.trafficPolicy.loadBalancer.simple" in str(refused.value.causes)
    with pytest.raises(Invalid, match=simple):
        picker_for(LoadBalancer(simple=simple), random.Random())
