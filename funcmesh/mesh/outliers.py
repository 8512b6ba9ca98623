"""Outlier detection: a member that keeps failing is ejected for a while, as Envoy does for Istio.

``DestinationRule.trafficPolicy.outlierDetection`` counts, per member, consecutive 5xx
(``consecutive5xxErrors``: any 5xx and a failed or reset connection) and consecutive gateway
errors (``consecutiveGatewayErrors``: 502, 503, 504 and a failed or reset connection); any other
answer resets both, and a 5xx that is not a gateway error resets the gateway count (Envoy's
``putHttpResponseCode``). A count reaching its threshold (0: off) ejects the member for
``baseEjectionTime`` times the number of its ejections, at most max(300 s, baseEjectionTime)
(Envoy's ``max_ejection_time``), unless the ejected members would then exceed
``maxEjectionPercent`` of the members; one member is always ejectable (Envoy does so since 1.21).

Envoy sweeps every ``interval`` and returns a member at the first sweep after its time is up,
so up to one interval late. Here nothing runs on a timer: the EndpointSet asks
``return_due`` before each choice, so a member returns at the first choice after its time, and
``interval`` only sets how fast the ejection multiplier wears off (one step per interval spent
not ejected, as Envoy's sweep decrements it). Pure: no clock, no I/O, no tasks.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable
from typing import Generic, TypeVar

from funcmesh.mesh.balancers import Member
from funcmesh.model.istio_destinations import OutlierDetection

K = TypeVar("K", bound=Hashable)

MAX_EJECTION_S = 300.0  # Envoy's max_ejection_time default; Istio does not set it
GATEWAY_ERRORS = "consecutive gateway errors"
SERVER_ERRORS = "consecutive 5xx errors"


class OutlierDetector(Generic[K]):
    """The ejection state of one EndpointSet's members (the counters live on each Member)."""

    __slots__ = ("_max_ejection_s", "_policy", "ejected", "next_return_s")

    def __init__(self, policy: OutlierDetection) -> None:
        self._policy = policy
        self._max_ejection_s = max(MAX_EJECTION_S, policy.base_ejection_time_s)
        self.ejected = 0  # members ejected now (some may be due back: see return_due)
        self.next_return_s = math.inf  # the earliest end of an ejection

    def failed(self, member: Member[K], *, gateway: bool, members: int, now_s: float) -> bool:
        """Count a failed attempt of ``member`` (one of ``members``); True if it is ejected."""
        member.server_errors += 1
        member.gateway_errors = member.gateway_errors + 1 if gateway else 0
        if member.ejected_until_s:
            return False  # an attempt that was in flight when the member was ejected
        policy = self._policy
        if 0 < policy.consecutive_gateway_errors <= member.gateway_errors:
            reason = GATEWAY_ERRORS
        elif 0 < policy.consecutive_5xx_errors <= member.server_errors:
            reason = SERVER_ERRORS
        else:
            return False
        return self._eject(member, reason=reason, members=members, now_s=now_s)

    def succeeded(self, member: Member[K]) -> None:
        """A success ends both runs of errors."""
        member.server_errors = 0
        member.gateway_errors = 0

    def return_due(self, members: Collection[Member[K]], now_s: float) -> bool:
        """Return the members whose ejection is over; True if any did."""
        if now_s < self.next_return_s:
            return False
        returned = False
        for member in members:
            if member.ejected_until_s and member.ejected_until_s <= now_s:
                member.ejected_until_s = 0.0
                member.ejection_reason = ""
                member.returned_s = now_s
                self.succeeded(member)
                returned = True
        self.recount(members)
        return returned

    def recount(self, members: Collection[Member[K]]) -> None:
        """Recount the ejected members (after members left or came back)."""
        ends = [member.ejected_until_s for member in members if member.ejected_until_s]
        self.ejected = len(ends)
        self.next_return_s = min(ends, default=math.inf)

    def _eject(self, member: Member[K], *, reason: str, members: int, now_s: float) -> bool:
        policy = self._policy
        if self.ejected and (self.ejected + 1) * 100 > policy.max_ejection_percent * members:
            return False  # the counts stay at the threshold: the next failure tries again
        worn_off = int((now_s - member.returned_s) / policy.interval_s)
        member.ejections = max(0, member.ejections - worn_off) + 1
        duration_s = min(policy.base_ejection_time_s * member.ejections, self._max_ejection_s)
        member.ejected_until_s = now_s + duration_s
        member.ejection_reason = reason
        self.ejected += 1
        self.next_return_s = min(self.next_return_s, member.ejected_until_s)
        return True
