"""Distributed tracing through the mesh: trace context in and out, one span per hop, kept spans.

Every call through the mesh is one hop and one span, of kind ``server``. ``Tracer.start`` reads
the trace context the request came with: W3C ``traceparent`` (version 00, or a later version
read as 00 as the Trace Context spec says) with its ``tracestate``, else B3 (the single ``b3``
header or the ``x-b3-*`` headers); a malformed context (bad hex, wrong lengths, all-zero ids,
version ff, two ``traceparent`` headers) counts as none, and the call starts a new trace. The
span's parent is the incoming span id. ``with_trace_headers`` gives the upstream request this
hop's context instead of the incoming one (``traceparent`` always, ``tracestate`` as received,
B3 in the form(s) it came in), so the next hop's span is a child of this one. ``Tracer.finish``
ends the span, keeps it in the ``TraceStore`` (``trace_store``: ``funcmesh traces``) and hands
it to the exporter (OTLP, ``tracing_export``) when one is set.

Sampling: an incoming sampled flag is obeyed (an unsampled call still propagates its context,
flags 00, so later hops do not sample it either); a new trace, or a B3 context that leaves the
decision to us, is sampled when the low 64 bits of its trace id fall under ``sample_ratio``
(OpenTelemetry's TraceIdRatioBased, so every hop that decides decides alike). Unsampled spans
are neither kept nor exported.

Span names follow Istio's (Envoy's default decorator): ``hello.default.svc.cluster.local:8080/*``;
attributes follow OpenTelemetry's HTTP semantic conventions (``http.request.method``,
``url.path``, ``http.response.status_code``, ``server.address`` ...) plus ``funcmesh.*`` for the
mesh's own (service, namespace, workload, upstream host and cluster, response flags, route).
A value never comes from a request body or a query string (which may carry secrets).

The hot path: ids come from ``os.urandom`` in batches, parsing looks at each header once, and
start + outgoing headers + finish cost a few microseconds. Nothing here logs, does I/O or
creates tasks; the wall clock (nanoseconds) is passed in.
"""

from __future__ import annotations

import binascii
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from funcmesh.mesh.telemetry import UNKNOWN, RequestRecord

if TYPE_CHECKING:
    from funcmesh.mesh.trace_store import TraceStore

AttributeValue = str | int
Attributes = dict[str, AttributeValue]
HeaderList = Sequence[tuple[bytes, bytes]]

SERVER = "server"
TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3 = b"b3"
B3_TRACE_ID = b"x-b3-traceid"
B3_SPAN_ID = b"x-b3-spanid"
B3_PARENT_SPAN_ID = b"x-b3-parentspanid"
B3_SAMPLED = b"x-b3-sampled"
B3_FLAGS = b"x-b3-flags"
TRACE_HEADERS = frozenset(
    {TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_FLAGS}
)
MAX_TRACESTATE_BYTES = 4096  # the spec asks for 512 at least; more is dropped, not cut
ID_BATCH_BYTES = 4096
# HTTP methods OpenTelemetry knows; any other is reported as _OTHER with the original beside it
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)

_HEX = b"0123456789abcdef"
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
_ZERO_TRACE_ID = bytes(16)
_ZERO_SPAN_ID = bytes(8)
_ALL_SAMPLED = 1 << 64
_NOT_GIVEN = 2  # a sampling decision nobody made yet (neither 0 nor 1)


@dataclass(slots=True, kw_only=True, eq=False)
class Span:
    """One hop of a trace; mutable until ``Tracer.finish``.

    Ids are raw bytes (16 and 8), times wall-clock nanoseconds since the epoch, ``status`` the
    HTTP status answered (0: none was sent). ``b3_multi`` and ``b3_single`` say in which forms
    the request carried B3, ``tracestate`` what it carried beside a valid ``traceparent``.
    """

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: str
    start_ns: int
    sampled: bool
    attributes: Attributes
    end_ns: int = 0
    status: int = 0
    debug: bool = False  # B3's debug flag: sampled, and said so downstream
    tracestate: bytes = b""
    b3_multi: bool = False
    b3_single: bool = False
    had_context: bool = False  # the request carried trace headers: replace them upstream
    # a mesh call's record, its name and attributes not drawn from it yet (``settle``)
    record: RequestRecord | None = None

    def settle(self) -> Span:
        """Draw the name and attributes from the call's record, if not done yet: deferred from
        the request's path to the first reader (the store's queries, the exporter)."""
        record = self.record
        if record is not None:
            self.record = None
            self.name = span_name(record)
            self.attributes = {**call_attributes(record), **self.attributes}
        return self

    @property
    def duration_ns(self) -> int:
        return max(self.end_ns - self.start_ns, 0) if self.end_ns else 0


class Incoming(NamedTuple):
    """The trace context a request came with (ids None: none, or none valid); a tuple because
    it is built per request."""

    trace_id: bytes | None = None
    parent_span_id: bytes | None = None
    sampled: int = _NOT_GIVEN  # 0, 1 or _NOT_GIVEN
    debug: bool = False
    tracestate: bytes = b""
    b3_multi: bool = False
    b3_single: bool = False
    had_context: bool = False


NO_CONTEXT = Incoming()


class SpanSink(Protocol):
    """Where finished spans go besides the store (the OTLP exporter)."""

    def export(self, span: Span) -> None: ...


class IdSource:
    """Random ids cut from one ``os.urandom`` batch at a time (one system call per ~170 spans)."""

    __slots__ = ("_at", "_batch_bytes", "_buffer", "_random_bytes")

    def __init__(
        self,
        random_bytes: Callable[[int], bytes] = os.urandom,
        *,
        batch_bytes: int = ID_BATCH_BYTES,
    ) -> None:
        self._random_bytes = random_bytes
        self._batch_bytes = batch_bytes
        self._buffer = b""
        self._at = 0

    def take(self, size: int, zero: bytes) -> bytes:
        """``size`` random bytes, never all zero (an all-zero id is invalid)."""
        while True:
            at = self._at
            end = at + size
            if end > len(self._buffer):
                self._buffer = self._random_bytes(max(self._batch_bytes, size))
                at, end = 0, size
            self._at = end
            value = self._buffer[at:end]
            if value != zero:
                return value


class Tracer:
    """Starts and finishes the spans of mesh calls."""

    def __init__(
        self,
        store: TraceStore | None,
        *,
        exporter: SpanSink | None = None,
        sample_ratio: float = 1.0,
        clock_ns: Callable[[], int] = time.time_ns,
        ids: IdSource | None = None,
    ) -> None:
        if not 0.0 <= sample_ratio <= 1.0:
            raise ValueError(f"sample_ratio must be from 0 to 1, got {sample_ratio}")
        self.store = store
        self.exporter = exporter
        self._bound = round(sample_ratio * _ALL_SAMPLED)
        self._clock_ns = clock_ns
        self._ids = ids or IdSource()

    def start(
        self,
        headers: HeaderList,
        *,
        name: str = "",
        kind: str = SERVER,
        attributes: Attributes | None = None,
    ) -> Span:
        """A span for a request that arrived with ``headers`` (the hot path)."""
        incoming = parse_context(headers) if headers else NO_CONTEXT
        trace_id = incoming.trace_id or self._ids.take(16, _ZERO_TRACE_ID)
        sampled = incoming.sampled
        if sampled == _NOT_GIVEN:
            sampled = int(int.from_bytes(trace_id[8:], "big") < self._bound)
        return Span(
            trace_id=trace_id,
            span_id=self._ids.take(8, _ZERO_SPAN_ID),
            parent_span_id=incoming.parent_span_id,
            name=name,
            kind=kind,
            start_ns=self._clock_ns(),
            sampled=bool(sampled),
            debug=incoming.debug,
            attributes=attributes if attributes is not None else {},
            tracestate=incoming.tracestate,
            b3_multi=incoming.b3_multi,
            b3_single=incoming.b3_single,
            had_context=incoming.had_context,
        )

    def finish(
        self,
        span: Span,
        *,
        status: int,
        attributes: Mapping[str, AttributeValue] | None = None,
        end_ns: int | None = None,
    ) -> None:
        """End ``span`` with the HTTP ``status`` answered; keep and export it when sampled."""
        span.end_ns = end_ns if end_ns is not None else self._clock_ns()
        span.status = status
        if attributes:
            span.attributes.update(attributes)
        if not span.sampled:
            return
        if self.store is not None:
            self.store.add(span)
        if self.exporter is not None:
            self.exporter.export(span)

    def finish_call(self, span: Span, record: RequestRecord) -> None:
        """End the span of a mesh call from its finished ``RequestRecord``: Istio's span name,
        the HTTP and mesh attributes, the end time from the record's duration."""
        if not span.sampled:  # nobody will read the name or the attributes
            span.end_ns, span.status = self._clock_ns(), record.response_code
            return
        span.record = record  # the name and attributes are drawn when first read
        end_ns = span.start_ns + int(record.duration_s * 1e9) if record.duration_s else None
        self.finish(span, status=record.response_code, end_ns=end_ns)


# incoming context


def parse_context(headers: HeaderList) -> Incoming:
    """The trace context of a request's headers: W3C first, then B3 single, then B3 multi."""
    traceparent: bytes | None = None
    parents = 0
    tracestate: list[bytes] = []
    b3: dict[bytes, bytes] = {}
    for name, value in headers:
        lower = name.lower()
        if lower not in TRACE_HEADERS:
            continue
        if lower == TRACEPARENT:
            traceparent, parents = value, parents + 1
        elif lower == TRACESTATE:
            tracestate.append(value.strip())
        else:
            b3[lower] = value.strip()
    if traceparent is None and not b3:
        return NO_CONTEXT if not tracestate else Incoming(had_context=True)
    w3c = parse_traceparent(traceparent) if traceparent is not None and parents == 1 else None
    b3_single, b3_multi = B3 in b3, len(b3) > (B3 in b3)
    if w3c is not None:
        trace_id, parent, flags = w3c
        state = b",".join(part for part in tracestate if part)
        return Incoming(
            trace_id=trace_id,
            parent_span_id=parent,
            sampled=flags & 1,
            tracestate=state if len(state) <= MAX_TRACESTATE_BYTES else b"",
            b3_multi=b3_multi,
            b3_single=b3_single,
            had_context=True,
        )
    b3_context = parse_b3_single(b3[B3]) if b3_single else None
    if b3_context is None and b3_multi:
        b3_context = parse_b3_multi(b3)
    if b3_context is None:
        return Incoming(b3_multi=b3_multi, b3_single=b3_single, had_context=True)
    b3_trace_id, b3_parent, sampled, debug = b3_context
    return Incoming(
        trace_id=b3_trace_id,
        parent_span_id=b3_parent,
        sampled=sampled,
        debug=debug,
        b3_multi=b3_multi,
        b3_single=b3_single,
        had_context=True,
    )


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, int] | None:
    """(trace id, parent id, flags) of a W3C ``traceparent``, None when it is invalid.

    ``version-traceid-parentid-flags`` in lower-case hex; version 00 is exactly 55 characters,
    a later version (not ff) is read as 00 when what follows the flags starts with ``-``.
    """
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_hex, parent_hex, flags_hex, rest = match.groups()
    if version == b"ff" or (rest is not None and version == b"00"):
        return None
    trace_id, parent = binascii.unhexlify(trace_hex), binascii.unhexlify(parent_hex)
    if trace_id == _ZERO_TRACE_ID or parent == _ZERO_SPAN_ID:
        return None
    return trace_id, parent, int(flags_hex, 16)


def parse_b3_single(value: bytes) -> tuple[bytes | None, bytes | None, int, bool] | None:
    """(trace id, span id, sampled, debug) of a ``b3`` header: ``{trace}-{span}[-{sampling}
    [-{parent}]]``, or a sampling decision alone (``0``, ``1``, ``d``); None when invalid."""
    parts = value.lower().split(b"-")
    if len(parts) == 1:
        sampling = _b3_sampling(parts[0])
        return None if sampling is None else (None, None, *sampling)
    if len(parts) > 4:
        return None
    trace_id, span_id = _b3_trace_id(parts[0]), _b3_span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampling = _b3_sampling(parts[2]) if len(parts) > 2 else (_NOT_GIVEN, False)
    if sampling is None or (len(parts) == 4 and _b3_span_id(parts[3]) is None):
        return None
    return trace_id, span_id, *sampling


def parse_b3_multi(headers: Mapping[bytes, bytes]) -> tuple[bytes | None, bytes | None, int, bool]:
    """(trace id, span id, sampled, debug) of the ``x-b3-*`` headers; ids None when they are
    missing or invalid (a sampling decision may still stand)."""
    debug = headers.get(B3_FLAGS) == b"1"
    sampled = _NOT_GIVEN
    if debug:
        sampled = 1
    elif B3_SAMPLED in headers:
        decision = {b"1": 1, b"true": 1, b"0": 0, b"false": 0}.get(headers[B3_SAMPLED].lower())
        sampled = _NOT_GIVEN if decision is None else decision
    trace_id = _b3_trace_id(headers.get(B3_TRACE_ID, b"").lower())
    span_id = _b3_span_id(headers.get(B3_SPAN_ID, b"").lower())
    if trace_id is None or span_id is None:
        return None, None, sampled, debug
    return trace_id, span_id, sampled, debug


def _b3_trace_id(text: bytes) -> bytes | None:
    """A 64-bit id is left-padded to 128 bits, as OpenTelemetry's B3 propagator does."""
    if len(text) not in (16, 32) or not _is_lower_hex(text):
        return None
    trace_id = binascii.unhexlify(text).rjust(16, b"\0")
    return None if trace_id == _ZERO_TRACE_ID else trace_id


def _b3_span_id(text: bytes) -> bytes | None:
    if len(text) != 16 or not _is_lower_hex(text):
        return None
    span_id = binascii.unhexlify(text)
    return None if span_id == _ZERO_SPAN_ID else span_id


def _b3_sampling(text: bytes) -> tuple[int, bool] | None:
    return {b"0": (0, False), b"1": (1, False), b"d": (1, True)}.get(text)


def _is_lower_hex(text: bytes) -> bool:
    return bool(text) and not text.translate(None, _HEX)


# outgoing context


def outgoing_headers(span: Span) -> list[tuple[bytes, bytes]]:
    """The trace headers the upstream request carries for ``span``'s hop: ``traceparent``
    always, ``tracestate`` as received, B3 in each form the request came with."""
    trace_hex, span_hex = span.trace_id.hex().encode(), span.span_id.hex().encode()
    headers = [
        (TRACEPARENT, b"00-%s-%s-%s" % (trace_hex, span_hex, b"01" if span.sampled else b"00"))
    ]
    if span.tracestate:
        headers.append((TRACESTATE, span.tracestate))
    if span.b3_multi:
        headers += ((B3_TRACE_ID, trace_hex), (B3_SPAN_ID, span_hex))
        if span.parent_span_id is not None:
            headers.append((B3_PARENT_SPAN_ID, span.parent_span_id.hex().encode()))
        # B3: debug implies sampled, and X-B3-Sampled is not sent beside it
        headers.append((B3_FLAGS, b"1") if span.debug else (B3_SAMPLED, b"%d" % span.sampled))
    if span.b3_single:
        sampling = b"d" if span.debug else b"1" if span.sampled else b"0"
        single = b"%s-%s-%s" % (trace_hex, span_hex, sampling)
        if span.parent_span_id is not None:
            single += b"-" + span.parent_span_id.hex().encode()
        headers.append((B3, single))
    return headers


def traceparent_line(span: Span) -> bytes:
    """The ``traceparent`` header line (CRLF included) of a span started without incoming
    context: all such a request needs upstream, added to its head as it is written."""
    flags = b"01" if span.sampled else b"00"
    return b"traceparent: 00-%s-%s-%s\r\n" % (
        span.trace_id.hex().encode(),
        span.span_id.hex().encode(),
        flags,
    )


def with_trace_headers(headers: HeaderList, span: Span) -> list[tuple[bytes, bytes]]:
    """``headers`` for the upstream request: the incoming trace headers replaced by this hop's."""
    if span.had_context:
        kept = [(name, value) for name, value in headers if name.lower() not in TRACE_HEADERS]
    else:
        kept = list(headers)
    kept += outgoing_headers(span)
    return kept


# span names and attributes


def span_name(record: RequestRecord) -> str:
    """Istio's span name: ``HOST:PORT/*`` of the destination (the port from the upstream
    cluster ``outbound|PORT|SUBSET|HOST``), else of the request's authority."""
    host = record.destination_service
    if host in ("", UNKNOWN):
        authority = record.authority.decode("latin-1") or "-"
        return f"{authority}/*"
    port = record.upstream_cluster.split("|", 2)[1] if record.upstream_cluster.count("|") else ""
    return f"{host}:{port}/*" if port else f"{host}/*"


def call_attributes(record: RequestRecord) -> Attributes:
    """OpenTelemetry's HTTP server attributes and funcmesh's mesh attributes of a call."""
    method = record.method.decode("latin-1")
    attributes: Attributes = {
        "http.request.method": method if method in KNOWN_METHODS else "_OTHER",
        "url.path": record.path.partition(b"?")[0].decode("utf-8", "backslashreplace"),
        "network.protocol.version": record.protocol.decode("latin-1").rpartition("/")[2],
    }
    if method not in KNOWN_METHODS:
        attributes["http.request.method_original"] = method
    status = record.response_code
    if status:
        attributes["http.response.status_code"] = status
    if status >= 500 or not status:
        attributes["error.type"] = str(status) if status else "no_response"
    host, port = _host_and_port(record.authority.decode("latin-1"))
    _put(attributes, "server.address", host)
    if port:
        attributes["server.port"] = port
    _put(attributes, "client.address", record.downstream_remote.rpartition(":")[0])
    _put(attributes, "user_agent.original", record.user_agent.decode("latin-1"))
    _put(attributes, "funcmesh.service", record.destination_service)
    _put(attributes, "funcmesh.service.name", record.destination_service_name)
    _put(attributes, "funcmesh.namespace", record.destination_service_namespace)
    _put(attributes, "funcmesh.workload", record.destination_workload)
    _put(attributes, "funcmesh.source.workload", record.source_workload)
    _put(attributes, "funcmesh.upstream.host", record.upstream_host)
    _put(attributes, "funcmesh.upstream.cluster", record.upstream_cluster)
    _put(attributes, "funcmesh.route", record.route_name)
    _put(attributes, "funcmesh.request_id", record.request_id.decode("latin-1"))
    attributes["funcmesh.response_flags"] = record.response_flags or "-"
    return attributes


def _put(attributes: Attributes, key: str, value: str) -> None:
    if value and value != "-" and value != UNKNOWN:
        attributes[key] = value


def _host_and_port(authority: str) -> tuple[str, int]:
    host, colon, port = authority.rpartition(":")
    if not colon or not port.isdigit() or (host.startswith("[") != host.endswith("]")):
        return authority, 0  # no port, or an IPv6 literal without one
    return host.strip("[]"), int(port)
