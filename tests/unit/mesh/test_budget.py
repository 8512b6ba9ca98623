"""The retry budget: at most 20 % extra load plus 10 retries per second, on a fake clock."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.mesh.budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now_s = 500.0

    def __call__(self) -> float:
        return self.now_s


def run(
    budget: RetryBudget, clock: Clock, *, rate_per_s: int, seconds: int, retries_wanted: int
) -> list[tuple[float, int]]:
    """Every request fails and wants ``retries_wanted`` retries: (time, retries granted) each."""
    granted = []
    for tick in range(rate_per_s * seconds):
        clock.now_s = 500.0 + tick / rate_per_s
        budget.deposit()
        retries = 0
        while retries < retries_wanted and budget.try_withdraw():
            retries += 1
        granted.append((clock.now_s - 500.0, retries))
    return granted


@pytest.mark.parametrize(
    ("ratio", "min_per_s", "expected"),
    [
        (0.2, 10.0, 300),  # Linkerd's default: 20 % of 1,000 requests + 10/s for 10 s
        (0.2, 0.0, 200),
        (0.0, 10.0, 100),
        (0.5, 1.0, 510),
        (0.0, 0.0, 0),
    ],
)
def test_a_failing_host_gets_at_most_the_ratio_plus_the_reserve(
    ratio: float, min_per_s: float, expected: int
) -> None:
    clock = Clock()
    budget = RetryBudget(ratio=ratio, min_per_s=min_per_s, ttl_s=10.0, clock=clock)
    granted = run(budget, clock, rate_per_s=100, seconds=10, retries_wanted=2)
    assert sum(retries for _, retries in granted) == expected


def test_the_bound_holds_in_every_window_of_a_long_outage() -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)
    granted = run(budget, clock, rate_per_s=100, seconds=60, retries_wanted=2)
    for start in range(51):
        window = sum(retries for at, retries in granted if start <= at < start + 10)
        # 20 % of the window's 1,000 requests + 100 free, plus 20 % of the slot before the
        # window (100 requests in 1 s): deposits are kept between ttl and 1.1 ttl.
        assert window <= 200 + 100 + 20, (start, window)
        assert window >= 200, (start, window)  # and the 20 % is really there


@pytest.mark.parametrize("retries_wanted", [1, 2, 3])
def test_at_a_trickle_every_retry_is_granted(retries_wanted: int) -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)
    granted = run(budget, clock, rate_per_s=1, seconds=120, retries_wanted=retries_wanted)
    assert all(retries == retries_wanted for _, retries in granted)


def test_the_free_retries_spent_in_a_burst_come_back_after_the_ttl() -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)
    assert sum(budget.try_withdraw() for _ in range(150)) == 100
    clock.now_s += 9.9
    assert not budget.try_withdraw()
    clock.now_s += 1.1  # the burst's slot has expired
    assert budget.balance == pytest.approx(100.0)
    assert budget.try_withdraw()


def test_five_requests_pay_for_one_retry_once_the_reserve_is_spent() -> None:
    clock = Clock()
    budget = RetryBudget(min_per_s=0.0, clock=clock)
    outcomes = []
    for _ in range(10):
        budget.deposit()
        outcomes.append(budget.try_withdraw())
    assert outcomes == [False, False, False, False, True] * 2


@pytest.mark.parametrize(
    "arguments",
    [{"ratio": -0.1}, {"min_per_s": -1.0}, {"ttl_s": 0.0}],
)
def test_a_budget_that_makes_no_sense_is_refused(arguments: dict[str, float]) -> None:
    with pytest.raises(Invalid, match="a retry budget needs"):
        RetryBudget(clock=Clock(), **arguments)
