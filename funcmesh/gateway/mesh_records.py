"""What every call through the mesh shares, whether routed or direct: its ``RequestRecord``,
its span and trace context, and the answers the mesh writes itself.

``record_of`` fills a call's record from its request in one pass over the headers, finding the
trace headers on the way; ``start_span`` starts the call's span and says how the request goes
upstream with this hop's context; ``describe_upstream`` says in the record which member served
it and how the attempt ended; ``answer_locally`` writes a complete answer of the mesh's own (a
fault, no healthy upstream, an RBAC denial). No I/O beyond the client's connection.
"""

from __future__ import annotations

import functools
import json
import time

from funcmesh.gateway.backends import Backend
from funcmesh.gateway.destinations import EndpointBackend
from funcmesh.gateway.messages import BodyFraming, Headers, Request
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.upstream import NO_SOURCE
from funcmesh.mesh import telemetry as tm
from funcmesh.mesh.authz import namespace_of_principal
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.trace_context import TRACE_HEADERS, with_trace_headers
from funcmesh.mesh.tracing import Span, Tracer

MUTUAL_TLS, PLAINTEXT = "mutual_tls", "none"  # Istio's connection_security_policy
DETAILS = {  # Envoy's response code details of an attempt that ended with a local failure
    "UF": tm.CONNECTION_FAILURE_DETAILS,
    "UC": tm.CONNECTION_TERMINATION_DETAILS,
    "UT": tm.RESPONSE_TIMEOUT,
    "UH": tm.NO_HEALTHY_UPSTREAM_DETAILS,
    "UO": tm.OVERFLOW_DETAILS,
}


def record_of(request: Request, trace_headers: list[tuple[bytes, bytes]]) -> RequestRecord:
    """The call's record from the request; its trace headers are put into ``trace_headers``
    on the way (one pass over the headers for both)."""
    record = RequestRecord(
        start_wall_s=time.time(),
        method=request.method,
        path=request.target,
        downstream_remote=request.client_ip.decode("latin-1"),
    )
    for name, value in request.headers:
        lower = name.lower()
        if lower == b"host":
            record.authority = value
        elif lower == b"user-agent":
            record.user_agent = value
        elif lower == b"x-request-id":
            record.request_id = value
        elif lower == b"x-forwarded-for":
            record.forwarded_for = value
        elif lower in TRACE_HEADERS:
            trace_headers.append((lower, value))
    record.bytes_received = len(request.body)
    if request.mtls:
        record.connection_security_policy = MUTUAL_TLS
        record.requested_server_name = request.server_name
        if request.principal:
            record.source_principal = request.principal
            record.source_namespace = namespace_of_principal(request.principal) or tm.UNKNOWN
    else:
        record.connection_security_policy = PLAINTEXT
    source = request.source
    if source is not None:  # the connection came from a pod's IP (never used for access)
        record.source_workload = source.workload
        record.source_namespace = source.namespace
        record.source_app = source.app
        record.source_version = source.version
    return record


def start_span(
    tracer: Tracer | None, request: Request, trace_headers: list[tuple[bytes, bytes]]
) -> tuple[Span | None, Request, bytes]:
    """The call's span (None: its trace is not sampled), the request to send upstream, and
    header lines to add to its head: a request without trace headers gets one ``traceparent``
    line as its head is written (the common case, no copy); one with them gets them replaced
    by this hop's, in every form."""
    if tracer is None:
        return None, request, b""
    if trace_headers:
        span = tracer.start(trace_headers)
        return span, request.with_headers(with_trace_headers(request.headers, span)), b""
    span_or_none, line = tracer.start_new()
    return span_or_none, request, line


def describe_upstream(record: RequestRecord, backend: Backend, cause: str, peer: str = "") -> None:
    """What the last attempt tells the access log and the metrics about the upstream; ``peer``
    is the address of the function instance that answered ("" when none did). Istio's
    ``destination_app`` and ``destination_version`` are the workload's ``app`` and ``version``
    labels."""
    labels = backend.labels
    record.destination_app = labels.get("app", tm.UNKNOWN)
    record.destination_version = labels.get("version", tm.UNKNOWN)
    if isinstance(backend, EndpointBackend):
        record.upstream_host = backend.address_text
        record.destination_workload = backend.workload
        record.destination_workload_namespace = backend.namespace
    else:
        if peer:
            record.upstream_host = peer
        record.destination_workload_namespace, record.destination_workload = _workload_of(
            backend.display_name
        )
    record.response_code_details = DETAILS.get(cause, tm.VIA_UPSTREAM) if cause else tm.VIA_UPSTREAM


@functools.lru_cache(maxsize=4096)
def _workload_of(display_name: str) -> tuple[str, str]:
    """(namespace, name) of ``namespace/name``, shared by every record of the function."""
    namespace, _, name = display_name.partition("/")
    return namespace, name


def answer_locally(
    client: Responder,
    request: Request,
    status: int,
    message: str,
    *,
    headers: Headers = (),
    plain: bool = False,
) -> int:
    """Answer ``{"error": message}`` (``plain``: ``message`` as text/plain, as Envoy's RBAC
    filter answers) without an upstream; the body's length. A started answer is cut instead."""
    body = message.encode() if plain else json.dumps({"error": message}).encode()
    if client.response_started:
        client.abort()
    elif not client.client_gone:
        content_type = b"text/plain" if plain else b"application/json"
        head = [(b"Content-Type", content_type), *headers]
        head.append((b"Content-Length", b"%d" % len(body)))
        if client.start_response(status, b"", head, BodyFraming.CONTENT_LENGTH, NO_SOURCE):
            if not request.head_only:
                client.send_body(body)
            client.end_response()
    return len(body)
