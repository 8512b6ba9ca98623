"""Trace context on the wire: what a request brings (W3C ``traceparent``/``tracestate``, B3
single and multi), what this hop sends on, and the random ids of new spans.

``parse_context`` reads a request's trace headers once: W3C ``traceparent`` (version 00, or a
later version read as 00 as the Trace Context spec says) with its ``tracestate``, else B3 (the
single ``b3`` header or the ``x-b3-*`` headers). A malformed context (bad hex, wrong lengths,
all-zero ids, version ff, two ``traceparent`` headers) counts as none. ``with_trace_headers``
gives the upstream request this hop's context instead of the incoming one (``traceparent``
always, ``tracestate`` as received, B3 in the form(s) it came in); ``traceparent_line`` is the
one header line of a request that came without any. Ids come from ``os.urandom`` in batches.

Nothing here logs, does I/O or reads the clock.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from funcmesh.mesh.tracing import Span

HeaderList = Sequence[tuple[bytes, bytes]]

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

_HEX = b"0123456789abcdef"
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
ZERO_TRACE_ID = bytes(16)
ZERO_SPAN_ID = bytes(8)
NOT_GIVEN = 2  # a sampling decision nobody made yet (neither 0 nor 1)
# where a new trace's ids are in its traceparent line: "traceparent: 00-TRACE-SPAN-00\r\n"
TRACE_ID_HEX, SPAN_ID_HEX = slice(16, 48), slice(49, 65)
_ZERO_TRACE_HEX = b"0" * 32
_ZERO_SPAN_HEX = b"0" * 16


class Incoming(NamedTuple):
    """The trace context a request came with (ids None: none, or none valid); a tuple because
    it is built per request."""

    trace_id: bytes | None = None
    parent_span_id: bytes | None = None
    sampled: int = NOT_GIVEN  # 0, 1 or NOT_GIVEN
    debug: bool = False
    tracestate: bytes = b""
    b3_multi: bool = False
    b3_single: bool = False
    had_context: bool = False


NO_CONTEXT = Incoming()


class IdSource:
    """Random ids cut from one ``os.urandom`` batch at a time (one system call per ~170 spans):
    as bytes for spans, or as the ``traceparent`` line of a trace nobody records."""

    __slots__ = ("_at", "_batch_bytes", "_buffer", "_lines", "_random_bytes")

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
        self._lines: list[bytes] = []

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

    def take_line(self) -> bytes:
        """The ``traceparent`` header line (CRLF included) of a new, unsampled trace: a fresh
        trace id and span id, neither all zero, flags 00. Made a batch at a time, so a
        request that nobody traces costs a list pop (its ids are at ``TRACE_ID_HEX`` and
        ``SPAN_ID_HEX``)."""
        lines = self._lines
        if not lines:
            lines = self._lines = self._new_lines()
        return lines.pop()

    def _new_lines(self) -> list[bytes]:
        while True:
            batch = binascii.hexlify(self._random_bytes(max(self._batch_bytes, 24)))
            lines = [
                b"traceparent: 00-%s-%s-00\r\n" % (trace_hex, batch[at + 32 : at + 48])
                for at in range(0, len(batch) - 47, 48)
                if (trace_hex := batch[at : at + 32]) != _ZERO_TRACE_HEX
                and batch[at + 32 : at + 48] != _ZERO_SPAN_HEX
            ]
            if lines:
                return lines


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
    if trace_id == ZERO_TRACE_ID or parent == ZERO_SPAN_ID:
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
    sampling = _b3_sampling(parts[2]) if len(parts) > 2 else (NOT_GIVEN, False)
    if sampling is None or (len(parts) == 4 and _b3_span_id(parts[3]) is None):
        return None
    return trace_id, span_id, *sampling


def parse_b3_multi(headers: Mapping[bytes, bytes]) -> tuple[bytes | None, bytes | None, int, bool]:
    """(trace id, span id, sampled, debug) of the ``x-b3-*`` headers; ids None when they are
    missing or invalid (a sampling decision may still stand)."""
    debug = headers.get(B3_FLAGS) == b"1"
    sampled = NOT_GIVEN
    if debug:
        sampled = 1
    elif B3_SAMPLED in headers:
        decision = {b"1": 1, b"true": 1, b"0": 0, b"false": 0}.get(headers[B3_SAMPLED].lower())
        sampled = NOT_GIVEN if decision is None else decision
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
    return None if trace_id == ZERO_TRACE_ID else trace_id


def _b3_span_id(text: bytes) -> bytes | None:
    if len(text) != 16 or not _is_lower_hex(text):
        return None
    span_id = binascii.unhexlify(text)
    return None if span_id == ZERO_SPAN_ID else span_id


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


def with_trace_headers(headers: HeaderList, span: Span) -> list[tuple[bytes, bytes]]:
    """``headers`` for the upstream request: the incoming trace headers replaced by this hop's."""
    if span.had_context:
        kept = [(name, value) for name, value in headers if name.lower() not in TRACE_HEADERS]
    else:
        kept = list(headers)
    kept += outgoing_headers(span)
    return kept
