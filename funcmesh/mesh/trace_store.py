"""The spans of recent traces, kept in memory for ``funcmesh traces`` (``GET /funcmesh/v1/traces``).

Bounded by spans, grouped by trace, least recently active trace out first. Filled on the event
loop's thread by ``Tracer.finish`` and read there by the API: no locks. A span's name and
attributes are drawn from its call's record when a query first reads it (``Span.settle``), not
on the request's path. Nothing here logs or does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from funcmesh.mesh.tracing import Span

KEEP_SPANS = 10_000
KEEP_SPANS_PER_TRACE = 1_000


class TraceStore:
    """The spans of recent traces, in memory: at most ``keep_spans``, grouped by trace; when
    full, the trace that saw a span least recently goes first. A trace keeps at most
    ``keep_spans_per_trace`` (a loop of calls must not push every other trace out)."""

    def __init__(
        self, *, keep_spans: int = KEEP_SPANS, keep_spans_per_trace: int = KEEP_SPANS_PER_TRACE
    ) -> None:
        if not 0 < keep_spans_per_trace <= keep_spans:
            raise ValueError("keep_spans_per_trace must be from 1 to keep_spans")
        self._traces: OrderedDict[bytes, list[Span]] = OrderedDict()
        self._keep_spans = keep_spans
        self._keep_per_trace = keep_spans_per_trace
        self._span_count = 0
        self.dropped = 0  # spans over a trace's limit

    @property
    def span_count(self) -> int:
        return self._span_count

    @property
    def trace_count(self) -> int:
        return len(self._traces)

    def add(self, span: Span) -> None:
        traces = self._traces
        spans = traces.get(span.trace_id)
        if spans is None:
            spans = traces[span.trace_id] = []
        else:
            traces.move_to_end(span.trace_id)
        if len(spans) >= self._keep_per_trace:
            self.dropped += 1
            return
        spans.append(span)
        self._span_count += 1
        while self._span_count > self._keep_spans:
            _, evicted = traces.popitem(last=False)
            self._span_count -= len(evicted)

    def trace(self, trace_id: bytes) -> list[Span] | None:
        """The kept spans of one trace, in the order they finished; None when none are kept."""
        spans = self._traces.get(trace_id)
        return [span.settle() for span in spans] if spans else None

    def traces(
        self,
        *,
        function: str | None = None,
        service: str | None = None,
        namespace: str | None = None,
        limit: int | None = None,
    ) -> list[list[Span]]:
        """Traces, the most recently active first, with a span that calls ``function`` (its
        workload or its Service's name) or ``service`` (name or host name) in ``namespace``."""
        found: list[list[Span]] = []
        for spans in reversed(self._traces.values()):
            if limit is not None and len(found) >= limit:
                break
            if any(_matches(span.settle(), function, service, namespace) for span in spans):
                found.append([span.settle() for span in spans])
        return found


def _matches(span: Span, function: str | None, service: str | None, namespace: str | None) -> bool:
    get = span.attributes.get
    if namespace is not None and get("funcmesh.namespace") != namespace:
        return False
    if function is not None and function not in (
        get("funcmesh.workload"),
        get("funcmesh.service.name"),
    ):
        return False
    return service is None or service in (get("funcmesh.service.name"), get("funcmesh.service"))
