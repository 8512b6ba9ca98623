"""The HTTP/1.1 message heads the gateway writes: requests to instances, answers to clients.

Pure functions from parsed parts to bytes, called once per request on the hot path, so they work
on the raw header bytes and build each head with one join. No I/O, no parsing of wire data
(httptools does that in ``downstream`` and ``upstream``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from funcmesh.mesh.sources import WorkloadSource

Headers = Sequence[tuple[bytes, bytes]]

EVENT_NAMESPACE = b"gateway.funcmesh.io"
DEFAULT_EVENT_TYPE = b"application/x-www-form-urlencoded"

# RFC 9110 section 7.6.1, plus the Proxy-* family: meaningful for one connection only.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
)
# Set by the gateway itself, whatever the client sent.
_REPLACED = frozenset({b"content-length", b"expect", b"x-forwarded-host", b"x-forwarded-proto"})
_EVENT_HEADERS = (b"event-id", b"event-time", b"event-type", b"event-namespace")
# The head's end: X-Forwarded-*, the extra lines, then (when the client sent none) the events.
_FORWARDED = b"X-Forwarded-For: %s\r\nX-Forwarded-Host: %s\r\nX-Forwarded-Proto: %s\r\n%s"
_FORWARDED_AND_EVENTS = (
    _FORWARDED + b"".join(name + b": %s\r\n" for name in _EVENT_HEADERS) + b"\r\n"
)
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


@dataclass(slots=True, kw_only=True, init=False)
class Request:
    """One complete request from a client, body buffered; a value, never changed once made
    (``with_headers`` makes another).

    Not ``frozen``, and its ``__init__`` written out, for its cost: one is made per call. A
    frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    14,000 instructions here, 7% of the gateway's work on a call); compiled
    (``funcmesh.native``), this ``__init__`` runs in C, where a generated one stays
    interpreted (about 6,000).
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    http11: bool
    client_ip: bytes
    scheme: bytes  # b"https" when it came through the TLS listener
    # The caller's mesh identity ("cluster.local/ns/NS/sa/SA") when it came over mesh mTLS
    # (a VIP's TLS side), "" for plaintext or unknown; ``mtls`` whether it came so, and
    # ``server_name`` the SNI of that connection.
    principal: str
    mtls: bool
    server_name: str
    # The workload whose pod IP the connection came from (the gateway's SourceLookup), None
    # when the address is no pod's: Istio's source_workload and its labels, never for access.
    source: WorkloadSource | None

    def __init__(
        self,
        *,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        http11: bool,
        client_ip: bytes,
        scheme: bytes = b"http",
        principal: str = "",
        mtls: bool = False,
        server_name: str = "",
        source: WorkloadSource | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.http11 = http11
        self.client_ip = client_ip
        self.scheme = scheme
        self.principal = principal
        self.mtls = mtls
        self.server_name = server_name
        self.source = source

    @property
    def head_only(self) -> bool:
        return self.method == b"HEAD"

    def with_headers(self, headers: list[tuple[bytes, bytes]]) -> Request:
        """The same request with other headers (``dataclasses.replace`` costs three times as
        much, and this runs per mesh call)."""
        return Request(
            method=self.method,
            target=self.target,
            headers=headers,
            body=self.body,
            keep_alive=self.keep_alive,
            http11=self.http11,
            client_ip=self.client_ip,
            scheme=self.scheme,
            principal=self.principal,
            mtls=self.mtls,
            server_name=self.server_name,
            source=self.source,
        )


class BodyFraming(enum.Enum):
    """How the end of a response body is found."""

    NONE = "none"  # no body: HEAD, 1xx, 204, 304
    CONTENT_LENGTH = "content-length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


def is_hop_by_hop(lower_name: bytes) -> bool:
    return lower_name in HOP_BY_HOP or lower_name.startswith(b"proxy-")


def without_connection_options(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The headers minus ``Connection`` and the ones it names (RFC 9110 section 7.6.1)."""
    options = {b"connection"}
    for name, value in headers:
        if name.lower() == b"connection":
            options.update(token.strip().lower() for token in value.split(b","))
    return [(name, value) for name, value in headers if name.lower() not in options]


def _names_options(connection_value: bytes) -> bool:
    """True when a Connection header lists header names, not just close / keep-alive."""
    if connection_value.lower() in _PLAIN_CONNECTION_VALUES:  # nearly always: no set built
        return False
    tokens = {token.strip().lower() for token in connection_value.split(b",")}
    return not tokens <= {b"close", b"keep-alive"}


# What rewrite_request_head does with a client header, by lower-case name: one dict look-up
# per header, since this runs once per call. Names not listed are kept, except the prefixed ones.
_DROP, _CONNECTION, _FORWARDED_FOR, _HOST, _CONTENT_TYPE = range(5)
_REQUEST_HEADER_ACTIONS = {
    **dict.fromkeys(HOP_BY_HOP | _REPLACED, _DROP),
    b"connection": _CONNECTION,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"host": _HOST,
    b"content-type": _CONTENT_TYPE,
}
_CHECKED_PREFIXES = (b"proxy-", b"event-")
_PLAIN_CONNECTION_VALUES = frozenset({b"close", b"keep-alive"})


def rewrite_request_head(
    method: bytes,
    target: bytes,
    headers: Headers,
    *,
    body_length: int,
    client_ip: bytes,
    default_host: bytes,
    event_id: bytes,
    event_time: bytes,
    scheme: bytes = b"http",
    extra: bytes = b"",
) -> bytes:
    """The head sent to an instance: the client's headers without hop-by-hop ones, the body
    framed by Content-Length, ``X-Forwarded-*`` and the Kubeless event headers added, and
    ``extra`` (complete header lines, e.g. the mesh's ``traceparent``)."""
    # One pass that builds the head as it reads the headers: this runs once per call. What is
    # rare (forwarded-for and event headers from the client) costs nothing until it is seen.
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    host: bytes | None = None
    content_type: bytes | None = None
    forwarded_for: list[bytes] | None = None
    sent_events: set[bytes] | None = None
    for name, value in headers:
        lower_name = name.lower()
        action = _REQUEST_HEADER_ACTIONS.get(lower_name)
        if action is None:
            if lower_name.startswith(_CHECKED_PREFIXES):
                if lower_name.startswith(b"proxy-"):
                    continue  # hop-by-hop
                if sent_events is None:
                    sent_events = set()
                sent_events.add(lower_name)
        elif action == _HOST:
            host = value
        elif action == _CONTENT_TYPE:
            content_type = value
        elif action == _FORWARDED_FOR:
            if forwarded_for is None:
                forwarded_for = []
            forwarded_for.append(value)
            continue
        elif action == _CONNECTION and _names_options(value):
            return rewrite_request_head(
                method,
                target,
                without_connection_options(headers),
                body_length=body_length,
                client_ip=client_ip,
                default_host=default_host,
                event_id=event_id,
                event_time=event_time,
                scheme=scheme,
                extra=extra,
            )
        else:
            continue  # hop-by-hop, or set by the gateway itself
        parts += (name, b": ", value, b"\r\n")
    if host is None:
        host = default_host
        parts += (b"Host: ", host, b"\r\n")
    if body_length or method in _BODY_METHODS:
        parts.append(b"Content-Length: %d\r\n" % body_length)
    if forwarded_for is not None:
        forwarded_for.append(client_ip)
        client_ip = b", ".join(forwarded_for)
    event_type = content_type or DEFAULT_EVENT_TYPE
    if sent_events is None:  # the common case: the rest of the head in one format
        parts.append(
            _FORWARDED_AND_EVENTS
            % (client_ip, host, scheme, extra, event_id, event_time, event_type, EVENT_NAMESPACE)
        )
        return b"".join(parts)
    parts.append(_FORWARDED % (client_ip, host, scheme, extra))
    event_values = (event_id, event_time, event_type, EVENT_NAMESPACE)
    for event_name, event_value in zip(_EVENT_HEADERS, event_values, strict=True):
        if event_name not in sent_events:
            parts += (event_name, b": ", event_value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def relay_response_head(
    status: int,
    reason: bytes,
    headers: Headers,
    *,
    chunked: bool,
    connection: bytes | None,
) -> bytes:
    """The head sent to the client for an instance's response.

    ``chunked`` re-frames a body whose length is unknown; ``connection`` is the Connection header
    to send (``close``, ``keep-alive`` for an HTTP/1.0 client) or None.
    """
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _reason(status))]
    for name, value in headers:
        lower_name = name.lower()
        if lower_name in HOP_BY_HOP or lower_name.startswith(b"proxy-"):  # is_hop_by_hop
            if lower_name == b"connection" and _names_options(value):
                filtered = without_connection_options(headers)
                return relay_response_head(
                    status, reason, filtered, chunked=chunked, connection=connection
                )
            continue
        if chunked and lower_name == b"content-length":
            continue
        parts += (name, b": ", value, b"\r\n")
    if chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if connection is not None:
        parts += (b"Connection: ", connection, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def error_response(
    status: int,
    message: str,
    *,
    function: str | None = None,
    connection: bytes | None = None,
    head_only: bool = False,
) -> bytes:
    """A complete response with the JSON body ``{"error": ..., "function": ...}``."""
    document = {"error": message} if function is None else {"error": message, "function": function}
    body = json.dumps(document).encode()
    return _complete_response(
        status, b"application/json", body, connection=connection, head_only=head_only
    )


def text_response(
    status: int, text: str, *, connection: bytes | None = None, head_only: bool = False
) -> bytes:
    """A complete plain-text response."""
    body = text.encode()
    return _complete_response(
        status, b"text/plain; charset=utf-8", body, connection=connection, head_only=head_only
    )


def json_response(
    status: int,
    document: object,
    *,
    headers: Headers = (),
    connection: bytes | None = None,
    head_only: bool = False,
) -> bytes:
    """A complete response with a JSON body and extra ``headers`` (names and values checked
    by the caller)."""
    body = json.dumps(document).encode()
    return _complete_response(
        status, b"application/json", body, connection=connection, head_only=head_only, extra=headers
    )


def _complete_response(
    status: int,
    content_type: bytes,
    body: bytes,
    *,
    connection: bytes | None,
    head_only: bool,
    extra: Headers = (),
) -> bytes:
    parts = [
        b"HTTP/1.1 %d %s\r\n" % (status, _reason(status)),
        b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body)),
    ]
    parts += [b"%s: %s\r\n" % (name, value) for name, value in extra]
    if connection is not None:
        parts.append(b"Connection: %s\r\n" % connection)
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"
