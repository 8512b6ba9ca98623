"""How many retries a host may get: Linkerd's retry budget, so a failing service is not hammered.

Linkerd's default (``retryBudget{retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}``): retries
add at most 20 % to the request load, plus 10 "free" retries per second. ``deposit`` is called
once per original request, ``try_withdraw`` once per retry, which goes ahead only if it says so.

The rule, exactly (tower's ``TpsBudget``, with integer counts instead of scaled ones): a retry is
granted when ``min_per_s * ttl_s + ratio * deposits - withdrawals >= 1``, counting the deposits
and granted withdrawals of the last ``ttl_s`` to ``1.1 * ttl_s``. Time is cut into slots of
``ttl_s / 10``; the sums cover the current slot and the ten before it, so an event expires
between ``ttl_s`` and ``1.1 * ttl_s`` after it happened (never sooner: the budget never grants
more than the rule over any ``ttl_s`` window). Consequences:

- over any ``ttl_s`` window, granted retries <= ``ratio`` x the requests of that window and of
  the slot before it + ``min_per_s * ttl_s``;
- the free retries are a reserve per window, not a rate: a burst may spend the whole reserve at
  once, and it comes back as those withdrawals expire.

Pure: the clock is passed in, no task, no timer; a few additions per call.
"""

from __future__ import annotations

from collections.abc import Callable

from funcmesh.errors import Invalid

SLOTS_PER_TTL = 10
_EPSILON = 1e-9  # float slack: 0.2 * 5 deposits must pay for one retry


class RetryBudget:
    """The retry budget of one host (Linkerd's defaults)."""

    __slots__ = (
        "_clock",
        "_deposited",
        "_deposits",
        "_ratio",
        "_reserve",
        "_slot",
        "_slot_s",
        "_withdrawals",
        "_withdrawn",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_s: float = 10.0,
        ttl_s: float = 10.0,
        clock: Callable[[], float],
    ) -> None:
        if ratio < 0 or min_per_s < 0 or ttl_s <= 0:
            raise Invalid(
                f"a retry budget needs ratio >= 0, min_per_s >= 0 and ttl_s > 0, not {ratio},"
                f" {min_per_s} and {ttl_s}"
            )
        self._clock = clock
        self._ratio = ratio
        self._reserve = min_per_s * ttl_s
        self._slot_s = ttl_s / SLOTS_PER_TTL
        self._deposits = [0] * (SLOTS_PER_TTL + 1)  # per slot, a ring
        self._withdrawals = [0] * (SLOTS_PER_TTL + 1)
        self._deposited = 0  # sums over the ring
        self._withdrawn = 0
        self._slot = int(clock() // self._slot_s)

    @property
    def balance(self) -> float:
        """How many retries may go now (fractional: part of the next one is paid)."""
        self._advance()
        return self._reserve + self._ratio * self._deposited - self._withdrawn

    def deposit(self) -> None:
        """One original request: it earns ``ratio`` of a retry. (Once per mesh call: the
        slot's check is inlined, ``_advance`` runs only when a slot has passed.)"""
        if int(self._clock() // self._slot_s) > self._slot:
            self._advance()
        self._deposits[self._slot % len(self._deposits)] += 1
        self._deposited += 1

    def try_withdraw(self) -> bool:
        """Whether one retry may go; if so, it is paid for."""
        self._advance()
        if self._reserve + self._ratio * self._deposited - self._withdrawn < 1 - _EPSILON:
            return False
        self._withdrawals[self._slot % len(self._withdrawals)] += 1
        self._withdrawn += 1
        return True

    def _advance(self) -> None:
        slot = int(self._clock() // self._slot_s)
        if slot <= self._slot:
            return
        size = len(self._deposits)
        for expired in range(max(self._slot + 1, slot - size + 1), slot + 1):
            index = expired % size
            self._deposited -= self._deposits[index]
            self._withdrawn -= self._withdrawals[index]
            self._deposits[index] = 0
            self._withdrawals[index] = 0
        self._slot = slot
