"""One request through the mesh: a route's fault, destination, attempts, retries and mirror.

``MeshCall`` runs a request under a VirtualService route (or the default route to a Service):
it injects the route's fault, picks a weighted destination, sends the rewritten request with
the route's header operations through ``relay.Relay`` to the member its destination's
``EndpointSet`` chooses, and retries as the route says (``retryOn`` with Envoy's conditions, a
per-try and an overall timeout, a jittered back-off, a budget per host) on another member when
there is one. Each attempt answers through an ``Attempt``: it relays the response to the
client, or swallows it when the call will be retried, and applies the route's response header
operations. What every mesh call shares is the ``mesh_plane.MeshPlane``; a call without mesh
rules is a ``direct_calls.DirectCall``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING

from funcmesh.errors import Unavailable
from funcmesh.gateway.backends import Backend
from funcmesh.gateway.destinations import Resolved
from funcmesh.gateway.mesh_attempts import (
    Attempt,
    Shadow,
    retriable,
)
from funcmesh.gateway.mesh_records import (
    answer_locally,
    describe_upstream,
    record_of,
    start_span,
)
from funcmesh.gateway.messages import Headers, Request
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.mesh import telemetry as tm
from funcmesh.mesh.endpoint_sets import Overflow
from funcmesh.mesh.routes import (
    DEFAULT_RETRIES,
    NO_HEADER_OPERATIONS,
    CompiledRoute,
    WeightedDestination,
)

if TYPE_CHECKING:
    from funcmesh.gateway.mesh_plane import MeshPlane

logger = logging.getLogger(__name__)

RETRY_BASE_S = 0.025  # Envoy's default back-off: base 25 ms, at most 10 times that
RETRY_MAX_S = 0.25
_OVERFLOW_HEADER = (b"x-funcmesh-overflow", b"true")


class MeshCall:
    """One client request and its attempts; answers the client exactly once."""

    __slots__ = (
        "_attempts_left",
        "_deadline_s",
        "_ended",
        "_extra_head",
        "_flags",
        "_hash_key",
        "_last",
        "_plane",
        "_port",
        "_request",
        "_resolved",
        "_route",
        "_sent",
        "_set_cookie",
        "_span",
        "_started_s",
        "_target",
        "_timer",
        "_tries",
        "_waiter",
        "client",
        "record",
    )

    def __init__(
        self,
        plane: MeshPlane,
        route: CompiledRoute,
        target: bytes,
        request: Request,
        client: Responder,
        *,
        port: int = 0,
    ) -> None:
        self._plane = plane
        self._route = route
        self._target = target
        self._request = request
        self.client = client
        self._port = port
        self._resolved: Resolved | None = None
        self._hash_key: bytes | None = None  # the consistent hash's key, once per call
        self._set_cookie: tuple[bytes, bytes] | None = None  # a sticky cookie given out
        self._last: Backend | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._flags: list[str] = []
        self._tries = 0
        self._attempts_left = 0
        self._started_s = plane.loop.time()
        self._deadline_s: float | None = None
        self._ended = False
        trace_headers: list[tuple[bytes, bytes]] = []
        self.record = record_of(request, trace_headers)
        self._span, self._request, self._extra_head = start_span(
            plane.tracer, request, trace_headers
        )
        self._sent = self._request  # as the route sends it (_begin)

    # the start: fault, destination, mirror

    def start(self) -> None:
        route = self._route
        fault = route.fault
        if fault is not None:
            draw = self._plane.draw
            if fault.abort_status is not None and draw() * 100 < fault.abort_percent:
                self._flags.append("FI")
                self.record.response_code_details = tm.FAULT_FILTER_ABORT
                self._answer_local(fault.abort_status, "fault filter abort")
                return
            if fault.delay_s and draw() * 100 < fault.delay_percent:
                self._flags.append("DI")
                self._wait(fault.delay_s)
                return
        self._begin()

    def _begin(self) -> None:
        route = self._route
        plane = self._plane
        destination = route.pick(plane.draw())
        assert plane.destinations is not None  # calls with a route come from a mesh
        resolved = plane.destinations.resolve(destination, port=self._port)
        self._resolved = resolved
        record = self.record
        record.destination_service = resolved.host
        record.destination_service_name = resolved.service
        record.destination_service_namespace = resolved.namespace
        record.upstream_cluster = resolved.cluster
        record.route_name = route.name or "-"
        if resolved.problem:
            self.record.response_code_details = tm.NO_HEALTHY_UPSTREAM_DETAILS
            self._answer_local(503, f"no healthy upstream: {resolved.problem}", flag="UH")
            return
        resolved.budget.deposit()
        if resolved.hash_key is not None:
            self._hash_key = self._hash_key_of(resolved)
        if route.request_headers.active or route.rewrite_authority:
            self._sent = self._outgoing()  # once for every attempt and the mirror
        retries = route.retries
        self._attempts_left = retries.attempts if retries is not None else 0
        if route.timeout_s:
            self._deadline_s = self._started_s + route.timeout_s
        if route.mirror is not None and plane.draw() * 100 < route.mirror_percent:
            self._mirror(route.mirror)
        self._attempt()

    def _mirror(self, mirror: WeightedDestination) -> None:
        """Send a copy to ``mirror`` (Host suffixed ``-shadow``, as Envoy); its answer is
        dropped and its failure costs the call nothing."""
        assert self._plane.destinations is not None
        resolved = self._plane.destinations.resolve(mirror, port=self._port)
        if resolved.problem:
            return
        try:
            member = resolved.members.try_choose(hash_key=None)
        except Unavailable:
            return
        if member is None:
            return
        request = self._sent
        headers = [
            (name, value + b"-shadow" if name.lower() == b"host" else value)
            for name, value in request.headers
        ]
        shadow = request.with_headers(headers)
        sink = Shadow(resolved, member, self._plane.loop.time())
        route = FunctionRoute(
            namespace=resolved.namespace, name=resolved.service, target=self._target
        )
        self._plane.relay.call(member, route, shadow, sink, extra_head=self._extra_head)

    def _hash_key_of(self, resolved: Resolved) -> bytes | None:
        """The request's consistent-hash key; for a sticky cookie the request lacks, a new
        one, which the answer sets (Envoy's ``httpCookie`` with a ``ttl``)."""
        assert resolved.hash_key is not None
        key = resolved.hash_key(self._request)
        if key is None and resolved.sticky_cookie is not None:
            key, self._set_cookie = resolved.sticky_cookie.issue()
        return key

    # attempts

    def _attempt(self) -> None:
        resolved = self._resolved
        assert resolved is not None
        try:
            member = resolved.members.try_choose(hash_key=self._hash_key, exclude=self._last)
        except Overflow as overflow:  # one name per type: mypyc types a name once per function
            self.record.response_code_details = tm.OVERFLOW_DETAILS
            self._answer_local(503, str(overflow), flag="UO", headers=(_OVERFLOW_HEADER,))
            return
        except Unavailable as exc:
            self.record.response_code_details = tm.NO_HEALTHY_UPSTREAM_DETAILS
            self._answer_local(503, str(exc), flag="UH")
            return
        if member is None:
            self._waiter = self._plane.loop.create_task(self._wait_turn(resolved))
            self._waiter.add_done_callback(_log_failure)
            return
        route = FunctionRoute(
            namespace=resolved.namespace, name=resolved.service, target=self._target
        )
        self.send_to(member, route, resolved)

    async def _wait_turn(self, resolved: Resolved) -> None:
        self._plane.waiting.add(self)
        try:  # mypyc mis-compiles a ``return`` in an except clause of an async try-finally
            try:
                await resolved.members.wait_turn()
            finally:
                self._waiter = None
                self._plane.waiting.discard(self)
        except Overflow as overflow:  # one name per type: mypyc types a name once per function
            self.record.response_code_details = tm.OVERFLOW_DETAILS
            self._answer_local(503, str(overflow), flag="UO", headers=(_OVERFLOW_HEADER,))
            return
        except Unavailable as exc:  # the members went away while it waited
            self.record.response_code_details = tm.NO_HEALTHY_UPSTREAM_DETAILS
            self._answer_local(503, str(exc), flag="UH")
            return
        if not self._ended:
            self._attempt()

    def send_to(self, backend: Backend, route: FunctionRoute, resolved: Resolved) -> None:
        """One attempt at ``backend``, a member of ``resolved``."""
        request = self._sent
        access = self._plane.access
        if access is not None:
            denial = access.check(backend, request, route.target, service_port=resolved.port)
            if denial is not None:  # the member was counted in flight: it is done
                resolved.members.finished(backend, latency_s=0.0, status=denial.status)
                self.record.response_code_details = denial.details
                self._answer_local(denial.status, denial.body, plain=True)
                return
        self._tries += 1
        self._last = backend
        timeout_s = self._attempt_timeout()
        attempt = Attempt(self, backend, self._plane.loop.time())
        policy = resolved.policy
        self._plane.relay.call(
            backend,
            route,
            request,
            attempt,
            timeout_s=timeout_s,
            max_exchanges=policy.connection_pool.max_requests_per_connection if policy else 0,
            extra_head=self._extra_head,
        )

    def _attempt_timeout(self) -> float | None:
        route = self._route
        per_try = route.retries.per_try_timeout_s if route.retries else None
        if self._deadline_s is None:
            return per_try
        remaining = max(self._deadline_s - self._plane.loop.time(), 0.001)
        return remaining if per_try is None else min(per_try, remaining)

    def will_retry(self, status: int, cause: str) -> bool:
        """Whether an attempt that ended with ``status`` (``cause``: Envoy's flag of a local
        failure) is retried; spends the budget when it is."""
        route, resolved = self._route, self._resolved
        if route.retries is None or resolved is None:
            return False
        if not retriable(route.retries.retry_on, status, cause):
            return False
        if self._attempts_left <= 0 or self._past_deadline():
            self._flags.append("URX")
            return False
        if not resolved.budget.try_withdraw():
            self._flags.append("URX")
            return False
        self._attempts_left -= 1
        return True

    def attempt_ended(self, attempt: Attempt) -> None:
        resolved = self._resolved
        latency_s = self._plane.loop.time() - attempt.started_s
        if resolved is not None:
            resolved.members.finished(attempt.backend, latency_s=latency_s, status=attempt.status)
        record = self.record
        record.upstream_service_time_s = latency_s
        describe_upstream(record, attempt.backend, attempt.cause, attempt.upstream_host)
        if attempt.retrying and not self._ended:
            backoff_s = self._plane.draw() * min(RETRY_BASE_S * (1 << self._tries), RETRY_MAX_S)
            self._wait(backoff_s, attempt=True)
            return
        if attempt.cause:
            self._flags.append(attempt.cause)
        self._end(attempt.status, bytes_sent=attempt.bytes_sent)

    def _past_deadline(self) -> bool:
        return self._deadline_s is not None and self._plane.loop.time() >= self._deadline_s

    # waiting (fault delay, retry back-off)

    def _wait(self, delay_s: float, *, attempt: bool = False) -> None:
        self._plane.waiting.add(self)
        step = self._attempt if attempt else self._begin
        self._timer = self._plane.loop.call_later(delay_s, self._resume, step)

    def _resume(self, step: object) -> None:
        self._timer = None
        self._plane.waiting.discard(self)
        if self._ended:
            return
        if self.client.client_gone:
            self._end(499, bytes_sent=0)
            return
        try:
            step()  # type: ignore[operator]
        except Exception:
            logger.exception("a mesh call failed")
            self.give_up(500, "internal error in the gateway; see the daemon log")

    def give_up(self, status: int, message: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiter is not None:  # waiting for a free connection: that wait ends too
            self._waiter.cancel()
            self._waiter = None
        self._plane.waiting.discard(self)
        self._answer_local(status, message)

    # the request sent, the answer made here

    def _outgoing(self) -> Request:
        """The request as the route sends it: its header operations and authority applied."""
        route = self._route
        authority = route.rewrite_authority
        headers = route.request_headers.apply(self._request.headers)
        if authority:
            headers = [(n, v) for n, v in headers if n.lower() != b"host"]
            headers.append((b"Host", authority.encode()))
        return self._request.with_headers(headers)

    def response_headers(self, headers: Headers) -> Headers:
        """The upstream's answer as the client gets it: the route's operations applied, then
        the sticky cookie given to this client, if any (after them, as in Envoy)."""
        route = self._route
        operations = route.response_headers
        if operations.active:
            headers = operations.apply(headers)
        if self._set_cookie is not None:
            headers = [*headers, self._set_cookie]
        return headers

    def _answer_local(
        self,
        status: int,
        message: str,
        *,
        flag: str = "",
        headers: Headers = (),
        plain: bool = False,
    ) -> None:
        """Answer ``{"error": message}`` (``plain``: ``message`` as text/plain, as Envoy's
        RBAC filter answers) without an upstream."""
        if self._ended:
            return
        if flag:
            self._flags.append(flag)
        sent = answer_locally(
            self.client, self._request, status, message, headers=headers, plain=plain
        )
        self._end(status, bytes_sent=sent)

    def _end(self, status: int, *, bytes_sent: int) -> None:
        if self._ended:
            return
        self._ended = True
        record = self.record
        record.response_code = status
        record.response_flags = ",".join(self._flags) if self._flags else "-"
        record.bytes_sent = bytes_sent
        record.duration_s = self._plane.loop.time() - self._started_s
        self._plane.record(record, self._span)
        self.client.end_call()


@functools.lru_cache(maxsize=4096)
def default_route(host: str, service: tuple[str, str], port: int = 0) -> CompiledRoute:
    """The route of a Service without VirtualService: all of it, Istio's default retries."""
    destination = WeightedDestination(
        host=host, service=service, subset="", port=port or None, weight=100
    )
    return CompiledRoute(
        virtual_service=("", ""),
        name="default",
        matches=(),
        destinations=(destination,),
        timeout_s=None,
        retries=DEFAULT_RETRIES,
        fault=None,
        rewrite_uri=b"",
        rewrite_authority="",
        request_headers=NO_HEADER_OPERATIONS,
        response_headers=NO_HEADER_OPERATIONS,
        mirror=None,
        mirror_percent=0.0,
    )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("a mesh call failed", exc_info=task.exception())
