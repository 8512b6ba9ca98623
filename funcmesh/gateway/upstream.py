"""Connections from the gateway to function instances: one HTTP/1.1 exchange at a time, pooled.

An ``UpstreamConnection`` writes one request and relays the response to a ``ResponseSink`` (the
client's connection) as it arrives, parsed by httptools' ``HttpResponseParser``, and tells an
``ExchangeListener`` how the exchange ended: from protocol callbacks, with no task, future or
timer per exchange (the owner enforces the deadline by calling ``check_deadline``). The
``UpstreamPool`` (``funcmesh.gateway.upstream_pool``) keeps them. This module knows nothing of
functions, leases or user-facing messages: it reports what went wrong as ``UpstreamTimeout``,
``UpstreamBroken`` or ``ClientGone``, and ``proxy`` turns those into answers.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from funcmesh.errors import FuncmeshError
from funcmesh.gateway.messages import BodyFraming, Headers

_SMALL_WRITE_BYTES = 64 * 1024


class UpstreamTimeout(FuncmeshError):
    """The instance did not answer (connect, or response head) in time."""


class UpstreamBroken(FuncmeshError):
    """The connection failed before the response was complete; the message says how."""

    def __init__(self, reason: str, *, response_started: bool, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.response_started = response_started
        # A reused keep-alive connection that closed before any response byte: the request
        # never reached the instance, so it is safe to send again on a fresh connection.
        self.retryable = retryable


class ClientGone(FuncmeshError):
    """The client left before its response was complete."""


class ResponseSource(Protocol):
    """What a sink may ask of the connection feeding it."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def abandon(self) -> None:
        """The client is gone: stop relaying, fail the exchange with ClientGone."""
        ...

    @property
    def peer(self) -> str:
        """``ip:port`` of the instance answering ("" for the gateway's own answers): Envoy's
        ``%UPSTREAM_HOST%``."""
        ...


class _NoSource:
    """The source of an answer the gateway writes itself: nothing to pause or abandon."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abandon(self) -> None:
        pass

    @property
    def peer(self) -> str:
        return ""


NO_SOURCE: ResponseSource = _NoSource()


class ResponseSink(Protocol):
    """Where a response goes, piece by piece, as it arrives from the instance."""

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: BodyFraming,
        source: ResponseSource,
    ) -> bool:
        """Relay the head; False when the client is gone."""
        ...

    def send_body(self, data: bytes) -> None: ...

    def end_response(self) -> None: ...

    def flush(self) -> None:
        """Write what was relayed so far (called once per read from the instance)."""
        ...


class ExchangeListener(Protocol):
    """Who learns how an exchange ended; told exactly once per exchange, never re-entrantly
    from ``exchange`` itself."""

    def exchange_done(self, connection: UpstreamConnection, status: int) -> None:
        """The response was relayed completely; ``connection.reusable`` says if it may be
        pooled again."""
        ...

    def exchange_failed(self, connection: UpstreamConnection, error: FuncmeshError) -> None:
        """``UpstreamTimeout``, ``UpstreamBroken`` or ``ClientGone``; the connection is aborted."""
        ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an instance; ``exchange`` sends one request at a time."""

    def __init__(self, instance_id: str, *, on_lost: Callable[[UpstreamConnection], None]) -> None:
        self.instance_id = instance_id
        self.reused = False
        self.exchanges = 0  # requests sent on this connection
        self.keep_alive = False
        self.idle_since_s = 0.0
        self.peer = ""  # ip:port of the instance, once connected
        self.status = 0  # of the response in this exchange; 0 until its head arrived
        self.body_bytes = 0  # response body bytes relayed to the sink in this exchange
        self._on_lost = on_lost
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._parser_spent = False
        self._sink: ResponseSink | None = None
        self._listener: ExchangeListener | None = None
        self._deadline_s = math.inf
        self._head_only = False
        self._received = False
        self._started = False
        self._informational = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._framing = BodyFraming.NONE

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    @property
    def reusable(self) -> bool:
        """The exchange ended cleanly: keep-alive, still open, and the whole request was sent
        (an instance may answer before reading a large body)."""
        transport = self._transport
        return (
            self.keep_alive
            and transport is not None
            and not transport.is_closing()
            and transport.get_write_buffer_size() == 0
        )

    def exchange(
        self,
        head: bytes,
        body: bytes,
        sink: ResponseSink,
        listener: ExchangeListener,
        *,
        head_only: bool,
        deadline_s: float,
    ) -> bool:
        """Send a request and relay its response to ``sink``; ``listener`` learns how it ended.

        ``deadline_s`` (loop time) bounds the wait for the response head: ``check_deadline``
        fails the exchange with ``UpstreamTimeout`` once it has passed. False when the
        connection closed before the request could be sent (nothing was sent, nobody is told).
        """
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if self._parser_spent:
            self._parser = httptools.HttpResponseParser(self)
            self._parser_spent = False
        self._sink = sink
        self._listener = listener
        self._deadline_s = deadline_s
        self._head_only = head_only
        self._received = self._started = self.keep_alive = False
        self.status = self.body_bytes = 0
        self._reason = b""
        self._headers = []
        self.exchanges += 1
        if len(body) < _SMALL_WRITE_BYTES:
            transport.write(head + body if body else head)
        else:
            transport.writelines((head, body))
        return True

    def check_deadline(self, now_s: float) -> None:
        """Fail the exchange with ``UpstreamTimeout`` if its response head is overdue."""
        if now_s >= self._deadline_s:
            self._fail(UpstreamTimeout("the instance did not answer in time"))

    def pause_reading(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def abandon(self) -> None:
        self._fail(ClientGone("the client closed its connection"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Cut the connection; an exchange in progress ends without telling its listener."""
        self._sink = self._listener = None
        self._deadline_s = math.inf
        self.keep_alive = False
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        address = transport.get_extra_info("peername")
        if address:
            self.peer = f"{address[0]}:{address[1]}"

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self.abort()  # bytes nobody asked for: the connection cannot be trusted any more
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail_broken(f"the instance sent an invalid HTTP response ({exc})")
            return
        if self._sink is not None:
            sink.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_lost(self)
        if self._sink is None:
            return
        if self._started and self._framing is BodyFraming.UNTIL_CLOSE:
            self._finish(keep_alive=False)
            return
        self._fail_broken(_describe_loss(exc))

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._skip_informational(status)
            return
        sink = self._sink
        if sink is None:
            self._fail_broken("the instance sent a response nobody asked for")
            return
        self._deadline_s = math.inf
        self.status = status
        self._framing = response_framing(status, self._headers, head_only=self._head_only)
        if not sink.start_response(status, self._reason, self._headers, self._framing, self):
            self.abandon()
            return
        self._started = True
        if self._head_only:
            # httptools cannot be told that a HEAD response has no body: start a new parser.
            self._parser_spent = True
            self._finish(keep_alive=self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:
            self.body_bytes += len(body)
            sink.send_body(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if self._sink is not None:
            self._finish(keep_alive=self._parser.should_keep_alive())

    # exchange bookkeeping

    def _skip_informational(self, status: int) -> None:
        if status == 101:
            self._fail_broken("the instance switched protocols (101) without being asked to")
            return
        self._informational = True  # 100 Continue, 103 Early Hints: not relayed
        self._reason = b""
        self._headers = []

    def _finish(self, *, keep_alive: bool) -> None:
        sink, listener = self._sink, self._listener
        self._sink = self._listener = None
        self.keep_alive = keep_alive
        if sink is not None:
            sink.end_response()
        if listener is not None:
            listener.exchange_done(self, self.status)

    def _fail_broken(self, reason: str) -> None:
        retryable = self.reused and not self._received
        self._fail(UpstreamBroken(reason, response_started=self._started, retryable=retryable))

    def _fail(self, error: FuncmeshError) -> None:
        """End the exchange, if one is going on, with ``error``; the connection is unusable."""
        listener = self._listener
        self.abort()
        if listener is not None:
            listener.exchange_failed(self, error)


def response_framing(status: int, headers: Headers, *, head_only: bool) -> BodyFraming:
    """How the body of a response ends (RFC 9112 section 6.3)."""
    if head_only or status in (204, 304) or status < 200:
        return BodyFraming.NONE
    framing = BodyFraming.UNTIL_CLOSE
    for name, value in headers:
        size = len(name)  # cheaper than lowering every name to find these two
        if size == 14 and name.lower() == b"content-length":
            framing = BodyFraming.CONTENT_LENGTH
        elif size == 17 and name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            return BodyFraming.CHUNKED
    return framing


def _describe_loss(exc: Exception | None) -> str:
    if isinstance(exc, ConnectionResetError):
        return "the instance reset the connection before the response was complete"
    if exc is None:
        return "the instance closed the connection before the response was complete"
    return f"the connection broke before the response was complete ({exc})"
