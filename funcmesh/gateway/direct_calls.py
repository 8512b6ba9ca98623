"""A function call with no mesh rule on its way: one attempt, relayed straight, measured.

The gateway's most common call (``/function/NAME``, a function's VIP, an HTTPTrigger, with no
VirtualService or DestinationRule for the function) needs none of a routed call's machinery
(destinations, retries, faults, mirrors, header operations): ``DirectCall`` is the client's
responder for its one attempt, so the answer goes through one thin layer that notes the status
and the bytes, and the call is counted, logged and traced like any call through the mesh
(``mesh_calls.MeshPlane.record``). AuthorizationPolicy is checked before the attempt.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from funcmesh.controllers.function_services import DEFAULT_PORT
from funcmesh.gateway.backends import Backend
from funcmesh.gateway.mesh_records import answer_locally, describe_upstream, record_of, start_span
from funcmesh.gateway.messages import BodyFraming, Headers, Request
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.gateway.upstream import ResponseSource
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.tracing import Span

if TYPE_CHECKING:
    from funcmesh.gateway.mesh_plane import MeshPlane


@functools.lru_cache(maxsize=4096)
def service_names(namespace: str, name: str, port: int) -> tuple[str, str, str, str]:
    """A function's Service host, its Envoy cluster, its name and namespace: made once per
    function, so every record of its calls shares the same (already hashed) strings."""
    host = f"{name}.{namespace}.svc.cluster.local"
    return host, f"outbound|{port}||{host}", name, namespace


class DirectCall:
    """One call of one function through the gateway, answered by the function or a failure."""

    __slots__ = (
        "_backend",
        "_bytes_sent",
        "_cause",
        "_client",
        "_extra_head",
        "_plane",
        "_request",
        "_route",
        "_span",
        "_started_s",
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
        self._backend = backend
        self._route = route
        self._client = client
        self._status = 0
        self._cause = ""
        self._bytes_sent = 0
        self._started_s = plane.loop.time()
        trace_headers: list[tuple[bytes, bytes]] = []
        record = self.record = record_of(request, trace_headers)
        (
            record.destination_service,
            record.upstream_cluster,
            record.destination_service_name,
            record.destination_service_namespace,
        ) = service_names(route.namespace, route.name, port or DEFAULT_PORT)
        self._span: Span | None
        self._span, self._request, self._extra_head = start_span(
            plane.tracer, request, trace_headers
        )

    def start(self) -> None:
        access = self._plane.access
        if access is not None:
            denial = access.check(self._backend, self._request, self._route.target, service_port=0)
            if denial is not None:
                self.record.response_code_details = denial.details
                sent = answer_locally(
                    self._client, self._request, denial.status, denial.body, plain=True
                )
                self._finish(denial.status, sent)
                return
        self._plane.relay.call(
            self._backend, self._route, self._request, self, extra_head=self._extra_head
        )

    def _finish(self, status: int, bytes_sent: int) -> None:
        record: RequestRecord = self.record
        record.response_code = status
        record.response_flags = self._cause or "-"
        record.bytes_sent = bytes_sent
        record.duration_s = self._plane.loop.time() - self._started_s
        self._plane.record(record, self._span)
        self._client.end_call()

    # the attempt's responder: straight to the client

    @property
    def client_gone(self) -> bool:
        return self._client.client_gone

    @property
    def response_started(self) -> bool:
        return self._client.response_started

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: BodyFraming,
        source: ResponseSource,
    ) -> bool:
        self._status = status
        return self._client.start_response(status, reason, headers, framing, source)

    def send_body(self, data: bytes) -> None:
        self._bytes_sent += len(data)
        self._client.send_body(data)

    def end_response(self) -> None:
        self._client.end_response()

    def flush(self) -> None:
        self._client.flush()

    def send_error(
        self, status: int, message: str, *, function: str | None = None, cause: str = ""
    ) -> None:
        self._status = status
        self._cause = cause
        self._client.send_error(status, message, function=function, cause=cause)

    def abort(self) -> None:
        self._client.abort()

    def end_call(self) -> None:
        upstream_time = self._plane.loop.time() - self._started_s
        self.record.upstream_service_time_s = upstream_time
        describe_upstream(self.record, self._backend, self._cause)
        self._finish(self._status, self._bytes_sent)
