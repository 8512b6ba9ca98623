"""Distributed tracing through the mesh: one span per hop, sampled, kept and exported.

Every call through the mesh is one hop and one span, of kind ``server``. ``Tracer.start``
reads the trace context the request came with (``trace_context``) and starts its span, a child
of the incoming span; ``Tracer.start_new`` starts a trace for a request that came without any
(the common case) and gives the ``traceparent`` line its upstream request carries, so the next
hop's span is a child of this one. ``Tracer.finish`` ends a span, keeps it in the
``TraceStore`` (``trace_store``: ``funcmesh traces``) and hands it to the exporter (OTLP,
``tracing_export``) when one is set.

Sampling (``Sampler``): an incoming sampled flag is obeyed, so a trace that a hop records is
recorded by every later hop (an unsampled call still propagates its context, flags 00, so later
hops do not sample it either). A new trace, or a B3 context that leaves the decision to us, is
sampled when the low 64 bits of its trace id fall under ``sample_ratio`` (OpenTelemetry's
TraceIdRatioBased, so every hop that decides decides alike) and while fewer than
``traces_per_second`` new traces were sampled in the last second (a token bucket, as Jaeger's
rate-limiting sampler): a user's own calls are all traced, a load test's cost little. A trace
nobody records gets no span object at all, only its ``traceparent`` line. Unsampled spans are
neither kept nor exported.

Span names follow Istio's (Envoy's default decorator): ``hello.default.svc.cluster.local:8080/*``;
attributes follow OpenTelemetry's HTTP semantic conventions (``http.request.method``,
``url.path``, ``http.response.status_code``, ``server.address`` ...) plus ``funcmesh.*`` for the
mesh's own (service, namespace, workload, upstream host and cluster, response flags, route).
A value never comes from a request body or a query string (which may carry secrets).

Nothing here logs, does I/O or creates tasks; the clocks are passed in.
"""

from __future__ import annotations

import binascii
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from funcmesh.mesh.telemetry import UNKNOWN, RequestRecord
from funcmesh.mesh.trace_context import (
    NO_CONTEXT,
    NOT_GIVEN,
    SPAN_ID_HEX,
    TRACE_ID_HEX,
    ZERO_SPAN_ID,
    ZERO_TRACE_ID,
    HeaderList,
    IdSource,
    parse_context,
)

if TYPE_CHECKING:
    from funcmesh.mesh.trace_store import TraceStore

AttributeValue = str | int
Attributes = dict[str, AttributeValue]

SERVER = "server"
TRACES_PER_SECOND = 100.0  # new traces sampled per second at most, by default
# HTTP methods OpenTelemetry knows; any other is reported as _OTHER with the original beside it
KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"}
)
_ALL_SAMPLED = 1 << 64
_LOW_BITS_AT = TRACE_ID_HEX.stop - 16  # the trace id's low 64 bits: its last 16 hex digits


@dataclass(slots=True, kw_only=True, eq=False, init=False)
class Span:
    """One hop of a trace; mutable until ``Tracer.finish``.

    Ids are raw bytes (16 and 8), times wall-clock nanoseconds since the epoch, ``status`` the
    HTTP status answered (0: none was sent). ``b3_multi`` and ``b3_single`` say in which forms
    the request carried B3, ``tracestate`` what it carried beside a valid ``traceparent``.
    Its ``__init__`` is written out: compiled (``funcmesh.native``) it runs in C, where the
    dataclass's would stay interpreted (one span per sampled call).
    """

    trace_id: bytes
    span_id: bytes
    parent_span_id: bytes | None
    name: str
    kind: str
    start_ns: int
    sampled: bool
    attributes: Attributes
    end_ns: int
    status: int
    debug: bool  # B3's debug flag: sampled, and said so downstream
    tracestate: bytes
    b3_multi: bool
    b3_single: bool
    had_context: bool  # the request carried trace headers: replace them upstream
    # a mesh call's record, its name and attributes not drawn from it yet (``settle``)
    record: RequestRecord | None

    def __init__(
        self,
        *,
        trace_id: bytes,
        span_id: bytes,
        parent_span_id: bytes | None,
        name: str,
        kind: str,
        start_ns: int,
        sampled: bool,
        attributes: Attributes,
        end_ns: int = 0,
        status: int = 0,
        debug: bool = False,
        tracestate: bytes = b"",
        b3_multi: bool = False,
        b3_single: bool = False,
        had_context: bool = False,
        record: RequestRecord | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.name = name
        self.kind = kind
        self.start_ns = start_ns
        self.sampled = sampled
        self.attributes = attributes
        self.end_ns = end_ns
        self.status = status
        self.debug = debug
        self.tracestate = tracestate
        self.b3_multi = b3_multi
        self.b3_single = b3_single
        self.had_context = had_context
        self.record = record

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


class SpanSink(Protocol):
    """Where finished spans go besides the store (the OTLP exporter)."""

    def export(self, span: Span) -> None: ...


class Sampler:
    """Which new traces are sampled: those whose trace id falls under ``ratio``, at most
    ``per_second`` of them a second (a bucket of one second's worth, refilled continuously;
    ``math.inf``: no limit). While the bucket is empty it knows when the next token comes,
    so an unsampled call costs one clock read."""

    __slots__ = ("_bound", "_burst", "_clock", "_last_s", "_next_s", "_per_second", "_tokens")

    def __init__(
        self,
        ratio: float = 1.0,
        per_second: float = TRACES_PER_SECOND,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"sample_ratio must be from 0 to 1, got {ratio}")
        if not per_second >= 0.0:
            raise ValueError(f"traces_per_second must be 0 or more, got {per_second}")
        self._bound = round(ratio * _ALL_SAMPLED)
        self._per_second = per_second
        self._burst = max(per_second, 1.0)
        self._tokens = self._burst if per_second else 0.0
        self._clock = clock
        self._last_s = clock()
        self._next_s = -math.inf if per_second else math.inf  # no token before then

    def sample_hex(self, text: bytes, at: int) -> bool:
        """``sample`` for a trace id in hex whose low 64 bits are ``text[at : at + 16]``; the
        id is read only when a ratio below 1 needs it."""
        if self._next_s > self._clock():
            return False
        if self._bound < _ALL_SAMPLED and int(text[at : at + 16], 16) >= self._bound:
            return False
        return self._take()

    def sample(self, trace_id_low_bits: int) -> bool:
        """Whether a new trace whose id ends with these 64 bits is sampled (takes a token)."""
        if trace_id_low_bits >= self._bound:
            return False
        return self._take()

    def _take(self) -> bool:
        per_second = self._per_second
        if per_second == math.inf:
            return True
        now = self._clock()
        if now < self._next_s:
            return False
        tokens = min(self._tokens + (now - self._last_s) * per_second, self._burst)
        self._last_s = now
        if tokens >= 1.0:
            tokens -= 1.0
            taken = True
        else:
            taken = False
        self._tokens = tokens
        if tokens < 1.0:
            self._next_s = now + (1.0 - tokens) / per_second
        return taken


class Tracer:
    """Starts and finishes the spans of mesh calls."""

    def __init__(
        self,
        store: TraceStore | None,
        *,
        exporter: SpanSink | None = None,
        sample_ratio: float = 1.0,
        traces_per_second: float = TRACES_PER_SECOND,
        clock_ns: Callable[[], int] = time.time_ns,
        ids: IdSource | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.store = store
        self.exporter = exporter
        self._sampler = sampler or Sampler(sample_ratio, traces_per_second)
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
        """A span for a request that arrived with ``headers``."""
        incoming = parse_context(headers) if headers else NO_CONTEXT
        trace_id = incoming.trace_id or self._ids.take(16, ZERO_TRACE_ID)
        sampled = incoming.sampled
        if sampled == NOT_GIVEN:
            sampled = self._sampler.sample(int.from_bytes(trace_id[8:], "big"))
        return Span(
            trace_id=trace_id,
            span_id=self._ids.take(8, ZERO_SPAN_ID),
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

    def start_new(self) -> tuple[Span | None, bytes]:
        """A new trace for a request that came without trace context (the hot path): its
        span, None when the trace is not sampled, and the ``traceparent`` header line (CRLF
        included) its upstream request carries either way."""
        line = self._ids.take_line()
        if not self._sampler.sample_hex(line, _LOW_BITS_AT):
            return None, line
        span = Span(
            trace_id=binascii.unhexlify(line[TRACE_ID_HEX]),
            span_id=binascii.unhexlify(line[SPAN_ID_HEX]),
            parent_span_id=None,
            name="",
            kind=SERVER,
            start_ns=self._clock_ns(),
            sampled=True,
            attributes={},
        )
        return span, line[:-4] + b"01\r\n"

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
