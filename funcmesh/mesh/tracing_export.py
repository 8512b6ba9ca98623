"""OTLP/HTTP export of the mesh's spans (``funcmesh up --otlp-endpoint URL``), through the
OpenTelemetry SDK.

Each finished span becomes the SDK's ``ReadableSpan`` and goes to a ``BatchSpanProcessor`` in
front of an ``OTLPSpanExporter``: the processor's own thread batches, encodes (protobuf) and
POSTs them to the collector, so no export happens on the event loop's thread, and a slow or
absent collector costs the data plane nothing but a full queue (new spans are then dropped).
As an Istio sidecar reports, the resource of a span is the Service it called, ``service.name``
``NAME.NAMESPACE`` (``hello.default``); a span whose destination is unknown reports as
``funcmesh``. The SDK's ``OTEL_EXPORTER_OTLP_TRACES_HEADERS`` (and certificate, compression)
variables still apply to the exporter.

``close`` is bounded: what is queued gets ``timeout_s`` to go out, then the exporter's retries
are cut short. A span that finds the queue full is dropped; the SDK's own filter keeps that
warning to one line per 20 s, not one per span.

This module is the one adapter of the OpenTelemetry SDK; the SDK is imported only when an
exporter is built, so a daemon without an endpoint never loads it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from funcmesh import __version__
from funcmesh.errors import Invalid
from funcmesh.mesh.tracing import Span

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanKind, Status, TraceFlags

DEFAULT_SERVICE_NAME = "funcmesh"
SCOPE_NAME = "funcmesh.mesh"
EXPORT_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 3.0
SCHEDULE_DELAY_MS = 1000  # the SDK's default is 5 s; a trace should show up sooner
MAX_QUEUE_SPANS = 8192
MAX_BATCH_SPANS = 512


class OtlpExporter:
    """Sends finished spans to an OTLP/HTTP collector (``export`` is the hot path)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout_s: float = EXPORT_TIMEOUT_S,
        schedule_delay_ms: int = SCHEDULE_DELAY_MS,
        max_queue_spans: int = MAX_QUEUE_SPANS,
        max_batch_spans: int = MAX_BATCH_SPANS,
    ) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        if not endpoint.startswith(("http://", "https://")):
            raise Invalid(f"the OTLP endpoint must be an http:// or https:// URL, got {endpoint!r}")
        self.endpoint = endpoint
        self._exporter: SpanExporter = OTLPSpanExporter(endpoint=endpoint, timeout=timeout_s)
        self._processor: BatchSpanProcessor = BatchSpanProcessor(
            self._exporter,
            max_queue_size=max_queue_spans,
            schedule_delay_millis=schedule_delay_ms,
            max_export_batch_size=min(max_batch_spans, max_queue_spans),
        )
        self._readable_span = ReadableSpan
        self._span_context = SpanContext
        self._scope: InstrumentationScope = InstrumentationScope(SCOPE_NAME, __version__)
        self._server: SpanKind = SpanKind.SERVER
        self._flags: tuple[TraceFlags, TraceFlags] = (TraceFlags(0), TraceFlags(1))
        self._ok: Status = Status(StatusCode.UNSET)
        self._error: Status = Status(StatusCode.ERROR)
        self._resources: dict[str, Resource] = {}
        self._closed = False

    def export(self, span: Span) -> None:
        """Queue one finished span for the batch thread (a few microseconds, no I/O)."""
        if not self._closed:
            self._processor.on_end(self.readable(span))

    def readable(self, span: Span) -> ReadableSpan:
        """``span`` as the SDK's ReadableSpan: ids, parent (remote), times, attributes, and an
        error status for a 5xx or no answer, as OpenTelemetry marks HTTP server spans."""
        span.settle()
        flags = self._flags[span.sampled]
        context = self._span_context(
            int.from_bytes(span.trace_id, "big"),
            int.from_bytes(span.span_id, "big"),
            is_remote=False,
            trace_flags=flags,
        )
        parent = None
        if span.parent_span_id is not None:
            parent = self._span_context(
                context.trace_id,
                int.from_bytes(span.parent_span_id, "big"),
                is_remote=True,
                trace_flags=flags,
            )
        return self._readable_span(
            name=span.name or "-",
            context=context,
            parent=parent,
            resource=self._resource_of(span),
            attributes=span.attributes,
            kind=self._server,
            instrumentation_scope=self._scope,
            status=self._error if span.status >= 500 or not span.status else self._ok,
            start_time=span.start_ns,
            end_time=span.end_ns,
        )

    def flush(self, timeout_s: float = EXPORT_TIMEOUT_S) -> bool:
        """Export what is queued now (blocks: call it off the event loop)."""
        return self._processor.force_flush(int(timeout_s * 1000))

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Export what is queued and stop the batch thread, within twice ``timeout_s`` (blocks:
        call it off the event loop, e.g. through ``asyncio.to_thread``). Later spans are
        dropped."""
        if self._closed:
            return
        self._closed = True
        stopping = threading.Thread(
            target=self._processor.shutdown, name="funcmesh-otlp-close", daemon=True
        )
        stopping.start()
        stopping.join(timeout_s)
        if stopping.is_alive():  # a collector that does not answer: stop retrying now
            self._exporter.shutdown()
            stopping.join(timeout_s)

    def _resource_of(self, span: Span) -> Resource:
        get = span.attributes.get
        name, namespace = get("funcmesh.service.name"), get("funcmesh.namespace")
        service = f"{name}.{namespace}" if name and namespace else DEFAULT_SERVICE_NAME
        resource = self._resources.get(service)
        if resource is None:
            resource = self._resources[service] = _resource(service, namespace)
        return resource


def _resource(service: str, namespace: object) -> Resource:
    from opentelemetry.sdk.resources import Resource

    attributes = {"service.name": service}
    if namespace:
        attributes["k8s.namespace.name"] = str(namespace)
    return Resource(attributes)  # not Resource.create: that reads OTEL_* from the environment
