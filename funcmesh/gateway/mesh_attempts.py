"""What one mesh attempt sees of its client, and the pure rules the mesh call applies.

``Attempt`` stands between one upstream exchange and the client: it relays the answer (with
the route's response header operations), or swallows it when its ``AttemptOwner`` (the
``mesh_calls.MeshCall``) will retry; ``Shadow`` takes a mirrored request's answer and drops it.
``retriable`` is Envoy's rule as a pure function.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from funcmesh.gateway.backends import Backend
from funcmesh.gateway.destinations import Resolved
from funcmesh.gateway.messages import BodyFraming, Headers
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.upstream import ResponseSource

_GATEWAY_ERRORS = frozenset({502, 503, 504})
_LOCAL_FAILURES = ("UF", "UC", "UT")  # the connection failed, broke, or the try timed out


class AttemptOwner(Protocol):
    """The mesh call an attempt belongs to."""

    @property
    def client(self) -> Responder: ...

    def will_retry(self, status: int, cause: str) -> bool: ...

    def response_headers(self, headers: Headers) -> Headers: ...

    def attempt_ended(self, attempt: Attempt) -> None: ...


class Attempt:
    """One attempt's view of the client: relays the answer, or swallows it for a retry."""

    __slots__ = (
        "backend",
        "bytes_sent",
        "call",
        "cause",
        "forwarded",
        "retrying",
        "started_s",
        "status",
        "upstream_host",
    )

    def __init__(self, call: AttemptOwner, backend: Backend, started_s: float) -> None:
        self.call = call
        self.backend = backend
        self.started_s = started_s
        self.status = 0
        self.cause = ""
        self.bytes_sent = 0
        self.retrying = False
        self.forwarded = False
        self.upstream_host = ""  # the instance's ip:port, once it answered

    @property
    def client_gone(self) -> bool:
        return self.call.client.client_gone

    @property
    def response_started(self) -> bool:
        return self.forwarded

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: BodyFraming,
        source: ResponseSource,
    ) -> bool:
        self.status = status
        self.upstream_host = source.peer
        if status >= 400 and self.call.will_retry(status, ""):
            self.retrying = True
            return True  # read and drop the body: the connection stays usable
        self.forwarded = True
        headers = self.call.response_headers(headers)
        return self.call.client.start_response(status, reason, headers, framing, source)

    def send_body(self, data: bytes) -> None:
        if not self.retrying:
            self.bytes_sent += len(data)
            self.call.client.send_body(data)

    def end_response(self) -> None:
        if not self.retrying:
            self.call.client.end_response()

    def flush(self) -> None:
        if not self.retrying:
            self.call.client.flush()

    def send_error(
        self, status: int, message: str, *, function: str | None = None, cause: str = ""
    ) -> None:
        self.status = status
        self.cause = cause
        if self.call.will_retry(status, cause):
            self.retrying = True
            return
        self.forwarded = True
        self.call.client.send_error(status, message, function=function, cause=cause)

    def abort(self) -> None:
        self.call.client.abort()

    def end_call(self) -> None:
        self.call.attempt_ended(self)


class Shadow:
    """Where a mirrored request's answer goes: nowhere. Tells the EndpointSet how it went."""

    __slots__ = ("_backend", "_resolved", "_started_s", "_status")

    def __init__(self, resolved: Resolved, backend: Backend, started_s: float) -> None:
        self._resolved = resolved
        self._backend = backend
        self._started_s = started_s
        self._status = 0

    client_gone = False
    response_started = False

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: BodyFraming,
        source: ResponseSource,
    ) -> bool:
        self._status = status
        return True

    def send_body(self, data: bytes) -> None:
        pass

    def end_response(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def send_error(
        self, status: int, message: str, *, function: str | None = None, cause: str = ""
    ) -> None:
        self._status = status

    def abort(self) -> None:
        pass

    def end_call(self) -> None:
        latency_s = asyncio.get_running_loop().time() - self._started_s
        self._resolved.members.finished(self._backend, latency_s=latency_s, status=self._status)


def retriable(retry_on: tuple[str, ...], status: int, cause: str) -> bool:
    """Envoy's ``x-envoy-retry-on`` conditions for an attempt that ended with ``status``;
    ``cause`` is UF (connection failed), UC (reset) or UT (per-try timeout) for local ends."""
    for condition in retry_on:
        if condition == "5xx":
            if status >= 500 or cause in _LOCAL_FAILURES:
                return True
        elif condition == "gateway-error":
            if status in _GATEWAY_ERRORS or cause in _LOCAL_FAILURES:
                return True
        elif condition == "connect-failure":
            if cause == "UF":
                return True
        elif condition == "reset":
            if cause in ("UC", "UT"):
                return True
        elif condition == "retriable-4xx":
            if status == 409:
                return True
        elif condition.isdigit() and status == int(condition):
            return True
    return False
