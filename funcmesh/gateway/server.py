"""The gateway: the HTTP entry for function calls (``/function/NAME[.NS]``) and its lifecycle.

``Gateway`` listens (and, given an ``ssl.SSLContext``, on a second TLS address whose requests
reach the instances with ``X-Forwarded-Proto: https``), routes each request (an HTTPTrigger's
host and path, see ``triggers``; a function call; ``/healthz``; or 404), enforces the
per-connection deadlines with one sweep per second (no timer per request), and drains on close.
``function_entrance`` gives the connections of a function Service's VIP (see ``vips``) the same
path with a fixed function. Function calls go through ``relay.Relay`` (which checks their
deadlines itself); the instances come from a ``Backends`` seam, so this module never imports the
runtime. No logging per request: this is the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from socket import socket
from typing import Protocol

from funcmesh.discovery.routes import RouteTable
from funcmesh.discovery.services import ServiceTable
from funcmesh.errors import Unavailable
from funcmesh.gateway.async_calls import Acceptor, AsyncCalls, route_async
from funcmesh.gateway.backends import Backends
from funcmesh.gateway.connections import ConnectionLimits
from funcmesh.gateway.destinations import Destinations, PodLabels
from funcmesh.gateway.downstream import ClientConnection
from funcmesh.gateway.mesh_access import MeshAccess
from funcmesh.gateway.mesh_plane import MeshPlane
from funcmesh.gateway.messages import Request
from funcmesh.gateway.relay import Relay
from funcmesh.gateway.routing import FunctionRoute, is_health_check, origin_form, route_function
from funcmesh.gateway.triggers import HttpTriggers
from funcmesh.gateway.upstream_pool import MAX_IDLE_PER_INSTANCE, UpstreamPool
from funcmesh.mesh.authz import Authorizer
from funcmesh.mesh.hosts import authority_host
from funcmesh.mesh.sources import SourceLookup
from funcmesh.mesh.table import MeshTable
from funcmesh.mesh.telemetry import Telemetry
from funcmesh.mesh.tracing import Tracer

logger = logging.getLogger(__name__)


class Listener(Protocol):
    """What the gateway uses of a listening server: asyncio's ``Server``, or uvloop's, which is
    not one (typed so, this module compiles with the data plane)."""

    @property
    def sockets(self) -> Sequence[socket]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Gateway:
    """Serves function calls on one address until ``close``."""

    def __init__(
        self,
        backends: Backends,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        max_body_bytes: int = 10 << 20,
        max_head_bytes: int = 64 << 10,
        header_timeout_s: float = 30.0,
        idle_timeout_s: float = 75.0,
        upstream_idle_timeout_s: float = 30.0,
        max_idle_per_instance: int = MAX_IDLE_PER_INSTANCE,
        backlog: int = 1024,
        sweep_interval_s: float = 1.0,
        async_calls: AsyncCalls | None = None,
        http_routes: RouteTable | None = None,
        tls_host: str = "127.0.0.1",
        tls_port: int = 8443,
        tls_context: ssl.SSLContext | None = None,
        mesh: MeshTable | None = None,
        services: ServiceTable | None = None,
        telemetry: Telemetry | None = None,
        pods: PodLabels | None = None,
        authorizer: Authorizer | None = None,
        tracer: Tracer | None = None,
        sources: SourceLookup | None = None,
    ) -> None:
        self._mesh = mesh
        self._sources = sources  # pod IP -> workload, asked once per client connection
        self._services = services
        self._telemetry = telemetry
        self._pods = pods
        self._authorizer = authorizer  # AuthorizationPolicy decisions, with the mesh table
        self._tracer = tracer
        self._plane: MeshPlane | None = None
        self._triggers = None if http_routes is None else HttpTriggers(http_routes)
        self._backends = backends
        self._acceptor = None if async_calls is None else Acceptor(async_calls)
        self._host = host
        self._port = port
        self._backlog = backlog
        self._sweep_interval_s = sweep_interval_s
        self._limits = ConnectionLimits(
            max_body_bytes=max_body_bytes,
            max_head_bytes=max_head_bytes,
            header_timeout_s=header_timeout_s,
            idle_timeout_s=idle_timeout_s,
        )
        self._upstream_idle_timeout_s = upstream_idle_timeout_s
        self._pool = UpstreamPool(max_idle_per_instance=max_idle_per_instance)
        self._relay: Relay | None = None
        self._server: Listener | None = None
        self._tls_host, self._tls_port, self._tls_context = tls_host, tls_port, tls_context
        self._tls_server: Listener | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._connections: set[ClientConnection] = set()
        self._draining = False

    @property
    def address(self) -> tuple[str, int]:
        """The bound host and port (the real port when constructed with port 0)."""
        if self._server is None or not self._server.sockets:
            raise Unavailable("the gateway is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def tls_address(self) -> tuple[str, int]:
        """The bound host and port of the TLS listener."""
        if self._tls_server is None or not self._tls_server.sockets:
            raise Unavailable("the gateway's TLS listener is not listening")
        host, port = self._tls_server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def open_connections(self) -> int:
        """Client connections currently open."""
        return len(self._connections)

    @property
    def limits(self) -> ConnectionLimits:
        return self._limits

    @property
    def draining(self) -> bool:
        return self._draining

    async def start(self) -> None:
        """Listen; raises Unavailable when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        self._relay = Relay(self._pool)
        destinations = None
        if self._mesh is not None and self._services is not None:
            destinations = Destinations(
                self._services, self._mesh, self._backends, clock=loop.time, pods=self._pods
            )
        access = None
        if self._mesh is not None and self._authorizer is not None:
            access = MeshAccess(self._authorizer, self._mesh)
        self._plane = MeshPlane(
            self._relay,
            destinations,
            backends=self._backends,
            telemetry=self._telemetry,
            access=access,
            tracer=self._tracer,
        )
        try:
            self._server = await loop.create_server(
                lambda: ClientConnection(self, sources=self._sources),
                self._host,
                self._port,
                backlog=self._backlog,
            )
        except OSError as exc:
            address = f"{self._host}:{self._port}"
            raise Unavailable(f"gateway cannot listen on {address}: {exc.strerror}") from exc
        self._sweeper = loop.call_later(self._sweep_interval_s, self._sweep)
        logger.info("gateway listening on %s:%d", *self.address)

    async def start_tls(self) -> None:
        """Listen for TLS on the TLS address, after ``start``; raises OSError when it cannot be
        bound. Without a TLS context, does nothing."""
        if self._tls_context is None:
            return
        loop = asyncio.get_running_loop()
        self._tls_server = await loop.create_server(
            lambda: ClientConnection(self, scheme=b"https", sources=self._sources),
            self._tls_host,
            self._tls_port,
            backlog=self._backlog,
            ssl=self._tls_context,
        )
        logger.info("gateway listening for TLS on %s:%d", *self.tls_address)

    async def close(self, drain_s: float) -> None:
        """Stop listening, let calls in flight finish for up to ``drain_s``, then cut the rest."""
        self._draining = True
        servers = [server for server in (self._server, self._tls_server) if server is not None]
        for server in servers:
            server.close()
        for connection in list(self._connections):
            connection.drain()
        if self._plane is not None:
            self._plane.close()
        if self._relay is not None:
            unfinished = await self._relay.drain(drain_s)
            if unfinished:
                logger.warning("gateway cut %d calls still running after %gs", unfinished, drain_s)
            await self._relay.close()
        if self._triggers is not None:
            await self._triggers.close()
        if self._acceptor is not None:
            await self._acceptor.close()
        for connection in list(self._connections):
            connection.abort()
        self._pool.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in servers:
            await server.wait_closed()

    # ConnectionOwner

    def answer(self, request: Request, connection: ClientConnection) -> bool:
        """True when the answer was written at once; False for a function call, which ends
        with ``connection.end_call()``."""
        target = origin_form(request.target)
        plane = self._plane
        assert plane is not None
        mesh = self._mesh
        if (
            mesh is not None
            and mesh.has_gateways
            and self._answer_bound(plane, request, target, connection)
        ):
            return False
        if self._triggers is not None and (trigger := self._triggers.find(request, target)):
            return self._triggers.answer(trigger, request, target, connection, plane)
        route = route_function(target)
        if route is None and (async_route := route_async(target)) is not None:
            return self._accept_async(async_route, request, connection)
        if route is None:
            if is_health_check(target):
                connection.send_text(200, "OK")
            else:
                connection.send_error(404, _no_route_message(target))
            return True
        return plane.call_function(route, request, connection)

    def _answer_bound(
        self, plane: MeshPlane, request: Request, target: bytes, connection: ClientConnection
    ) -> bool:
        """Route a request whose Host a Gateway object binds, by its VirtualServices; False
        when none of their routes matches (the request goes on to functions and triggers)."""
        assert self._mesh is not None
        authority = b""
        for name, value in request.headers:
            if name.lower() == b"host":
                authority = value
                break
        routes = self._mesh.gateway_routes(
            authority_host(authority), tls=request.scheme == b"https"
        )
        if routes is None:
            return False
        selected = routes.select(request.method, target, request.headers, 0)
        if selected is None:
            return False
        plane.call(selected.route, selected.target(target), request, connection)
        return True

    def function_entrance(
        self, namespace: str, name: str, port: int = 0
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for a listener whose every request calls one function, with the
        request's own target (the VIP of a function's Service). Its connections count as the
        gateway's: same limits and deadlines, drained and cut by ``close``."""
        owner = _FunctionEntrance(self, namespace, name, port)
        sources = self._sources
        return lambda: ClientConnection(owner, sources=sources)

    def selects_functions(self, namespace: str, selector: Mapping[str, str]) -> bool:
        """Whether a Service of ``namespace`` with ``selector`` is served here by deployed
        functions (started from zero when needed), through the mesh: then its VIP's HTTP ports
        come here (``vips``), not to kernel NAT, which reaches warm instances only."""
        plane = self._plane
        if plane is None or plane.services is None:
            return False
        return bool(self._backends.select(namespace, selector))

    @property
    def functions_generation(self) -> int:
        """Changes whenever ``selects_functions`` may answer differently."""
        return self._backends.generation

    def answer_for_function(
        self,
        namespace: str,
        name: str,
        request: Request,
        connection: ClientConnection,
        *,
        port: int = 0,
    ) -> bool:
        """``answer`` for a request to the Service ``namespace/name`` (a function's, one with
        mesh rules, or one in front of functions), through its routes."""
        assert self._plane is not None
        route = FunctionRoute(namespace=namespace, name=name, target=origin_form(request.target))
        return self._plane.call_function(route, request, connection, port=port)

    def _accept_async(
        self, route: FunctionRoute, request: Request, connection: ClientConnection
    ) -> bool:
        function = route.display_name
        if self._acceptor is None:
            connection.send_error(404, "async calls are not enabled on this gateway")
            return True
        if self._backends.lookup(route.namespace, route.name) is None:
            connection.send_error(404, f"function {function} not found", function=function)
            return True
        self._acceptor.accept(route, request, connection)
        return False

    def connection_opened(self, connection: ClientConnection) -> None:
        if self._draining:
            connection.abort()
            return
        self._connections.add(connection)

    def connection_closed(self, connection: ClientConnection) -> None:
        self._connections.discard(connection)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(self._sweep_interval_s, self._sweep)
        now_s = loop.time()
        try:
            for connection in list(self._connections):
                connection.check_deadline(now_s)
            self._pool.close_idle_since(now_s - self._upstream_idle_timeout_s)
        except Exception:
            logger.exception("gateway deadline sweep failed")


class _FunctionEntrance:
    """The owner of the connections to a function's VIP: the gateway, with one route."""

    __slots__ = ("_gateway", "_name", "_namespace", "_port")

    def __init__(self, gateway: Gateway, namespace: str, name: str, port: int) -> None:
        self._gateway = gateway
        self._namespace = namespace
        self._name = name
        self._port = port

    @property
    def limits(self) -> ConnectionLimits:
        return self._gateway.limits

    @property
    def draining(self) -> bool:
        return self._gateway.draining

    def answer(self, request: Request, connection: ClientConnection) -> bool:
        return self._gateway.answer_for_function(
            self._namespace, self._name, request, connection, port=self._port
        )

    def connection_opened(self, connection: ClientConnection) -> None:
        self._gateway.connection_opened(connection)

    def connection_closed(self, connection: ClientConnection) -> None:
        self._gateway.connection_closed(connection)


def _no_route_message(target: bytes) -> str:
    path = target.partition(b"?")[0][:200].decode("latin-1")
    return (
        f"no route for {path}: call a function at /function/NAME "
        "(namespace default) or /function/NAME.NAMESPACE"
    )
