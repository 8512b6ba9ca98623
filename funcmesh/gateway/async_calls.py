"""Async calls on the gateway (OpenFaaS's ``/async-function/NAME[.NS]``): accept, store, 202.

``Acceptor.accept`` hands the request to an ``AsyncCalls`` seam (implemented by the async-call
runner, wired in ``app``), then answers 202 with ``{"id": ..., "function": "ns/name"}`` and the
header ``X-Call-Id``; a store failure answers 503. It neither runs calls nor knows the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

from funcmesh.errors import FuncmeshError
from funcmesh.gateway.messages import Request, is_hop_by_hop
from funcmesh.gateway.routing import FunctionRoute, route_function

logger = logging.getLogger(__name__)

ASYNC_PREFIX = b"/async-function/"
CALLBACK_HEADER = b"x-callback-url"
_NOT_STORED = {b"host", b"content-length", b"expect", CALLBACK_HEADER}


class AsyncCalls(Protocol):
    """Where accepted async calls go: stored durably before ``submit`` returns their id."""

    async def submit(
        self,
        *,
        namespace: str,
        name: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        callback_url: str | None,
    ) -> str: ...


class AcceptedResponder(Protocol):
    """The client side of an async call, as the acceptor sees it."""

    def send_json(
        self, status: int, document: object, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None: ...

    def send_error(self, status: int, message: str, *, function: str | None = None) -> None: ...

    def end_call(self) -> None: ...


def route_async(target: bytes) -> FunctionRoute | None:
    """The function an ``/async-function/...`` target calls; None for any other target."""
    if not target.startswith(ASYNC_PREFIX):
        return None
    return route_function(b"/function/" + target[len(ASYNC_PREFIX) :])


class Acceptor:
    """Stores async calls through the seam; keeps each storing task until it ends."""

    def __init__(self, calls: AsyncCalls) -> None:
        self._calls = calls
        self._tasks: set[asyncio.Task[None]] = set()

    def accept(self, route: FunctionRoute, request: Request, responder: AcceptedResponder) -> None:
        """Answer 202 once the call is stored (503 if it cannot be); ``end_call`` follows."""
        task = asyncio.get_running_loop().create_task(self._accept(route, request, responder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait for the calls being stored (each is one short SQLite write)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(
        self, route: FunctionRoute, request: Request, responder: AcceptedResponder
    ) -> None:
        function = route.display_name
        try:
            call_id = await self._calls.submit(
                namespace=route.namespace,
                name=route.name,
                method=request.method.decode("latin-1"),
                path=route.target.decode("latin-1"),
                headers=_stored_headers(request),
                body=request.body,
                callback_url=_callback_url(request),
            )
        except FuncmeshError as exc:
            responder.send_error(503, f"async call not accepted: {exc}", function=function)
        except Exception:
            logger.exception("storing an async call of %s failed", function)
            responder.send_error(
                503, "async call not accepted; see the daemon log", function=function
            )
        else:
            document = {"id": call_id, "function": function}
            responder.send_json(202, document, headers=[(b"X-Call-Id", call_id.encode())])
        finally:
            responder.end_call()


def _stored_headers(request: Request) -> list[tuple[str, str]]:
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in request.headers
        if (lower := name.lower()) not in _NOT_STORED and not is_hop_by_hop(lower)
    ]


def _callback_url(request: Request) -> str | None:
    for name, value in request.headers:
        if name.lower() == CALLBACK_HEADER:
            return value.decode("latin-1").strip() or None
    return None
