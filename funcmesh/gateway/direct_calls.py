"""A function call with no mesh rule on its way: one attempt, relayed straight, measured.

The gateway's most common call (``/function/NAME``, a function's VIP, an HTTPTrigger, with no
VirtualService or DestinationRule for the function) needs none of a routed call's machinery
(destinations, retries, faults, mirrors, header operations): ``DirectCall`` is the relay's
``proxy.Call`` itself, with the client as the instance's sink (no layer between them: this is
the gateway's hot path). It learns the status and the body bytes from the upstream connection
and the cause from the call's failure, and the call is counted, logged and traced like any
call through the mesh (``mesh_plane.MeshPlane.record``) when it ends. AuthorizationPolicy is
checked before the attempt.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from funcmesh.controllers.function_services import DEFAULT_PORT
from funcmesh.errors import FuncmeshError
from funcmesh.gateway.backends import Backend
from funcmesh.gateway.mesh_records import answer_locally, describe_upstream, record_of, start_span
from funcmesh.gateway.messages import Request
from funcmesh.gateway.proxy import Call, Responder
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.gateway.upstream import UpstreamConnection
from funcmesh.mesh.hosts import service_host
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.tracing import Span

if TYPE_CHECKING:
    from funcmesh.gateway.mesh_plane import MeshPlane


@functools.lru_cache(maxsize=4096)
def service_names(namespace: str, name: str, port: int) -> tuple[str, str, str, str]:
    """A function's Service host, its Envoy cluster, its name and namespace: made once per
    function, so every record of its calls shares the same (already hashed) strings."""
    host = service_host(namespace, name)
    return host, f"outbound|{port}||{host}", name, namespace


class DirectCall(Call):
    """One call of one function through the gateway, answered by the function or a failure.

    Its record says what the client got, as a responder in between would have seen it: the
    status of the instance's response head (even when the client left before it could be
    relayed) or of the gateway's error answer (0: neither), the response body bytes relayed,
    and the cause of a failure the gateway answered (not of one that cut a started response).
    """

    __slots__ = (
        "_began_s",
        "_bytes_sent",
        "_cause",
        "_peer",
        "_plane",
        "_span",
        "_status",
        "record",
    )

    def __init__(
        self,
        plane: MeshPlane,
        backend: Backend,
        route: FunctionRoute,
        request: Request,
        client: Responder,
        *,
        port: int = 0,
    ) -> None:
        self._plane = plane
        self._status = 0
        self._cause = ""
        self._bytes_sent = 0
        self._peer = ""  # the instance that answered: Envoy's %UPSTREAM_HOST%
        self._began_s = plane.loop.time()
        trace_headers: list[tuple[bytes, bytes]] = []
        record = self.record = record_of(request, trace_headers)
        (
            record.destination_service,
            record.upstream_cluster,
            record.destination_service_name,
            record.destination_service_namespace,
        ) = service_names(route.namespace, route.name, port or DEFAULT_PORT)
        self._span: Span | None
        self._span, request, extra_head = start_span(plane.tracer, request, trace_headers)
        Call.__init__(self, plane.relay, backend, route, request, client, extra_head=extra_head)

    def run(self) -> None:
        """Check AuthorizationPolicy, then relay the call; ``client.end_call()`` follows."""
        access = self._plane.access
        if access is not None:
            denial = access.check(self._backend, self._request, self._route.target, service_port=0)
            if denial is not None:
                self.record.response_code_details = denial.details
                sent = answer_locally(
                    self._responder, self._request, denial.status, denial.body, plain=True
                )
                self._finish(denial.status, sent, self._plane.loop.time())
                self._responder.end_call()
                return
        self._relay.start(self)

    def _finish(self, status: int, bytes_sent: int, now_s: float) -> None:
        record: RequestRecord = self.record
        record.response_code = status
        record.response_flags = self._cause or "-"
        record.bytes_sent = bytes_sent
        record.duration_s = now_s - self._began_s
        self._plane.record(record, self._span)

    # what the call learns on its way (the base class called by name: cheaper than super())

    def exchange_done(self, connection: UpstreamConnection, status: int) -> None:
        self._note(connection)
        Call.exchange_done(self, connection, status)

    def exchange_failed(self, connection: UpstreamConnection, error: FuncmeshError) -> None:
        self._note(connection)
        Call.exchange_failed(self, connection, error)

    def _abort_connection(self) -> None:
        if self._connection is not None:  # cut or crashed in the middle of an exchange
            self._note(self._connection)
        Call._abort_connection(self)

    def _note(self, connection: UpstreamConnection) -> None:
        """What one exchange relayed to the client (a retried one relayed nothing)."""
        if connection.status:
            self._status = connection.status
            self._peer = connection.peer
        self._bytes_sent += connection.body_bytes

    def _fail(self, status: int, message: str, *, cause: str = "") -> None:
        if not self._ended and not self._responder.response_started:  # answered with an error
            self._status, self._cause = status, cause
        Call._fail(self, status, message, cause=cause)

    def _end(self, status: int, *, ok: bool) -> None:
        if not self._ended:  # recorded before the client may go on with its next request
            record = self.record
            now_s = self._plane.loop.time()
            record.upstream_service_time_s = now_s - self._began_s
            describe_upstream(record, self._backend, self._cause, self._peer)
            self._finish(self._status, self._bytes_sent, now_s)
        Call._end(self, status, ok=ok)
