"""Requests that an HTTPTrigger routes: basic auth, CORS, then the call of the function through
the mesh, decided as ``/function/NAME`` decides it (``mesh_plane.MeshPlane.call_function``): the
function's VirtualServices route it (canary splits, faults, retries...) and its DestinationRule
balances it; without rules it goes straight to the function. Measured and logged as every call.

``HttpTriggers.find`` is the only per-request cost when no trigger exists (one truth test of an
empty table). A matched request goes to the trigger's function with its target as the client
sent it (what a VirtualService's ``uri`` match sees). Basic auth answers 401 with
``WWW-Authenticate`` until the credentials match the trigger's htpasswd Secret; a bcrypt check
that was not verified lately runs in a worker thread (it takes tens of milliseconds), everything
else inline. With CORS enabled, a preflight (``OPTIONS`` with ``Access-Control-Request-Method``)
is answered 204 here and every answer gets ``Access-Control-Allow-Origin: *``. No credentials or
bodies are logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from typing import Protocol

from funcmesh.discovery.htpasswd import Htpasswd
from funcmesh.discovery.routes import HttpRoute, RouteTable
from funcmesh.gateway.messages import BodyFraming, Headers, Request
from funcmesh.gateway.proxy import Responder
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.gateway.upstream import NO_SOURCE, ResponseSource

logger = logging.getLogger(__name__)

CORS_HEADERS: Headers = (
    (b"Access-Control-Allow-Origin", b"*"),
    (b"Access-Control-Allow-Credentials", b"true"),
    (b"Access-Control-Expose-Headers", b"*"),
)
CORS_PREFLIGHT_HEADERS: Headers = (
    *CORS_HEADERS,
    (b"Access-Control-Allow-Methods", b"GET, PUT, POST, DELETE, PATCH, OPTIONS"),
    (
        b"Access-Control-Allow-Headers",
        b"DNT,Keep-Alive,User-Agent,X-Requested-With,If-Modified-Since,Cache-Control,"
        b"Content-Type,Range,Authorization",
    ),
    (b"Access-Control-Max-Age", b"1728000"),
)
_UNAUTHORIZED_BODY = b'{"error": "authentication required"}'


class HttpTriggers:
    """Answers the requests that the HTTPTrigger routes of ``table`` match."""

    def __init__(self, table: RouteTable) -> None:
        self._table = table
        self._checks: set[asyncio.Task[None]] = set()

    def find(self, request: Request, target: bytes) -> HttpRoute | None:
        """The route ``request`` takes, or None (at once while no trigger exists)."""
        table = self._table
        if not table:
            return None
        path = target.partition(b"?")[0].decode("latin-1")
        return table.match(_header(request, b"host").decode("latin-1"), path)

    def answer(
        self,
        route: HttpRoute,
        request: Request,
        target: bytes,
        connection: Responder,
        calls: FunctionCalls,
    ) -> bool:
        """True when answered at once; False when the call ends with ``connection.end_call()``."""
        responder = _CorsResponder(connection) if route.cors_enable else connection
        if route.cors_enable and _is_preflight(request):
            _send_complete(connection, request, 204, CORS_PREFLIGHT_HEADERS, b"")
            return True
        if route.auth_problem:
            responder.send_error(
                503, f"HTTP trigger {route.realm} cannot check passwords: " f"{route.auth_problem}"
            )
            return True
        if route.auth is None:
            return self._call(route, request, target, responder, calls)
        credentials = _basic_credentials(request)
        if credentials is None:
            _send_unauthorized(responder, request, route)
            return True
        if not route.auth.needs_thread(*credentials):
            if route.auth.verify(*credentials):
                return self._call(route, request, target, responder, calls)
            _send_unauthorized(responder, request, route)
            return True
        task = asyncio.get_running_loop().create_task(
            self._check_then_call(route, route.auth, credentials, request, target, responder, calls)
        )
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)
        return False

    async def close(self) -> None:
        """Stop the password checks still running (their clients are being cut anyway)."""
        for task in self._checks:
            task.cancel()
        await asyncio.gather(*self._checks, return_exceptions=True)

    async def _check_then_call(
        self,
        route: HttpRoute,
        auth: Htpasswd,
        credentials: tuple[str, str],
        request: Request,
        target: bytes,
        responder: Responder,
        calls: FunctionCalls,
    ) -> None:
        try:
            verified = await asyncio.to_thread(auth.verify, *credentials)
            if not verified:
                _send_unauthorized(responder, request, route)
            elif not self._call(route, request, target, responder, calls):
                return  # the relay ends the call
        except asyncio.CancelledError:
            responder.abort()
            responder.end_call()
            raise
        except Exception:  # a request boundary: the client gets a 500, not silence
            logger.exception("checking the password for HTTP trigger %s failed", route.realm)
            responder.send_error(500, "internal error in the gateway; see the daemon log")
        responder.end_call()

    def _call(
        self,
        route: HttpRoute,
        request: Request,
        target: bytes,
        responder: Responder,
        calls: FunctionCalls,
    ) -> bool:
        call_route = FunctionRoute(namespace=route.namespace, name=route.function, target=target)
        function = call_route.display_name
        missing = f"function {function} of HTTP trigger {route.realm} not found"
        return calls.call_function(call_route, request, responder, missing=missing)


class FunctionCalls(Protocol):
    """The mesh (``mesh_plane.MeshPlane``), as a trigger's call of its function needs it."""

    def call_function(
        self,
        route: FunctionRoute,
        request: Request,
        client: Responder,
        *,
        port: int = 0,
        missing: str = "",
    ) -> bool:
        """Call the function ``route`` names, by its mesh rules; False when the call started,
        True when it was answered at once (``missing``: the 404's message)."""
        ...


class _CorsResponder:
    """A client connection whose responses carry the CORS headers."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Responder) -> None:
        self._connection = connection

    @property
    def client_gone(self) -> bool:
        return self._connection.client_gone

    @property
    def response_started(self) -> bool:
        return self._connection.response_started

    def start_response(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        framing: BodyFraming,
        source: ResponseSource,
    ) -> bool:
        with_cors = [*headers, *CORS_HEADERS]
        return self._connection.start_response(status, reason, with_cors, framing, source)

    def send_body(self, data: bytes) -> None:
        self._connection.send_body(data)

    def end_response(self) -> None:
        self._connection.end_response()

    def flush(self) -> None:
        self._connection.flush()

    def send_error(
        self, status: int, message: str, *, function: str | None = None, cause: str = ""
    ) -> None:
        self._connection.send_error(status, message, function=function, cause=cause)

    def abort(self) -> None:
        self._connection.abort()

    def end_call(self) -> None:
        self._connection.end_call()


def _send_complete(
    responder: Responder, request: Request, status: int, headers: Headers, body: bytes
) -> None:
    framing = BodyFraming.CONTENT_LENGTH if body else BodyFraming.NONE
    length = () if status == 204 else ((b"Content-Length", b"%d" % len(body)),)
    if not responder.start_response(status, b"", [*headers, *length], framing, NO_SOURCE):
        return
    if body and not request.head_only:
        responder.send_body(body)
    responder.end_response()


def _send_unauthorized(responder: Responder, request: Request, route: HttpRoute) -> None:
    challenge = b'Basic realm="%s", charset="UTF-8"' % route.realm.encode()
    headers = ((b"WWW-Authenticate", challenge), (b"Content-Type", b"application/json"))
    _send_complete(responder, request, 401, headers, _UNAUTHORIZED_BODY)


def _is_preflight(request: Request) -> bool:
    return request.method == b"OPTIONS" and bool(_header(request, b"access-control-request-method"))


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, encoded = _header(request, b"authorization").strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _header(request: Request, lower_name: bytes) -> bytes:
    for name, value in request.headers:
        if name.lower() == lower_name:
            return value
    return b""
