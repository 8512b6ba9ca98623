"""Bearer token authentication for every path except the health and version endpoints.

The token comes from the kubeconfig that ``funcmesh up`` writes; it is compared in constant time
and never logged. Unauthenticated requests get a 401 Status before any handler runs.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from funcmesh.errors import Unauthorized

PUBLIC_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/version"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token_middleware(token: str) -> Middleware:
    """An aiohttp middleware that lets a request through only with ``Bearer <token>``."""
    if not token:
        raise ValueError("the API token must not be empty")
    expected = token.encode("utf-8")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS and not bearer_matches(
            request.headers.get("Authorization", ""), expected
        ):
            raise Unauthorized(
                "Unauthorized: this request needs the bearer token from the funcmesh kubeconfig"
            )
        return await handler(request)

    return authenticate


def bearer_matches(header: str, expected: bytes) -> bool:
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), expected)
