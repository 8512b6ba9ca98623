"""Calls functions on behalf of triggers (cron, NATS, async calls), through the gateway.

Going through the gateway over loopback keeps one data path for every call: the same routing,
queueing, timeouts, failure answers and metrics as a call from outside. This module only
speaks HTTP to the gateway; it knows nothing about pools or instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from funcmesh.errors import Unavailable


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What a function answered."""

    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Invoker:
    """One keep-alive HTTP client to the gateway, shared by every trigger."""

    def __init__(self, gateway_url: str, *, timeout_s: float = 600.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=gateway_url, timeout=timeout_s, trust_env=False, follow_redirects=False
        )

    async def call(
        self,
        namespace: str,
        name: str,
        *,
        method: str = "POST",
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        path: str = "/",
    ) -> Answer:
        """Call ``name`` in ``namespace``; Unavailable when the gateway cannot be reached."""
        url = f"/function/{name}.{namespace}{path if path.startswith('/') else '/' + path}"
        try:
            response = await self._client.request(
                method, url, content=body, headers=dict(headers or {})
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"calling function {namespace}/{name} failed: {exc}") from exc
        return Answer(
            status=response.status_code, body=response.content, headers=dict(response.headers)
        )

    async def close(self) -> None:
        await self._client.aclose()
