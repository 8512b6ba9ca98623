"""Round robin and ClientIP affinity: which endpoint a new VIP connection tries first, and next."""

from __future__ import annotations

import pytest

from funcmesh.gateway.balancing import ClientIpAffinity, RoundRobin

A, B, C = ("127.128.0.1", 80), ("127.128.0.2", 80), ("127.128.0.3", 80)


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.parametrize(
    ("endpoints", "expected"),
    [
        ((), [(), ()]),
        ((A,), [(A,), (A,)]),
        ((A, B, C), [(A, B, C), (B, C, A), (C, A, B), (A, B, C)]),
    ],
)
def test_round_robin_starts_one_further_each_time_and_keeps_the_rest_as_fallbacks(
    endpoints: tuple[tuple[str, int], ...], expected: list[tuple[tuple[str, int], ...]]
) -> None:
    balancer = RoundRobin(endpoints)
    assert [tuple(balancer.candidates("10.0.0.1")) for _ in expected] == expected


def test_round_robin_follows_updates() -> None:
    balancer = RoundRobin((A, B))
    balancer.candidates("c")
    balancer.update((A, B, C))
    assert [balancer.candidates("c")[0] for _ in range(3)] == [B, C, A]
    balancer.update(())
    assert balancer.candidates("c") == ()


def affinity(timeout_s: float = 10.0) -> tuple[ClientIpAffinity, Clock]:
    clock = Clock()
    balancer = ClientIpAffinity(RoundRobin(), timeout_s=timeout_s, clock=clock)
    balancer.update((A, B, C))
    return balancer, clock


def test_a_client_sticks_to_the_endpoint_that_took_its_connection() -> None:
    balancer, _ = affinity()
    first = balancer.candidates("10.0.0.1")
    balancer.connected("10.0.0.1", first[1])  # the first choice refused; the second took it
    for _ in range(4):
        again = balancer.candidates("10.0.0.1")
        assert again[0] == first[1]
        assert sorted(again) == [A, B, C]  # the others stay as fallbacks


def test_affinity_expires_after_the_timeout_since_the_last_connection() -> None:
    balancer, clock = affinity(timeout_s=10.0)
    balancer.connected("10.0.0.1", C)
    clock.now_s += 9.0
    assert balancer.candidates("10.0.0.1")[0] == C
    balancer.connected("10.0.0.1", C)  # a new connection renews it
    clock.now_s += 9.0
    assert balancer.candidates("10.0.0.1")[0] == C
    clock.now_s += 10.0
    assert {balancer.candidates("10.0.0.1")[0] for _ in range(3)} == {A, B, C}  # round robin


def test_affinity_to_an_endpoint_that_is_no_longer_ready_is_forgotten() -> None:
    balancer, _ = affinity()
    balancer.connected("10.0.0.1", B)
    balancer.update((A, C))
    assert B not in balancer.candidates("10.0.0.1")
    balancer.update((A, B, C))  # B is back, but the client no longer sticks to anything
    assert {balancer.candidates("10.0.0.1")[0] for _ in range(3)} == {A, B, C}


def test_clients_are_independent() -> None:
    balancer, _ = affinity()
    balancer.connected("10.0.0.1", A)
    balancer.connected("10.0.0.2", C)
    assert balancer.candidates("10.0.0.1")[0] == A
    assert balancer.candidates("10.0.0.2")[0] == C


def test_expired_clients_are_pruned() -> None:
    balancer, clock = affinity(timeout_s=1.0)
    for n in range(3000):
        balancer.connected(f"10.0.{n // 250}.{n % 250}", A)
        clock.now_s += 0.01
    assert len(balancer._sticky) < 1200  # the memory stays bounded
