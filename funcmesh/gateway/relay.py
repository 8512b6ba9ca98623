"""The relay: starts each function call, ticks their deadlines, stamps their upstream requests.

One ``Relay`` per gateway holds the calls in flight (``funcmesh.gateway.proxy.Call``), the pool
of upstream connections, and one deadline tick every ``DEADLINE_TICK_S`` while any call is in
flight (not a timer per call). It writes each request's upstream head with Kubeless's event
id and time, drawn and formatted in batches because they are on the hot path; and it drains
calls, then cuts them, when the gateway closes.

Must not: answer a call or hold a lease (``proxy`` does), parse HTTP, or route.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import os
import time
from collections.abc import Coroutine
from typing import Any

from funcmesh.gateway.backends import Backend, Lease
from funcmesh.gateway.messages import Request, rewrite_request_head
from funcmesh.gateway.proxy import Call, Responder, guarded_step
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.gateway.upstream_pool import UpstreamPool

DEADLINE_TICK_S = 0.05  # how late past its timeout a hanging call may be answered 504
_EVENT_IDS_PER_DRAW = 256


class Relay:
    """Calls functions through their backends, over pooled upstream connections."""

    def __init__(self, pool: UpstreamPool, *, deadline_tick_s: float = DEADLINE_TICK_S) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self._deadline_tick_s = deadline_tick_s
        self._calls: set[Call] = set()
        self._ticker: asyncio.TimerHandle | None = None
        self._all_ended: asyncio.Future[None] | None = None
        self._clock_second = -1
        self._clock_text = b""
        self._event_ids: list[bytes] = []

    def call(
        self,
        backend: Backend,
        route: FunctionRoute,
        request: Request,
        responder: Responder,
        *,
        timeout_s: float | None = None,
        max_exchanges: int = 0,
        extra_head: bytes = b"",
    ) -> None:
        """Answer ``request`` with the function's response, or with an error that says why not;
        ``responder.end_call()`` follows, at once or later. ``timeout_s`` (a mesh route's)
        shortens the backend's own timeout; ``max_exchanges`` (a DestinationRule's
        maxRequestsPerConnection) closes a connection that served that many requests;
        ``extra_head`` (header lines) is added to the request sent upstream."""
        call = Call(
            self,
            backend,
            route,
            request,
            responder,
            timeout_s=timeout_s,
            max_exchanges=max_exchanges,
            extra_head=extra_head,
        )
        self.start(call)

    def start(self, call: Call) -> None:
        """Start a call made for this relay (``call`` makes one; a ``DirectCall`` is one):
        it is in flight, its deadline ticked, until it ends."""
        self._calls.add(call)
        if self._ticker is None:
            self._ticker = self.loop.call_later(self._deadline_tick_s, self._tick)
        call.start()

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the calls in flight to end; how many did not."""
        if self._calls:
            self._all_ended = self.loop.create_future()
            try:  # not ``async with``: compiled by mypyc, it lets exceptions past this clause
                await asyncio.wait_for(self._all_ended, timeout_s)
            except TimeoutError:
                pass
            finally:
                self._all_ended = None
        return len(self._calls)

    async def close(self) -> None:
        """Cut every call still in flight (503), and wait for their waiting steps to stop."""
        tasks = [task for call in self._calls if (task := call.task) is not None]
        for call in list(self._calls):
            call.cut()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        await asyncio.gather(*tasks, return_exceptions=True)

    # for Call

    def spawn(self, call: Call, step: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a step that waits; the call keeps the task (a call has at most one at a time,
        and it ends with the call), so ``close`` finds every one through the calls."""
        return self.loop.create_task(guarded_step(call, step))

    def ended(self, call: Call) -> None:
        calls = self._calls
        calls.discard(call)
        if not calls and self._all_ended is not None and not self._all_ended.done():
            self._all_ended.set_result(None)

    def upstream_head(
        self, lease: Lease, route: FunctionRoute, request: Request, extra: bytes = b""
    ) -> bytes:
        return rewrite_request_head(
            request.method,
            route.target,
            request.headers,
            body_length=len(request.body),
            client_ip=request.client_ip,
            default_host=_host_header(lease.address),
            event_id=self._event_id(),
            event_time=self._event_time(),
            scheme=request.scheme,
            extra=extra,
        )

    # deadlines: one tick while calls are in flight, not a timer per call

    def _tick(self) -> None:
        if not self._calls:
            self._ticker = None
            return
        self._ticker = self.loop.call_later(self._deadline_tick_s, self._tick)
        now_s = self.loop.time()
        for call in list(self._calls):
            call.check_deadline(now_s)

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


@functools.lru_cache(maxsize=1024)
def _host_header(address: tuple[str, int]) -> bytes:
    """An instance's address as the Host of a request that has none: made once per address,
    not per call (nearly every request has a Host)."""
    host, port = address
    return f"{host}:{port}".encode()
