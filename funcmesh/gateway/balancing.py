"""Which ready endpoint a new connection to a Service VIP goes to.

A ``Balancer`` is told the ready endpoints of one Service port (``update``) and, per new
connection, gives the endpoints to try in order (``candidates``: the first is the choice, the
rest are the fallbacks when it refuses); ``connected`` says which one took the connection.
``RoundRobin`` is the default; ``ClientIpAffinity`` wraps another balancer to keep a client IP on
the endpoint that served it, for the Service's ``sessionAffinityConfig.clientIP.timeoutSeconds``,
while that endpoint stays ready (``sessionAffinity: ClientIP``). Issue 5 puts a latency-aware
balancer behind the same Protocol. Pure bookkeeping: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

Endpoint = tuple[str, int]  # (ip, port)
_PRUNE_EVERY = 1024  # new affinity entries between sweeps of the expired ones


class Balancer(Protocol):
    """The choice of endpoint for the connections to one VIP port."""

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        """The ready endpoints now (possibly none)."""
        ...

    def candidates(self, client_ip: str) -> Sequence[Endpoint]:
        """Every ready endpoint, in the order a new connection from ``client_ip`` tries them."""
        ...

    def connected(self, client_ip: str, endpoint: Endpoint) -> None:
        """The connection from ``client_ip`` went to ``endpoint``."""
        ...


class RoundRobin:
    """Each new connection starts one endpoint further; the fallbacks follow in ring order."""

    __slots__ = ("_endpoints", "_next")

    def __init__(self, endpoints: Sequence[Endpoint] = ()) -> None:
        self._endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self._next = 0

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = tuple(endpoints)

    def candidates(self, client_ip: str) -> Sequence[Endpoint]:
        endpoints = self._endpoints
        if len(endpoints) < 2:
            return endpoints
        start = self._next % len(endpoints)
        self._next = start + 1
        return endpoints[start:] + endpoints[:start]

    def connected(self, client_ip: str, endpoint: Endpoint) -> None:
        pass


class ClientIpAffinity:
    """``sessionAffinity: ClientIP``: a client IP sticks to its endpoint for ``timeout_s`` after
    its last new connection, as long as that endpoint is ready; otherwise ``inner`` chooses."""

    __slots__ = ("_clock", "_inner", "_ready", "_sticky", "_timeout_s", "_unpruned")

    def __init__(self, inner: Balancer, *, timeout_s: float, clock: Callable[[], float]) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self._clock = clock
        self._ready: frozenset[Endpoint] = frozenset()
        self._sticky: dict[str, tuple[Endpoint, float]] = {}  # client IP -> (endpoint, expiry)
        self._unpruned = 0

    def update(self, endpoints: Sequence[Endpoint]) -> None:
        self._inner.update(endpoints)
        self._ready = frozenset(endpoints)
        gone = [ip for ip, (endpoint, _) in self._sticky.items() if endpoint not in self._ready]
        for ip in gone:
            del self._sticky[ip]

    def candidates(self, client_ip: str) -> Sequence[Endpoint]:
        ordered = self._inner.candidates(client_ip)
        sticky = self._sticky.get(client_ip)
        if sticky is None:
            return ordered
        endpoint, expiry_s = sticky
        if expiry_s <= self._clock() or endpoint not in self._ready:
            del self._sticky[client_ip]
            return ordered
        return (endpoint, *(other for other in ordered if other != endpoint))

    def connected(self, client_ip: str, endpoint: Endpoint) -> None:
        self._inner.connected(client_ip, endpoint)
        now_s = self._clock()
        if client_ip not in self._sticky:
            self._unpruned += 1
            if self._unpruned >= _PRUNE_EVERY:
                self._prune(now_s)
        self._sticky[client_ip] = (endpoint, now_s + self._timeout_s)

    def _prune(self, now_s: float) -> None:
        self._unpruned = 0
        expired = [ip for ip, (_, expiry_s) in self._sticky.items() if expiry_s <= now_s]
        for ip in expired:
            del self._sticky[ip]
