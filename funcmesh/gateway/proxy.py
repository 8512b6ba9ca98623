"""One function call: lease an instance, relay the exchange, answer every failure.

This is the gateway's failure table (429, 502, 503, 504, each with a JSON body that says what
happened) and the only code that holds a ``Lease``: it releases each lease exactly once. It does
not parse HTTP (``upstream`` and ``downstream`` do) and does not route (``server`` does).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Protocol

from funcmesh.errors import FuncmeshError, QueueFull
from funcmesh.gateway.backends import Backend, Lease
from funcmesh.gateway.messages import Request, rewrite_request_head
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.gateway.upstream import (
    ClientGone,
    ResponseSink,
    UpstreamBroken,
    UpstreamConnection,
    UpstreamPool,
    UpstreamTimeout,
)

EXIT_REASON_WAIT_S = 0.5
_EVENT_IDS_PER_DRAW = 256
CLIENT_CLOSED_STATUS = 499  # nginx's name for it: the client left before the answer


class Responder(ResponseSink, Protocol):
    """The client side of a call, as the relay sees it."""

    @property
    def client_gone(self) -> bool: ...

    @property
    def response_started(self) -> bool: ...

    def send_error(self, status: int, message: str, *, function: str | None = None) -> None:
        """Answer with a JSON error (only before the response started)."""
        ...

    def abort(self) -> None:
        """Cut the client connection: the only signal left once a response has started."""
        ...


class Relay:
    """Calls functions through their backends, over pooled upstream connections."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self._clock_second = -1
        self._clock_text = b""
        self._event_ids: list[bytes] = []

    async def call(
        self, backend: Backend, route: FunctionRoute, request: Request, responder: Responder
    ) -> None:
        """Answer ``request`` with the function's response, or with an error that says why not."""
        function = backend.display_name
        try:
            lease = await backend.acquire()
        except QueueFull as exc:
            message = str(exc) or f"function {function} is busy: too many calls are waiting"
            responder.send_error(429, message, function=function)
            return
        except FuncmeshError as exc:
            message = str(exc) or f"function {function} is unavailable"
            responder.send_error(503, message, function=function)
            return
        await self._call_instance(lease, function, route, request, responder)

    async def _call_instance(
        self,
        lease: Lease,
        function: str,
        route: FunctionRoute,
        request: Request,
        responder: Responder,
    ) -> None:
        started_s = self._loop.time()
        status, ok = 502, False
        try:
            status = await self._exchange(lease, route, request, responder)
            ok = status < 500
        except UpstreamTimeout:
            lease.kill(f"killed after the {lease.timeout_s:g}s timeout")
            status = 504
            message = (
                f"Request timeout exceeded: function {function} did not answer "
                f"within {lease.timeout_s:g}s"
            )
            _fail(responder, status, message, function=function)
        except UpstreamBroken as exc:
            status = 502
            message = await _broken_message(lease, exc)
            _fail(responder, status, message, function=function)
        except ClientGone:
            status, ok = CLIENT_CLOSED_STATUS, True
        except asyncio.CancelledError:
            status = 503  # the gateway is shutting down
            raise
        finally:
            lease.release(ok=ok, status=status, duration_s=self._loop.time() - started_s)

    async def _exchange(
        self, lease: Lease, route: FunctionRoute, request: Request, responder: Responder
    ) -> int:
        if responder.client_gone:
            raise ClientGone("the client left while the call waited for an instance")
        head = self._upstream_head(lease, route, request)
        connection = self._pool.take_idle(lease.instance_id)
        if connection is not None:
            try:
                return await self._exchange_on(connection, head, lease, request, responder)
            except UpstreamBroken as exc:
                if not exc.retryable:
                    raise
        connection = await self._pool.connect(
            lease.instance_id, lease.address, timeout_s=lease.timeout_s
        )
        return await self._exchange_on(connection, head, lease, request, responder)

    async def _exchange_on(
        self,
        connection: UpstreamConnection,
        head: bytes,
        lease: Lease,
        request: Request,
        responder: Responder,
    ) -> int:
        exchange = connection.exchange(
            head,
            request.body,
            responder,
            head_only=request.head_only,
            timeout_s=lease.timeout_s,
        )
        try:
            status = await exchange
        except BaseException:
            connection.abort()  # an unfinished exchange leaves the connection unusable
            raise
        if connection.reusable:
            self._pool.put_idle(connection, now_s=self._loop.time())
        else:
            connection.close()
        return status

    def _upstream_head(self, lease: Lease, route: FunctionRoute, request: Request) -> bytes:
        host, port = lease.address
        return rewrite_request_head(
            request.method,
            route.target,
            request.headers,
            body_length=len(request.body),
            client_ip=request.client_ip,
            default_host=f"{host}:{port}".encode(),
            event_id=self._event_id(),
            event_time=self._event_time(),
        )

    def _event_id(self) -> bytes:
        """15 random URL-safe characters like Kubeless' ids; drawn in batches, because one
        getrandom system call per request is a measurable share of the hot path."""
        if not self._event_ids:
            text = base64.urlsafe_b64encode(os.urandom(12 * _EVENT_IDS_PER_DRAW))
            self._event_ids = [text[start : start + 15] for start in range(0, len(text), 16)]
        return self._event_ids.pop()

    def _event_time(self) -> bytes:
        """Now in RFC 3339 UTC (``2021-05-03T11:31:53Z``), formatted once per second."""
        now = int(time.time())
        if now != self._clock_second:
            self._clock_second = now
            self._clock_text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)).encode()
        return self._clock_text


def _fail(responder: Responder, status: int, message: str, *, function: str) -> None:
    if responder.response_started:
        responder.abort()
    else:
        responder.send_error(status, message, function=function)


async def _broken_message(lease: Lease, exc: UpstreamBroken) -> str:
    exit_reason = await lease.exit_reason(EXIT_REASON_WAIT_S)
    if exit_reason is not None:
        return f"instance {lease.instance_id} exited during the call: {exit_reason}"
    host, port = lease.address
    return f"connection to instance {lease.instance_id} at {host}:{port} failed: {exc.reason}"
