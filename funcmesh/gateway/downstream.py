"""A client's HTTP/1.1 connection to the gateway: parse requests, answer them in order.

``ClientConnection`` is an asyncio Protocol around httptools' ``HttpRequestParser``. It buffers
each request (head and body, within limits), hands complete requests to its ``ConnectionOwner``
(see ``funcmesh.gateway.connections``) one at a time (so pipelined requests are answered in
order), and relays responses back with the right framing, in one write per read from the
instance. It also protects the gateway from a client: heads over the size limit get 431, bodies
over it 413, garbage 400, a head or body that trickles in too slowly 408, each followed by a
lingering close. On a VIP's mesh mTLS side it learns the caller's identity (the principal of
its client certificate) once per connection, and every request carries it; so does the workload
whose pod IP the connection comes from (a ``SourceLookup``, asked once). It knows nothing
about functions or instances.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import cast

import httptools

from funcmesh.gateway.connections import ConnectionOwner
from funcmesh.gateway.messages import (
    BodyFraming,
    Headers,
    Request,
    error_response,
    json_response,
    relay_response_head,
    text_response,
)
from funcmesh.gateway.upstream import ResponseSource
from funcmesh.mesh.identity import principal_of, requested_server_name
from funcmesh.mesh.sources import SourceLookup, WorkloadSource

logger = logging.getLogger(__name__)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_LINGER_S = 2.0  # how long a rejected client may keep sending before the connection is cut


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejection:
    """A request refused while it was read; answered in turn, then the connection closes."""

    status: int
    message: str


class _StopParsing(Exception):
    """Raised from a parser callback to stop reading this connection."""


class ClientConnection(asyncio.Protocol):
    """One client connection; also the sink that upstream responses are relayed into."""

    def __init__(
        self,
        owner: ConnectionOwner,
        *,
        scheme: bytes = b"http",
        sources: SourceLookup | None = None,
    ) -> None:
        self._owner = owner
        self._sources = sources  # pod IP -> its workload: the calls' source in the telemetry
        self._workload: WorkloadSource | None = None
        self._scheme = scheme  # b"https" on the TLS listener: sent as X-Forwarded-Proto
        self._limits = owner.limits
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._client_ip = b""
        self._principal = ""  # the caller's mesh identity, over mesh mTLS
        self._mtls = False
        self._server_name = ""
        self._queue: deque[Request | Rejection] = deque()
        self._deadline_s = math.inf
        # reading side
        self._stopped = False  # no more requests are read (rejected, closing)
        self._reading = False  # a request is partly read
        self._in_head = False
        self._paused = False
        self._write_stalled = False
        self._lingering = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._raw_head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._expects_continue = False
        # answering side
        self._busy = False
        self._answering = False  # inside _answer_queued: it goes on with the next request
        self._current: Request | None = None
        self._close_after = False
        self._started = False
        self._chunked = False
        self._out: list[bytes] = []
        self._source: ResponseSource | None = None

    # seen by the owner and the relay

    @property
    def client_gone(self) -> bool:
        return self._transport is None

    @property
    def response_started(self) -> bool:
        return self._started

    def check_deadline(self, now_s: float) -> None:
        """Cut a connection that idles, sends its request or reads its answer too slowly."""
        if now_s < self._deadline_s:
            return
        if self._write_stalled:
            self.abort()  # the client stopped reading its answer
        elif self._busy:
            return
        elif self._reading and not self._lingering:
            timeout_s = self._limits.header_timeout_s
            self._reject(408, f"the request was not received completely within {timeout_s:g}s")
        else:
            self.abort()

    def drain(self) -> None:
        """Finish the call in progress, if any, then close."""
        self._close_after = True
        if not self._busy:
            self._close()

    def abort(self) -> None:
        self._stopped = True
        self._queue.clear()
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        peer = transport.get_extra_info("peername")
        self._client_ip = str(peer[0]).encode() if peer else b""
        if peer and self._sources is not None:
            self._workload = self._sources.source_of(str(peer[0]))
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and self._scheme == b"http":  # a VIP's mesh mTLS side
            self._mtls = True
            self._principal = principal_of(ssl_object.getpeercert())
            self._server_name = requested_server_name(ssl_object)
        self._deadline_s = self._loop.time() + self._limits.idle_timeout_s
        self._owner.connection_opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._stopped = True
        self._queue.clear()
        self._owner.connection_closed(self)
        source, self._source = self._source, None
        if source is not None:
            source.abandon()

    def eof_received(self) -> bool:
        # Like nginx: a client that closes its side has left; its call ends unanswered.
        return False

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        if self._in_head:
            self._raw_head_bytes += len(data)
        elif self._reading:
            self._deadline_s = self._loop.time() + self._limits.header_timeout_s
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The Upgrade header is hop-by-hop: the request was answered as a plain one.
            rest = data[upgrade.args[0] :]
            if rest:
                self.data_received(rest)
            return
        except httptools.HttpParserError as exc:
            if not self._stopped:
                self._reject(400, f"malformed HTTP request: {exc}")
            return
        if self._in_head and self._raw_head_bytes > self._limits.max_head_bytes:
            self._reject_large_head()
        elif self._queue and not self._paused and (transport := self._writable()):
            self._paused = True  # pipelined requests wait: read no more until they are answered
            transport.pause_reading()

    def pause_writing(self) -> None:
        self._write_stalled = True
        self._deadline_s = self._loop.time() + self._limits.idle_timeout_s
        if self._source is not None:
            self._source.pause_reading()

    def resume_writing(self) -> None:
        self._write_stalled = False
        if self._source is not None:
            self._source.resume_reading()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._stopped:
            raise _StopParsing
        self._reading = self._in_head = True
        self._deadline_s = self._loop.time() + self._limits.header_timeout_s
        self._url = b""
        self._headers = []
        self._head_bytes = self._raw_head_bytes = self._body_bytes = 0
        self._body = []
        self._expects_continue = False

    # on_url and on_header count the head's bytes inline: they run for every header

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_head_bytes:
            self._reject_large_head()
            raise _StopParsing

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._limits.max_head_bytes:
            self._reject_large_head()
            raise _StopParsing
        self._headers.append((name, value))
        if len(name) == 14 and name.lower() == b"content-length":
            if value.isdigit() and int(value) > self._limits.max_body_bytes:
                self._reject_large_body()
                raise _StopParsing
        elif len(name) == 6 and name.lower() == b"expect":
            self._expects_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._expects_continue and (transport := self._writable()):
            # Only when nothing is being answered: a 100 must not cut into another response.
            nothing_pending = not self._busy and not self._queue
            if nothing_pending and self._parser.get_http_version() != "1.0":
                transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._reject_large_body()
            raise _StopParsing
        self._body.append(body)

    def on_message_complete(self) -> None:
        body = self._body
        request = Request(
            method=self._parser.get_method(),
            target=self._url,
            headers=self._headers,
            body=(body[0] if len(body) == 1 else b"".join(body)),
            keep_alive=self._parser.should_keep_alive(),
            http11=self._parser.get_http_version() != "1.0",
            client_ip=self._client_ip,
            scheme=self._scheme,
            principal=self._principal,
            mtls=self._mtls,
            server_name=self._server_name,
            source=self._workload,
        )
        self._reading = False
        self._deadline_s = math.inf
        self._queue.append(request)
        self._answer_queued()

    # ResponseSink: an instance's response, relayed as it arrives

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: BodyFraming,
        source: ResponseSource,
    ) -> bool:
        request = self._current
        transport = self._transport  # _writable, inline: this runs per response
        if request is None or transport is None or transport.is_closing():
            return False
        chunked = framing is BodyFraming.CHUNKED or framing is BodyFraming.UNTIL_CLOSE
        if chunked and not request.http11:
            chunked, self._close_after = False, True  # HTTP/1.0: the close ends the body
        self._chunked = chunked
        self._started = True
        self._source = source
        head = relay_response_head(
            status, reason, headers, chunked=chunked, connection=self._connection_header()
        )
        self._out.append(head)
        return True

    def send_body(self, data: bytes) -> None:
        if self._chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def end_response(self) -> None:
        if self._chunked:
            self._out.append(b"0\r\n\r\n")
        self._source = None
        self.flush()

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        transport = self._transport  # _writable, inline: this runs per read from the instance
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    # answers made by the gateway itself

    def send_error(
        self, status: int, message: str, *, function: str | None = None, cause: str = ""
    ) -> None:
        """A JSON error; ``cause`` (Envoy's response flag) is for the mesh, not the client."""
        request = self._current
        head_only = request is not None and request.head_only
        self._write(
            error_response(
                status,
                message,
                function=function,
                connection=self._connection_header(),
                head_only=head_only,
            )
        )

    def send_json(self, status: int, document: object, *, headers: Headers = ()) -> None:
        request = self._current
        head_only = request is not None and request.head_only
        connection = self._connection_header()
        self._write(
            json_response(
                status, document, headers=headers, connection=connection, head_only=head_only
            )
        )

    def send_text(self, status: int, text: str) -> None:
        request = self._current
        head_only = request is not None and request.head_only
        connection = self._connection_header()
        self._write(text_response(status, text, connection=connection, head_only=head_only))

    def end_call(self) -> None:
        """The call started by the owner is over; answer the next request, if any."""
        if not self._busy:
            return
        self._end_request()
        if not self._answering and (self._queue or self._paused):
            self._answer_queued()  # only then has it anything to do

    # answering requests in order

    def _answer_queued(self) -> None:
        self._answering = True
        try:
            while self._queue and not self._busy and self._writable():
                item = self._queue.popleft()
                if isinstance(item, Rejection):
                    self._answer_rejection(item)
                    return
                self._answer(item)
        finally:
            self._answering = False
        if self._paused and not self._queue and (transport := self._writable()):
            self._paused = False
            transport.resume_reading()

    def _answer(self, request: Request) -> None:
        self._busy = True
        self._current = request
        self._close_after = self._close_after or not request.keep_alive or self._owner.draining
        try:
            answered = self._owner.answer(request, self)
        except Exception:
            logger.exception("answering %r failed", request.target[:200])
            self._answer_internal_error()
            answered = True
        if answered:
            self._end_request()

    def _answer_internal_error(self) -> None:
        if self._started:
            self.abort()
        else:
            self.send_error(500, "internal error in the gateway; see the daemon log")

    def _end_request(self) -> None:
        self._busy = False
        self._current = None
        self._source = None
        self._started = self._chunked = False
        if self._transport is None:
            return
        if self._close_after:
            self._close()
        elif not self._reading:
            self._deadline_s = self._loop.time() + self._limits.idle_timeout_s

    def _answer_rejection(self, rejection: Rejection) -> None:
        self._queue.clear()
        self._write(error_response(rejection.status, rejection.message, connection=b"close"))
        self._linger()

    def _connection_header(self) -> bytes | None:
        if self._close_after:
            return b"close"
        request = self._current
        return None if request is None or request.http11 else b"keep-alive"

    def _writable(self) -> asyncio.Transport | None:
        """The transport, unless it is gone or closing (uvloop refuses writes then)."""
        transport = self._transport
        return None if transport is None or transport.is_closing() else transport

    def _write(self, data: bytes) -> None:
        self._started = True
        if transport := self._writable():
            transport.write(data)

    # refusing a client

    def _reject_large_head(self) -> None:
        limit_kib = self._limits.max_head_bytes >> 10
        self._reject(431, f"the request head is larger than {limit_kib} KiB")

    def _reject_large_body(self) -> None:
        limit = self._limits.max_body_bytes
        self._reject(413, f"the request body is larger than the limit of {limit} bytes")

    def _reject(self, status: int, message: str) -> None:
        """Stop reading; answer ``status`` once the requests before it are answered."""
        if self._stopped:
            return
        self._stopped = True
        self._reading = self._in_head = False
        self._queue.append(Rejection(status=status, message=message))
        self._answer_queued()

    def _linger(self) -> None:
        """Half-close, and read (and drop) what the client still sends, so that it can read
        the answer instead of a reset; ``check_deadline`` cuts it after a while."""
        transport = self._transport
        self._stopped = self._lingering = self._close_after = True
        self._deadline_s = self._loop.time() + _LINGER_S
        if transport is None:
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()

    def _close(self) -> None:
        """Close once the answers are written; a client that never reads them is cut."""
        self._stopped = True
        self._queue.clear()
        self._deadline_s = self._loop.time() + self._limits.idle_timeout_s
        if self._transport is not None:
            self._transport.close()
