"""The members of one destination (a host, or a subset of it) and the choice of one per attempt.

An ``EndpointSet`` is built from the destination's ``TrafficPolicy`` and told its current
members (``update``): function pools, ``(ip, port)`` endpoints, whatever hashable the caller
balances over. Per attempt, ``choose`` (or ``try_choose``) gives a member and counts it in
flight; ``finished`` reports how the attempt ended, which feeds the latency estimates (the
balancers), the outlier counters (ejection) and the connection limits (waiters).

Statuses given to ``finished``: 0 is a failed or reset connection (a gateway error, as Envoy
maps local-origin failures with Istio's settings), 502/503/504 are gateway errors, other 5xx
are errors, anything else is a success (a 4xx is the caller's problem, not the member's).

Connection limits (``connectionPool``): ``tcp.maxConnections`` bounds the attempts in flight
over all members (HTTP/1.1 carries one request per connection at a time), and
``http.http1MaxPendingRequests`` bounds how many may wait for one to finish. A caller that may
wait uses the pair ``try_choose`` / ``wait_turn``::

    member = endpoints.try_choose(hash_key=key)
    while member is None:  # at maxConnections
        await endpoints.wait_turn()  # FIFO; Overflow at once when the waiting room is full
        member = endpoints.try_choose(hash_key=key)  # at once: no await in between

A caller that cannot wait uses ``choose``, which raises Overflow at the limit. Waiters are
served in arrival order: a turn freed by ``finished`` is held for the first waiter, so a new
caller cannot take it in between. The common path (under the limit) creates no future.

Pure bookkeeping on the request path: a clock is passed in, nothing is logged, no task or
timer is created. Must not import runtime, gateway, api or controllers.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from funcmesh.errors import Unavailable
from funcmesh.mesh.balancers import HashRing, Member, Picker, PowerOfTwoChoices, picker_for
from funcmesh.mesh.outliers import OutlierDetector
from funcmesh.model.istio_destinations import TrafficPolicy

K = TypeVar("K", bound=Hashable)


class NoHealthyUpstream(Unavailable):
    """The destination has no member, or outlier detection ejected all of them (a 503)."""


class Overflow(Unavailable):
    """The destination's connection limits refuse the attempt (a 503, ``x-funcmesh-overflow``)."""


class EndpointSet(Generic[K]):
    """Balancer, outlier detection and connection limits over one destination's members.

    ``label`` names the destination in messages (``"reviews.default:v1"``). Every member that
    ``choose``/``try_choose`` gives out must be reported once to ``finished``.
    """

    __slots__ = (
        "_clock",
        "_eligible",
        "_in_flight",
        "_label",
        "_max_in_flight",
        "_max_waiting",
        "_members",
        "_outliers",
        "_picker",
        "_tracks_latency",
        "_waiters",
        "_waking",
    )

    def __init__(
        self,
        policy: TrafficPolicy,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        label: str = "",
    ) -> None:
        self._label = label or "the destination"
        self._clock = clock
        self._picker: Picker[K] = picker_for(policy.load_balancer, rng or random.Random())
        picker = self._picker
        self._tracks_latency = isinstance(picker, PowerOfTwoChoices) and picker.by_latency
        detection = policy.outlier_detection
        self._outliers = None if detection is None else OutlierDetector[K](detection)
        self._max_in_flight = policy.connection_pool.max_connections  # None: unlimited
        self._max_waiting = policy.connection_pool.http1_max_pending_requests  # None: unlimited
        self._members: dict[K, Member[K]] = {}
        self._eligible: list[Member[K]] = []  # the members not ejected
        self._in_flight = 0  # attempts given out and not finished, over all members
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._waking = 0  # waiters woken with a turn held for them, not yet resumed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def uses_hash_key(self) -> bool:
        """Whether ``choose`` reads ``hash_key``: the caller may skip computing it otherwise."""
        return isinstance(self._picker, HashRing)

    def members(self) -> list[K]:
        return list(self._members)

    def ejected(self) -> list[K]:
        """The members outlier detection keeps out now."""
        self._return_due(self._clock())
        return [m.key for m in self._members.values() if m.ejected_until_s]

    def update(self, members: Sequence[K]) -> None:
        """The members now; those that stay keep their statistics, those that left lose them.

        Attempts in flight on a member that left still count against maxConnections until they
        are reported to ``finished``.
        """
        now_s = self._clock()
        known = self._members
        self._members = {
            key: known[key] if key in known else Member(key, now_s=now_s) for key in members
        }
        if self._outliers is not None:
            self._outliers.recount(self._members.values())
        self._picker.update(list(self._members.values()))
        self._refresh_eligible()

    def choose(self, *, hash_key: bytes | None = None, exclude: K | None = None) -> K:
        """The member for one attempt, counted in flight; Overflow at maxConnections.

        ``hash_key`` is the consistent hash's key (a header value, a cookie, the source
        address; None: random). ``exclude`` is a member to avoid when another may take the
        attempt: a retry goes elsewhere (Istio configures Envoy's ``previous_hosts``
        predicate). NoHealthyUpstream when no member may take it.
        """
        member = self.try_choose(hash_key=hash_key, exclude=exclude)
        if member is None:
            raise Overflow(self._overflow_message())
        return member

    def try_choose(self, *, hash_key: bytes | None = None, exclude: K | None = None) -> K | None:
        """As ``choose``, but None at maxConnections: then ``await wait_turn()`` and try again."""
        limit = self._max_in_flight
        if limit is not None and self._in_flight + self._waking >= limit:
            return None
        now_s = self._clock()
        if self._outliers is not None and self._outliers.ejected:
            self._return_due(now_s)
        candidates = self._eligible
        if not candidates:
            self._wake_waiters()  # each of them gets this answer in turn
            raise NoHealthyUpstream(self._no_healthy_upstream_message(now_s))
        excluded = None if exclude is None else self._members.get(exclude)
        if excluded is not None and not excluded.ejected_until_s and len(candidates) > 1:
            candidates = [m for m in candidates if m is not excluded]
        else:
            excluded = None
        member = self._picker.pick(candidates, hash_key=hash_key, excluded=excluded, now_s=now_s)
        member.in_flight += 1
        self._in_flight += 1
        return member.key

    async def wait_turn(self) -> None:
        """Wait until an attempt may start; Overflow at once if http1MaxPendingRequests wait.

        Returns at once when a turn is free and nobody waits. A turn is held for the waiter it
        is given to until it resumes, so call ``try_choose`` right after (no await between).
        A waiter cancelled in the queue leaves it; one cancelled after its turn came passes
        the turn to the next.
        """
        limit = self._max_in_flight
        if limit is None:
            return
        self._wake_waiters()  # a turn left free by a woken caller that did not take it
        if not self._waiters and self._in_flight + self._waking < limit:
            return
        if self._max_waiting is not None and len(self._waiters) >= self._max_waiting:
            raise Overflow(self._overflow_message(waiting=True))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._waking -= 1
                self._wake_waiters()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        self._waking -= 1

    def finished(self, member: K, *, latency_s: float, status: int) -> None:
        """The attempt on ``member`` ended after ``latency_s`` with ``status`` (0: no answer)."""
        if self._in_flight:
            self._in_flight -= 1
        state = self._members.get(member)
        if state is not None:
            if state.in_flight:
                state.in_flight -= 1
            failed = status == 0 or 500 <= status <= 599
            if self._tracks_latency:
                state.observe(latency_s, failed=failed, now_s=self._clock())
            if self._outliers is not None:
                self._count_outcome(state, status=status, failed=failed)
        if self._waiters:
            self._wake_waiters()

    def _count_outcome(self, state: Member[K], *, status: int, failed: bool) -> None:
        outliers = self._outliers
        assert outliers is not None
        if not failed:
            if state.server_errors or state.gateway_errors:
                outliers.succeeded(state)
            return
        now_s = self._clock()
        self._return_due(now_s)
        gateway = status == 0 or 502 <= status <= 504
        if outliers.failed(state, gateway=gateway, members=len(self._members), now_s=now_s):
            self._refresh_eligible()

    def _return_due(self, now_s: float) -> None:
        if self._outliers is not None and self._outliers.return_due(self._members.values(), now_s):
            self._refresh_eligible()

    def _refresh_eligible(self) -> None:
        self._eligible = [m for m in self._members.values() if not m.ejected_until_s]

    def _wake_waiters(self) -> None:
        limit = self._max_in_flight
        waiters = self._waiters
        while waiters and limit is not None and self._in_flight + self._waking < limit:
            waiter = waiters.popleft()
            if not waiter.done():  # a cancelled one is leaving (wait_turn's except)
                waiter.set_result(None)
                self._waking += 1

    def _overflow_message(self, *, waiting: bool = False) -> str:
        count = self._in_flight
        message = (
            f"upstream overflow: {self._label} has {count} request{'' if count == 1 else 's'}"
            f" in flight (maxConnections {self._max_in_flight})"
        )
        if waiting:
            message += f" and {len(self._waiters)} waiting (http1MaxPendingRequests"
            message += f" {self._max_waiting})"
        return message

    def _no_healthy_upstream_message(self, now_s: float) -> str:
        if not self._members:
            return f"no healthy upstream: {self._label} has no ready endpoints"
        members = self._members.values()
        reasons = sorted({m.ejection_reason for m in members})
        back_s = min(m.ejected_until_s for m in members) - now_s
        return (
            f"no healthy upstream: {self._label}: all {len(self._members)} endpoints ejected"
            f" by outlier detection after {' / '.join(reasons)}; the first returns in"
            f" {back_s:.1f} s"
        )
