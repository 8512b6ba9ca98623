"""``GET /funcmesh/v1/traces`` and ``GET /funcmesh/v1/traces/{traceId}``: the mesh's kept spans,
which ``funcmesh traces`` shows.

The list holds the most recently active traces first (``limit``, default 20), each with all its
kept spans; ``function=F`` keeps the traces with a call to function F (its workload, or its
Service's name), ``service=S`` those with a call to Service S (name or host name), both within
``namespace`` when given. Times are nanoseconds since the epoch as strings (as OTLP's JSON
writes them: a JavaScript number would lose digits), durations milliseconds. A server built
without a trace store answers 404 saying so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from funcmesh.api.status import BadRequest
from funcmesh.api.wire import json_response
from funcmesh.errors import NotFound
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.mesh.tracing import Span

TRACES_PATH = "/funcmesh/v1/traces"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


class TracesEndpoint:
    """Serves the kept traces, or 404 when the daemon keeps none."""

    def __init__(self, traces: TraceStore | None) -> None:
        self._traces = traces

    async def list(self, request: web.Request) -> web.Response:
        store = self._store()
        query = request.query
        traces = store.traces(
            function=query.get("function") or None,
            service=query.get("service") or None,
            namespace=query.get("namespace") or None,
            limit=limit_of(query.get("limit")),
        )
        return json_response({"traces": [trace_document(spans) for spans in traces]})

    async def get(self, request: web.Request) -> web.Response:
        store = self._store()
        text = request.match_info["trace_id"].lower()
        if not _TRACE_ID.fullmatch(text):
            raise BadRequest(f'a trace id is 32 hexadecimal digits, got "{text}"')
        spans = store.trace(bytes.fromhex(text))
        if spans is None:
            raise NotFound(f'trace "{text}" not found (the daemon keeps the most recent spans)')
        return json_response(trace_document(spans))

    def _store(self) -> TraceStore:
        if self._traces is None:
            raise NotFound("tracing is not enabled on this server")
        return self._traces


def limit_of(text: str | None) -> int:
    """``limit``: a whole number from 1 to MAX_LIMIT; DEFAULT_LIMIT when absent."""
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadRequest(f'limit must be a whole number from 1 to {MAX_LIMIT}, got "{text}"')
    return int(text)


def trace_document(spans: Sequence[Span]) -> dict[str, Any]:
    """One trace: its id, first start, overall duration and spans, in the order they started."""
    ordered = sorted(spans, key=lambda span: span.start_ns)
    start_ns = ordered[0].start_ns
    end_ns = max(span.end_ns for span in ordered)
    return {
        "traceId": ordered[0].trace_id.hex(),
        "startTimeUnixNano": str(start_ns),
        "durationMs": _milliseconds(end_ns - start_ns),
        "spanCount": len(ordered),
        "spans": [span_document(span) for span in ordered],
    }


def span_document(span: Span) -> dict[str, Any]:
    return {
        "traceId": span.trace_id.hex(),
        "spanId": span.span_id.hex(),
        "parentSpanId": span.parent_span_id.hex() if span.parent_span_id is not None else None,
        "name": span.name,
        "kind": span.kind,
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "durationMs": _milliseconds(span.duration_ns),
        "statusCode": span.status,
        "attributes": dict(span.attributes),
    }


def _milliseconds(nanoseconds: int) -> float:
    return round(max(nanoseconds, 0) / 1e6, 3)
