"""The Kubernetes service proxy: ``/api/v1/namespaces/{ns}/services/{name}[:{port}]/proxy/{path}``.

Any method is forwarded to the gateway at ``{gateway_url}/function/{name}.{ns}/{path}?{query}``
with the request body and headers (minus the API credentials and hop-by-hop headers), and the
gateway's answer is streamed back unchanged: status, headers and body bytes (never decompressed).
This is how ``funcmesh function call`` reaches a function, as ``kubeless function call`` did.
Bodies are never logged.
"""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from funcmesh.api.wire import read_body
from funcmesh.errors import Unavailable

logger = logging.getLogger(__name__)

HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# The API credentials stay here; the client computes host and length for the new request.
NOT_FORWARDED_HEADERS = frozenset({"authorization", "host", "content-length"})
PROXY_PREFIX_SEGMENTS = 8  # "", api, v1, namespaces, {ns}, services, {name}, proxy
ASYNC_PREFIX_SEGMENTS = 7  # "", funcmesh, v1, namespaces, {ns}, async-function, {name}
ASYNC_PATH = "/funcmesh/v1/namespaces/{namespace}/async-function/{service}"
CONNECT_TIMEOUT_S = 5.0


class ServiceProxy:
    """Forwards service proxy requests to the gateway; owns one client session."""

    def __init__(self, *, gateway_url: str, max_body_bytes: int) -> None:
        self._gateway_url = gateway_url.rstrip("/")
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
        self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, self.upstream_url(request))

    async def handle_async(self, request: web.Request) -> web.StreamResponse:
        """``/funcmesh/v1/namespaces/{ns}/async-function/{name}/{path}``: the gateway's async
        call of the function (202 and a call id); how ``function call --async`` reaches it."""
        return await self._forward(request, self.async_upstream_url(request))

    async def _forward(self, request: web.Request, url: URL) -> web.StreamResponse:
        if self._session is None:
            raise Unavailable("the API server is shutting down")
        body = await read_body(request, max_bytes=self._max_body_bytes)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=forwarded_request_headers(request),
                data=body if body or request.method in ("POST", "PUT", "PATCH") else None,
                allow_redirects=False,
            ) as upstream:
                return await _relay(request, upstream)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise Unavailable(
                f"the gateway at {self._gateway_url} did not answer: {exc or type(exc).__name__}"
            ) from exc

    def upstream_url(self, request: web.Request) -> URL:
        return self._gateway_target(request, "function", PROXY_PREFIX_SEGMENTS)

    def async_upstream_url(self, request: web.Request) -> URL:
        return self._gateway_target(request, "async-function", ASYNC_PREFIX_SEGMENTS)

    def _gateway_target(self, request: web.Request, kind: str, prefix_segments: int) -> URL:
        namespace = request.match_info["namespace"]
        service = _service_name(request.match_info["service"])
        raw_path, _, query = request.raw_path.partition("?")  # still percent-encoded
        rest = raw_path.split("/")[prefix_segments:]
        suffix = "/" + "/".join(rest) if rest else ""
        target = f"{self._gateway_url}/{kind}/{service}.{namespace}{suffix}"
        return URL(target + (f"?{query}" if query else ""), encoded=True)


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    response = web.StreamResponse(
        status=upstream.status,
        reason=upstream.reason,
        headers=_without_hop_by_hop(upstream.headers),
    )
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except aiohttp.ClientError as exc:
        logger.warning("the gateway broke off the answer to %s: %s", request.path, exc)
        if request.transport is not None:
            request.transport.close()  # the client must see a broken answer, not a short one
        return response
    except ConnectionResetError:
        return response  # the client went away
    await response.write_eof()
    return response


def _service_name(text: str) -> str:
    """``name``, ``name:port`` or ``scheme:name:port`` -> ``name``."""
    parts = text.split(":")
    return parts[1] if len(parts) == 3 else parts[0]


def forwarded_request_headers(request: web.Request) -> CIMultiDict[str]:
    headers = _without_hop_by_hop(request.headers, also=NOT_FORWARDED_HEADERS)
    peer = request.remote or ""
    previous = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{previous}, {peer}" if previous else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


def _without_hop_by_hop(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, also: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, those the Connection header lists, and ``also``."""
    listed = {
        name.strip().lower()
        for value in headers.getall("Connection", [])
        for name in value.split(",")
    }
    dropped = HOP_BY_HOP_HEADERS | also | listed
    return CIMultiDict(
        (name, value) for name, value in headers.items() if name.lower() not in dropped
    )
