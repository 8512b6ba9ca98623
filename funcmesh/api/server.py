"""The API server: one aiohttp application over TLS, its routes, middlewares and lifecycle.

Middlewares, outermost first: request metrics, errors (every failure becomes a Status, via the
one table in ``status``), bearer token authentication. Routes: health and version (public),
discovery, resources, the service proxy, server configuration, the mesh's access log and traces,
mesh certificates, and ``/metrics``. ``close``
ends watches and log follows with a proper end of stream, drains in-flight requests, then stops.
The access log is written at debug level and holds neither bodies nor credentials.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable

import prometheus_client
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from funcmesh.api import discovery, mesh_certs, mesh_logs, openapi
from funcmesh.api.auth import PUBLIC_PATHS, Handler, bearer_token_middleware
from funcmesh.api.extensions import Extensions
from funcmesh.api.negotiation import discovery_version
from funcmesh.api.paths import unknown_path
from funcmesh.api.providers import ApiProviders
from funcmesh.api.proxy import ASYNC_PATH, ServiceProxy
from funcmesh.api.resources import ResourceHandlers
from funcmesh.api.sources import PodObjects, StoredObjects
from funcmesh.api.traces import TRACES_PATH, TracesEndpoint
from funcmesh.api.wire import error_response, http_error_response, json_response
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.identity import MeshIdentity
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.model.kinds import POD
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("funcmesh.api.access")

MAX_BODY_BYTES = 3 << 20  # etcd's request limit
MAX_PROXY_BODY_BYTES = 10 << 20
SHUTDOWN_TIMEOUT_S = 5.0


class ApiServer:
    """The Kubernetes-style API over HTTPS."""

    def __init__(
        self,
        *,
        store: Store,
        providers: ApiProviders,
        token: str,
        ssl_context: ssl.SSLContext,
        host: str,
        port: int,
        gateway_url: str,
        metrics_registry: prometheus_client.CollectorRegistry,
        is_ready: Callable[[], bool],
        access_log: AccessLog | None = None,
        traces: TraceStore | None = None,
        mesh_identity: MeshIdentity | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_proxy_body_bytes: int = MAX_PROXY_BODY_BYTES,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._is_ready = is_ready
        self._registry = metrics_registry
        self._shutdown_timeout_s = shutdown_timeout_s
        self._stop = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._metrics = _RequestMetrics(metrics_registry)
        self._proxy = ServiceProxy(gateway_url=gateway_url, max_body_bytes=max_proxy_body_bytes)
        self._extensions = Extensions(store=store, providers=providers, stop=self._stop)
        self._mesh_access_log = mesh_logs.MeshAccessLogEndpoint(access_log, stop=self._stop)
        self._traces = TracesEndpoint(traces)
        self._mesh_certs = mesh_certs.MeshCertificatesEndpoint(mesh_identity, store=store)
        self._resources = ResourceHandlers(
            stored=StoredObjects(store),
            derived={
                POD.key: PodObjects(providers.pods, resource_version=lambda: store.resource_version)
            },
            admission=providers.admission,
            extensions=self._extensions,
            stop=self._stop,
            max_body_bytes=max_body_bytes,
        )
        self._app = self._application(token, max(max_body_bytes, max_proxy_body_bytes))

    @property
    def bound_port(self) -> int:
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the API server is not started")
        return int(self._runner.addresses[0][1])

    @property
    def server_address(self) -> str:
        """``host:port`` as clients write it (``[::1]:6443`` for IPv6)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self.bound_port}"

    async def start(self) -> None:
        runner = web.AppRunner(
            self._app,
            handler_cancellation=True,  # a vanished client ends its watch or proxy request
            access_log_class=_DebugAccessLogger,
            access_log=access_logger,
            shutdown_timeout=self._shutdown_timeout_s,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, ssl_context=self._ssl_context)
            await site.start()
            await self._proxy.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("API server listening on https://%s", self.server_address)

    async def close(self) -> None:
        """Stop serving; safe to call more than once."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._proxy.close()
        self._metrics.unregister()

    def _application(self, token: str, client_max_size: int) -> web.Application:
        app = web.Application(
            middlewares=[self._count, self._errors, bearer_token_middleware(token)],
            client_max_size=client_max_size,
        )
        proxy_path = "/api/v1/namespaces/{namespace}/services/{service}/proxy{rest:(/.*)?}"
        app.router.add_get("/healthz", self._alive)
        app.router.add_get("/livez", self._alive)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/version", self._version)
        app.router.add_get("/", self._root)
        app.router.add_get("/api", self._api)
        app.router.add_get("/api/{version}", self._api_resources)
        app.router.add_get("/apis", self._apis)
        app.router.add_get("/apis/{group}", self._api_group)
        app.router.add_get("/apis/{group}/{version}", self._api_resources)
        app.router.add_route("*", proxy_path, self._proxy.handle)
        app.router.add_route("*", "/api/{version}/{tail:.+}", self._resources.core)
        app.router.add_route("*", "/apis/{group}/{version}/{tail:.+}", self._resources.grouped)
        app.router.add_get("/funcmesh/v1/server-config", self._extensions.server_config)
        app.router.add_get("/funcmesh/v1/calls/{id}", self._extensions.async_call)
        app.router.add_get(mesh_logs.PATH, self._mesh_access_log.serve)
        app.router.add_get(TRACES_PATH, self._traces.list)
        app.router.add_post(mesh_certs.PATH, self._mesh_certs.issue)
        app.router.add_get(TRACES_PATH + "/{trace_id}", self._traces.get)
        app.router.add_route("*", ASYNC_PATH, self._proxy.handle_async)
        app.router.add_route("*", ASYNC_PATH + "/{tail:.*}", self._proxy.handle_async)
        app.router.add_get("/metrics", self._prometheus)
        app.router.add_get("/openapi/v3", self._openapi_root)
        app.router.add_get("/openapi/v3/{tail:.+}", self._openapi_document)
        return app

    # middlewares

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        response = await handler(request)
        self._metrics.observe(request.method, response, time.monotonic() - started)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return http_error_response(exc, request)
        except Exception as exc:  # noqa: BLE001 - the request boundary; error_response logs
            return error_response(exc, request)

    # endpoints

    async def _alive(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _ready(self, request: web.Request) -> web.Response:
        if self._is_ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="not ready")

    async def _version(self, request: web.Request) -> web.Response:
        return json_response(discovery.version_info())

    async def _root(self, request: web.Request) -> web.Response:
        paths = [
            "/api",
            "/api/v1",
            "/apis",
            "/funcmesh/v1/server-config",
            mesh_logs.PATH,
            TRACES_PATH,
            mesh_certs.PATH,
            "/metrics",
            "/openapi/v3",
            *PUBLIC_PATHS,
        ]
        for group, versions in discovery.group_versions().items():
            if group:
                paths += [f"/apis/{group}", *(f"/apis/{group}/{v}" for v in versions)]
        return json_response({"paths": sorted(set(paths))})

    async def _api(self, request: web.Request) -> web.Response:
        version = discovery_version(request.headers.get("Accept", ""))
        if version is not None:
            body = discovery.aggregated_discovery(core=True, version=version)
            return json_response(body, content_type=discovery.discovery_content_type(version))
        return json_response(discovery.api_versions(self.server_address))

    async def _apis(self, request: web.Request) -> web.Response:
        version = discovery_version(request.headers.get("Accept", ""))
        if version is not None:
            body = discovery.aggregated_discovery(core=False, version=version)
            return json_response(body, content_type=discovery.discovery_content_type(version))
        return json_response(discovery.api_group_list())

    async def _api_group(self, request: web.Request) -> web.Response:
        body = discovery.api_group(request.match_info["group"])
        if body is None:
            raise unknown_path(request.path)
        return json_response(body)

    async def _api_resources(self, request: web.Request) -> web.Response:
        group = request.match_info.get("group", "")
        body = discovery.api_resource_list(group, request.match_info["version"])
        if body is None:
            raise unknown_path(request.path)
        return json_response(body)

    async def _openapi_root(self, request: web.Request) -> web.Response:
        return json_response(openapi.openapi_root())

    async def _openapi_document(self, request: web.Request) -> web.Response:
        prefix, *rest = request.match_info["tail"].split("/")
        document = None
        if prefix == "api" and len(rest) == 1:
            document = openapi.openapi_document("", rest[0])
        elif prefix == "apis" and len(rest) == 2 and rest[0]:
            document = openapi.openapi_document(rest[0], rest[1])
        if document is None:
            raise unknown_path(request.path)
        return json_response(document)

    async def _prometheus(self, request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._registry)
        return web.Response(
            body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST}
        )


class _RequestMetrics:
    """Request counts and latencies in the daemon's registry."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self._registry = registry
        self.requests = prometheus_client.Counter(
            "funcmesh_api_requests",
            "API server requests by method and HTTP status code",
            ["method", "code"],
            registry=registry,
        )
        self.duration = prometheus_client.Histogram(
            "funcmesh_api_request_duration_seconds",
            "Time to answer API requests (streams excluded), by method",
            ["method"],
            registry=registry,
        )

    def observe(self, method: str, response: web.StreamResponse, duration_s: float) -> None:
        self.requests.labels(method=method, code=str(response.status)).inc()
        if isinstance(response, web.Response):  # a stream's duration is its client's business
            self.duration.labels(method=method).observe(duration_s)

    def unregister(self) -> None:
        for collector in (self.requests, self.duration):
            self._registry.unregister(collector)


class _DebugAccessLogger(AbstractAccessLogger):
    """One debug line per request: method, path (no query), status, duration."""

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)

    def log(
        self, request: web.BaseRequest, response: web.StreamResponse, duration_s: float
    ) -> None:
        duration_ms = duration_s * 1000
        self.logger.debug(
            "%s %s %s %.1fms", request.method, request.path, response.status, duration_ms
        )
