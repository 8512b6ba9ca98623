"""Which member of an EndpointSet takes one attempt: Istio's load balancers and the default.

A ``Member`` carries one member's statistics (latency estimate, attempts in flight, outlier
counters); a picker chooses among the members that may take the attempt. The pickers follow
``DestinationRule.trafficPolicy.loadBalancer``:

- none (the default): Linkerd's balancer, tower's P2C + PeakEwma: two distinct members drawn at
  random, the one with the lower ``estimate * (in_flight + 1)`` wins, so a slow member gets
  little traffic (reference dns-mesh.md section 3.2);
- ``ROUND_ROBIN``, ``RANDOM``; ``LEAST_REQUEST`` (Envoy's: two random choices, the one with
  fewer requests in flight);
- ``consistentHash``: a ring of virtual nodes placed by a stable hash (blake2b), so one key
  goes to one member while the members stay, and removing a member moves only its keys.

Pure bookkeeping on the request path: no I/O, no clock of its own (``now_s`` is passed in), no
allocation beyond what a choice needs. Must not import runtime, gateway, api or controllers.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, Protocol, TypeVar

from funcmesh.errors import Invalid
from funcmesh.model.istio_destinations import LoadBalancer

K = TypeVar("K", bound=Hashable)

DEFAULT_RTT_S = 0.030  # Linkerd's EWMA_DEFAULT_RTT: the estimate of a member never measured
DECAY_S = 10.0  # Linkerd's EWMA_DECAY: the time constant of the moving average
FAILURE_PENALTY_S = 1.0  # the latency a failed attempt counts as, at least (see Member.observe)
RING_POINTS_PER_MEMBER = 160  # virtual nodes per member (ketama's count): shares within ~10 %


class Member(Generic[K]):
    """One member's statistics, kept while the member stays in its EndpointSet.

    ``estimate_s`` is a peak EWMA of the attempts' latency: a sample above the estimate
    replaces it at once (a member turning slow is avoided at its first slow answer), a sample
    below blends in with weight ``1 - exp(-elapsed / DECAY_S)`` where ``elapsed`` is the time
    since the previous sample, so the estimate follows the last ~10 s whatever the rate.
    """

    __slots__ = (
        "ejected_until_s",
        "ejection_reason",
        "ejections",
        "estimate_s",
        "gateway_errors",
        "in_flight",
        "key",
        "returned_s",
        "sampled_s",
        "server_errors",
    )

    def __init__(self, key: K, *, now_s: float) -> None:
        self.key = key
        self.in_flight = 0
        self.estimate_s = DEFAULT_RTT_S
        self.sampled_s = now_s
        self.server_errors = 0  # consecutive 5xx (and connection failures)
        self.gateway_errors = 0  # consecutive 502/503/504 (and connection failures)
        self.ejected_until_s = 0.0  # 0: not ejected
        self.ejection_reason = ""
        self.ejections = 0  # Envoy's ejection multiplier
        self.returned_s = now_s  # when the last ejection ended (or the member joined)

    def cost(self, now_s: float) -> float:
        """Peak EWMA load: the estimate times the attempts it would queue behind, plus one.

        While the member is idle its estimate decays toward zero with the same time constant
        (tower decays it at each load query), so a member that stopped getting traffic because
        it was slow or failing is tried again after a while. A member with attempts in flight
        but no answers keeps its estimate: a hung member must not become attractive.
        """
        in_flight = self.in_flight
        if in_flight:
            return self.estimate_s * (in_flight + 1)
        return self.estimate_s * math.exp((self.sampled_s - now_s) / DECAY_S)

    def observe(self, latency_s: float, *, failed: bool, now_s: float) -> None:
        """Feed one attempt's latency into the estimate; a failure counts as at least 1 s.

        Why a penalty: a member that fails fast (a 500 in 0.1 ms, a refused connection) would
        otherwise look like the fastest and attract the traffic (linkerd2#11669). Why 1 s:
        it is over thirty times the default estimate and above the latency of nearly every
        healthy call we balance, so a failing member loses its comparisons against any healthy
        one; while it gets no traffic its cost decays (``cost``) and it is probed again after
        DECAY_S * ln(1 s / healthy cost), about 35 s against 30 ms members: close to Istio's
        30 s base ejection time, and shorter than Linkerd's 5 s load-biaser penalty gives, so a
        transient error costs a member little. A slow failure (a timeout) counts at its own,
        longer, latency.
        """
        sample = max(latency_s, FAILURE_PENALTY_S) if failed else latency_s
        if sample >= self.estimate_s:
            self.estimate_s = sample
        else:
            weight = math.exp((self.sampled_s - now_s) / DECAY_S)
            self.estimate_s = sample + (self.estimate_s - sample) * weight
        self.sampled_s = now_s


class Picker(Protocol[K]):
    """A load balancer: the member for one attempt among ``candidates`` (never empty).

    ``candidates`` are the members that may take it (not ejected, and not ``excluded`` when
    another one is available). ``excluded`` is the member a retry should avoid, or None.
    """

    def update(self, members: Sequence[Member[K]]) -> None:
        """Every member now, ejected ones included (the hash ring is built over them)."""
        ...

    def pick(
        self,
        candidates: Sequence[Member[K]],
        *,
        hash_key: bytes | None,
        excluded: Member[K] | None,
        now_s: float,
    ) -> Member[K]: ...


class PowerOfTwoChoices(Generic[K]):
    """Of two distinct random members, the less loaded. ``by_latency``: load is
    ``Member.cost`` (peak EWMA latency times requests in flight, Linkerd / tower: the default);
    otherwise requests in flight alone (Envoy's ``LEAST_REQUEST``)."""

    __slots__ = ("_random", "by_latency")

    def __init__(self, rng: random.Random, *, by_latency: bool) -> None:
        self._random = rng.random
        self.by_latency = by_latency

    def update(self, members: Sequence[Member[K]]) -> None:
        pass

    def pick(
        self,
        candidates: Sequence[Member[K]],
        *,
        hash_key: bytes | None,
        excluded: Member[K] | None,
        now_s: float,
    ) -> Member[K]:
        count = len(candidates)
        if count == 1:
            return candidates[0]
        first, second = _two_distinct(candidates, count, self._random)
        if self.by_latency:
            return first if first.cost(now_s) <= second.cost(now_s) else second
        return first if first.in_flight <= second.in_flight else second


class RoundRobin(Generic[K]):
    """``ROUND_ROBIN``: each attempt goes one member further."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def update(self, members: Sequence[Member[K]]) -> None:
        pass

    def pick(
        self,
        candidates: Sequence[Member[K]],
        *,
        hash_key: bytes | None,
        excluded: Member[K] | None,
        now_s: float,
    ) -> Member[K]:
        position = self._next % len(candidates)
        self._next = position + 1
        return candidates[position]


class Random(Generic[K]):
    """``RANDOM``: a uniformly random member."""

    __slots__ = ("_random",)

    def __init__(self, rng: random.Random) -> None:
        self._random = rng.random

    def update(self, members: Sequence[Member[K]]) -> None:
        pass

    def pick(
        self,
        candidates: Sequence[Member[K]],
        *,
        hash_key: bytes | None,
        excluded: Member[K] | None,
        now_s: float,
    ) -> Member[K]:
        return candidates[int(self._random() * len(candidates))]


class HashRing(Generic[K]):
    """``consistentHash``: the first acceptable member clockwise from the key's point.

    Each member owns RING_POINTS_PER_MEMBER points at ``blake2b(repr(member) + "#" + i)``, so a
    member whose repr is stable (an ``(ip, port)`` pair, a named pool) keeps its keys across
    restarts too. An ejected or excluded member is stepped over: its keys go to the next
    members on the ring and come back when it does. Without a key (no such header, cookie or
    source address) the choice is random, as Envoy's.
    """

    __slots__ = ("_members", "_points", "_points_of", "_random")

    def __init__(self, rng: random.Random) -> None:
        self._random = rng.random
        self._points: list[int] = []
        self._members: list[Member[K]] = []  # the owner of each point
        self._points_of: dict[K, list[int]] = {}  # cache: hashing is the costly part

    def update(self, members: Sequence[Member[K]]) -> None:
        cached = self._points_of
        self._points_of = {m.key: cached.get(m.key) or _ring_points(m.key) for m in members}
        ring = sorted(
            ((point, m) for m in members for point in self._points_of[m.key]),
            key=lambda entry: entry[0],
        )
        self._points = [point for point, _ in ring]
        self._members = [m for _, m in ring]

    def pick(
        self,
        candidates: Sequence[Member[K]],
        *,
        hash_key: bytes | None,
        excluded: Member[K] | None,
        now_s: float,
    ) -> Member[K]:
        if hash_key is None or not self._points:
            return candidates[int(self._random() * len(candidates))]
        owners = self._members
        start = bisect.bisect_right(self._points, _point(hash_key))
        for step in range(len(owners)):
            owner = owners[(start + step) % len(owners)]
            if not owner.ejected_until_s and owner is not excluded:
                return owner
        return candidates[0]  # unreachable while candidates are members of the ring


def picker_for(balancer: LoadBalancer, rng: random.Random) -> Picker[K]:
    """The picker a DestinationRule's ``loadBalancer`` asks for."""
    if balancer.hash_header or balancer.hash_cookie or balancer.hash_source_ip:
        return HashRing(rng)
    if balancer.simple == "":
        return PowerOfTwoChoices(rng, by_latency=True)
    if balancer.simple == "ROUND_ROBIN":
        return RoundRobin()
    if balancer.simple == "RANDOM":
        return Random(rng)
    if balancer.simple == "LEAST_REQUEST":
        return PowerOfTwoChoices(rng, by_latency=False)
    # parse_destination_rule refuses the others (LEAST_CONN and PASSTHROUGH among them).
    raise Invalid(f"load balancer {balancer.simple!r} is not supported")


def _two_distinct(
    candidates: Sequence[Member[K]], count: int, random_unit: Callable[[], float]
) -> tuple[Member[K], Member[K]]:
    first = int(random_unit() * count)
    second = int(random_unit() * (count - 1))
    if second >= first:
        second += 1
    return candidates[first], candidates[second]


def _ring_points(key: Hashable) -> list[int]:
    name = repr(key).encode()
    return [_point(name + b"#%d" % i) for i in range(RING_POINTS_PER_MEMBER)]


def _point(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
