"""One function call: lease an instance, relay the exchange, answer every failure.

This is the gateway's failure table (429, 502, 503, 504, each with a JSON body that says what
happened) and the only code that holds a ``Lease``: it releases each lease exactly once.

A call costs no task, future or timer when an instance is free and an idle connection to it is
pooled: ``Call`` is driven by protocol callbacks (the client's request, the instance's response),
and waiting in the function's queue for a busy instance is a callback too (the common wait under
load). Only the rare steps that must wait run as a task: starting an instance, opening a
connection, asking why an instance died. Deadlines are checked by the ``Relay``'s one tick
(``funcmesh.gateway.relay``) while calls are in flight, so a 504 comes at most that late.

It does not parse HTTP (``upstream`` and ``downstream`` do) and does not route (``server`` does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from funcmesh.errors import FuncmeshError, QueueFull
from funcmesh.gateway.backends import Backend, Lease, QueuedCall
from funcmesh.gateway.messages import Request
from funcmesh.gateway.routing import FunctionRoute
from funcmesh.gateway.upstream import (
    ResponseSink,
    UpstreamBroken,
    UpstreamConnection,
    UpstreamTimeout,
)

if TYPE_CHECKING:
    from funcmesh.gateway.relay import Relay

logger = logging.getLogger(__name__)

EXIT_REASON_WAIT_S = 0.5
CLIENT_CLOSED_STATUS = 499  # nginx's name for it: the client left before the answer
SHUTDOWN_STATUS = 503  # a call cut because the gateway is closing
_INTERNAL_ERROR = "internal error in the gateway; see the daemon log"
_CRASHED = "call of %s failed"


class Responder(ResponseSink, Protocol):
    """The client side of a call, as the relay sees it."""

    @property
    def client_gone(self) -> bool: ...

    @property
    def response_started(self) -> bool: ...

    def send_error(
        self, status: int, message: str, *, function: str | None = None, cause: str = ""
    ) -> None:
        """Answer with a JSON error (only before the response started). ``cause`` is Envoy's
        response flag for a failure of the upstream (``UF`` the connection failed, ``UC`` it
        broke, ``UT`` no answer in time, ``UH`` no instance, ``UO`` overflow), or empty."""
        ...

    def abort(self) -> None:
        """Cut the client connection: the only signal left once a response has started."""
        ...

    def end_call(self) -> None:
        """The call is over (answered, failed or cut): the next request may be answered."""
        ...


class Call:
    """One request on its way through one lease; ends exactly once (``_end``).

    The fast path runs in the callbacks that drive it: ``start`` (the request is complete),
    ``exchange_done`` / ``exchange_failed`` (the instance answered or failed). Each entry point
    turns an unexpected exception into a 500 (or a cut connection), never a stuck client.
    """

    __slots__ = (
        "_backend",
        "_connection",
        "_ended",
        "_extra_head",
        "_function",
        "_head",
        "_lease",
        "_max_exchanges",
        "_queued",
        "_relay",
        "_request",
        "_responder",
        "_route",
        "_started_s",
        "_task",
        "_timeout_s",
    )

    def __init__(
        self,
        relay: Relay,
        backend: Backend,
        route: FunctionRoute,
        request: Request,
        responder: Responder,
        *,
        timeout_s: float | None = None,
        max_exchanges: int = 0,
        extra_head: bytes = b"",
    ) -> None:
        self._relay = relay
        self._extra_head = extra_head  # header lines the mesh adds (its traceparent)
        self._timeout_s = timeout_s  # a route's timeout, when shorter than the function's
        self._max_exchanges = max_exchanges  # maxRequestsPerConnection; 0: unlimited
        self._backend = backend
        self._route = route
        self._request = request
        self._responder = responder
        self._function = backend.display_name
        self._lease: Lease | None = None
        self._connection: UpstreamConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._queued: QueuedCall | None = None
        self._head = b""
        self._started_s = 0.0
        self._ended = False

    def start(self) -> None:
        try:
            backend = self._backend
            lease = backend.try_acquire()
            if lease is not None:
                self._send(lease)
                return
            try:
                self._queued = backend.queue_call(self._leased, self._not_leased)
            except FuncmeshError as exc:
                self._not_leased(exc)
                return
            if self._queued is None:
                self._task = self._relay.spawn(self, self._acquire_then_send())
        except Exception:
            logger.exception(_CRASHED, self._function)
            self.crash()

    def check_deadline(self, now_s: float) -> None:
        connection = self._connection
        if connection is not None:
            connection.check_deadline(now_s)

    def cut(self) -> None:
        """The gateway is closing and this call outlasted the drain."""
        if self._task is not None:
            self._task.cancel()
        if self._queued is not None:
            self._queued.cancel()
            self._queued = None
        self._abort_connection()
        self._end(SHUTDOWN_STATUS, ok=False)

    @property
    def function(self) -> str:
        return self._function

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The step that is waiting (for an instance, a connection, an exit), if any."""
        return self._task

    def crash(self) -> None:
        """After an unexpected exception (logged): answer 500 (or cut a started response)."""
        if self._queued is not None:
            self._queued.cancel()
            self._queued = None
        self._abort_connection()
        if not self._ended:
            self._fail(500, _INTERNAL_ERROR)
            self._end(500, ok=False)

    # ExchangeListener

    def exchange_done(self, connection: UpstreamConnection, status: int) -> None:
        try:
            self._connection = None
            limit = self._max_exchanges
            if connection.reusable and not (limit and connection.exchanges >= limit):
                self._relay.pool.put_idle(connection, now_s=self._relay.loop.time())
            else:
                connection.close()
            self._end(status, ok=status < 500)
        except Exception:
            logger.exception(_CRASHED, self._function)
            self.crash()

    def exchange_failed(self, connection: UpstreamConnection, error: FuncmeshError) -> None:
        try:
            self._connection = None
            if isinstance(error, UpstreamBroken) and error.retryable:
                self._task = self._relay.spawn(self, self._connect_then_exchange())
            elif isinstance(error, UpstreamBroken):
                self._task = self._relay.spawn(self, self._report_broken(error))
            elif isinstance(error, UpstreamTimeout):
                self._time_out()
            else:
                self._end(CLIENT_CLOSED_STATUS, ok=True)
        except Exception:
            logger.exception(_CRASHED, self._function)
            self.crash()

    # the steps

    def _send(self, lease: Lease) -> None:
        self._lease = lease
        self._started_s = self._relay.loop.time()
        if self._responder.client_gone:  # it left while the call waited for an instance
            self._end(CLIENT_CLOSED_STATUS, ok=True)
            return
        self._head = self._relay.upstream_head(lease, self._route, self._request, self._extra_head)
        connection = self._relay.pool.take_idle(lease.instance_id)
        if connection is None or not self._exchange(connection):
            self._task = self._relay.spawn(self, self._connect_then_exchange())

    def _exchange(self, connection: UpstreamConnection) -> bool:
        assert self._lease is not None
        self._connection = connection
        request = self._request
        sent = connection.exchange(
            self._head,
            request.body,
            self._responder,
            self,
            head_only=request.head_only,
            deadline_s=self._relay.loop.time() + self._limit_s(self._lease),
        )
        if not sent:
            self._connection = None
            connection.abort()
        return sent

    async def _acquire_then_send(self) -> None:
        try:
            lease = await self._backend.acquire()
        except FuncmeshError as exc:
            self._not_leased(exc)
            return
        self._task = None
        self._send(lease)

    def _leased(self, lease: Lease) -> None:
        """The function's queue handed this call an instance."""
        self._queued = None
        try:
            self._send(lease)
        except Exception:
            logger.exception(_CRASHED, self._function)
            self.crash()

    def _not_leased(self, error: FuncmeshError) -> None:
        """No instance: 429 when the function's queue is full or the wait too long, else 503
        (also a callback of the function's queue: nothing escapes it)."""
        self._queued = None
        function = self._function
        try:
            if isinstance(error, QueueFull):
                message = str(error) or f"function {function} is busy: too many calls are waiting"
                self._fail(429, message, cause="UO")
                self._end(429, ok=False)
            else:
                self._fail(503, str(error) or f"function {function} is unavailable", cause="UH")
                self._end(503, ok=False)
        except Exception:
            logger.exception(_CRASHED, function)
            self.crash()

    async def _connect_then_exchange(self) -> None:
        lease = self._lease
        assert lease is not None
        try:
            connection = await self._relay.pool.connect(
                lease.instance_id, lease.address, timeout_s=self._limit_s(lease)
            )
        except UpstreamTimeout:
            self._time_out()
            return
        except UpstreamBroken as exc:
            await self._report_broken(exc, cause="UF")
            return
        self._task = None
        if not self._exchange(connection):
            reason = "the connection closed before the request was sent"
            await self._report_broken(
                UpstreamBroken(reason, response_started=False, retryable=False)
            )

    async def _report_broken(self, error: UpstreamBroken, *, cause: str = "UC") -> None:
        lease = self._lease
        assert lease is not None
        exit_reason = await lease.exit_reason(EXIT_REASON_WAIT_S)
        if exit_reason is not None:
            message = f"instance {lease.instance_id} exited during the call: {exit_reason}"
        else:
            host, port = lease.address
            message = (
                f"connection to instance {lease.instance_id} at {host}:{port} failed: "
                f"{error.reason}"
            )
        self._fail(502, message, cause=cause)
        self._end(502, ok=False)

    def _time_out(self) -> None:
        lease = self._lease
        assert lease is not None
        limit_s = self._limit_s(lease)
        # A busy instance cannot take another call until it answers: replaced, whichever
        # timeout (the function's or a route's) ran out.
        lease.kill(f"killed after the {limit_s:g}s timeout")
        self._fail(
            504,
            f"Request timeout exceeded: function {self._function} did not answer "
            f"within {limit_s:g}s",
            cause="UT",
        )
        self._end(504, ok=False)

    def _limit_s(self, lease: Lease) -> float:
        timeout_s = self._timeout_s
        if timeout_s is None or timeout_s >= lease.timeout_s:
            return lease.timeout_s
        return timeout_s

    def _fail(self, status: int, message: str, *, cause: str = "") -> None:
        if self._ended:
            return
        responder = self._responder
        if responder.response_started:
            responder.abort()
        else:
            responder.send_error(status, message, function=self._function, cause=cause)

    def _abort_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()  # an unfinished exchange leaves the connection unusable

    def _end(self, status: int, *, ok: bool) -> None:
        if self._ended:
            return
        self._ended = True
        self._task = None
        lease = self._lease
        if lease is not None:
            duration_s = self._relay.loop.time() - self._started_s
            lease.release(ok=ok, status=status, duration_s=duration_s)
        self._relay.ended(self)
        self._responder.end_call()


async def guarded_step(call: Call, step: Coroutine[Any, Any, None]) -> None:
    """Run one waiting step of a call; an unexpected exception costs only that call."""
    try:
        await step
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception(_CRASHED, call.function)
        call.crash()
