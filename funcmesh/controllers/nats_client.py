"""The daemon's one connection to a NATS server; nats-py is used here and nowhere else in it.

The connection is made in the background and never given up: when the server is down at start
or goes away later, nats-py tries again every ``reconnect_wait_s`` and, once back, replays the
subscriptions by itself. Every change of the connection's state is reported to the owner, with
the last error in words. Messages reach a subscription's handler one at a time, in order; a
subscription whose handler falls too far behind loses messages (NATS's "slow consumer"), and
the owner is told. This module knows nothing about triggers or functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from funcmesh.errors import Unavailable

logger = logging.getLogger(__name__)

MessageHandler = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionState:
    """Whether the connection is up; ``problem`` says why not. ``first_attempt`` while the
    very first connection attempt has not ended yet."""

    connected: bool
    problem: str = ""
    first_attempt: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferLimits:
    """How much a subscription may hold that its handler has not taken yet."""

    messages: int = 65_536
    bytes: int = 64 << 20


class NatsSubscription:
    """Interest in one subject, as a member of a queue group."""

    def __init__(
        self, subscription: Subscription, *, subject: str, forget: Callable[[], object]
    ) -> None:
        self._subscription = subscription
        self._forget = forget
        self.subject = subject

    async def unsubscribe(self) -> None:
        self._forget()
        with contextlib.suppress(nats.errors.Error):  # closed or gone: no interest left anyway
            await self._subscription.unsubscribe()


class NatsConnection:
    """One nats-py client, connecting and reconnecting forever until closed."""

    def __init__(
        self,
        url: str,
        *,
        on_state: Callable[[ConnectionState], None],
        reconnect_wait_s: int = 1,
        limits: BufferLimits | None = None,
    ) -> None:
        self._url = url
        self._on_state = on_state
        self._reconnect_wait_s = reconnect_wait_s
        self._limits = limits or BufferLimits()
        self._client = Client()
        self._connecting: asyncio.Task[None] | None = None
        self._closing = False
        self._ready = False  # connected once: subscriptions may be made (and are replayed)
        self._state = ConnectionState(connected=False, problem="connecting", first_attempt=True)
        self._outage_logged = False
        self._last_error = ""  # while connected: the error a disconnection is likely due to
        self._drop_callbacks: dict[Subscription, Callable[[], None]] = {}

    @property
    def address(self) -> str:
        """The server's address for messages, without credentials."""
        parts = urlsplit(self._url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}"

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def can_subscribe(self) -> bool:
        """True once connected for the first time; later outages keep subscriptions."""
        return self._ready

    def start(self) -> None:
        self._connecting = asyncio.create_task(self._connect(), name="nats-connect")

    async def close(self) -> None:
        self._closing = True
        if self._connecting is None:
            return
        self._connecting.cancel()
        await asyncio.gather(self._connecting, return_exceptions=True)
        with contextlib.suppress(nats.errors.Error, OSError):
            await self._client.close()

    async def subscribe(
        self,
        subject: str,
        *,
        queue: str,
        handler: MessageHandler,
        on_dropped: Callable[[], None],
    ) -> NatsSubscription:
        """Subscribe in ``queue``; Unavailable before the first connection."""
        if not self._ready:
            raise Unavailable(f"not connected to the NATS server at {self.address} yet")

        async def deliver(message: Msg) -> None:
            await handler(message.data)

        try:
            subscription = await self._client.subscribe(
                subject,
                queue=queue,
                cb=deliver,
                pending_msgs_limit=self._limits.messages,
                pending_bytes_limit=self._limits.bytes,
            )
        except nats.errors.Error as exc:
            raise Unavailable(f"subscribing to {subject!r} failed: {exc}") from exc
        self._drop_callbacks[subscription] = on_dropped
        return NatsSubscription(
            subscription,
            subject=subject,
            forget=lambda: self._drop_callbacks.pop(subscription, None),
        )

    async def _connect(self) -> None:
        try:
            await self._client.connect(
                servers=[self._url],
                name="funcmesh",
                allow_reconnect=True,
                max_reconnect_attempts=-1,  # never give up
                reconnect_time_wait=self._reconnect_wait_s,
                error_cb=self._on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_connected,
            )
        except Exception as exc:  # nats-py retries everything it knows; this is a bug
            logger.exception("connecting to the NATS server at %s failed for good", self.address)
            self._report(ConnectionState(connected=False, problem=_describe(exc)))
            return
        self._ready = True
        await self._on_connected()

    async def _on_connected(self) -> None:
        logger.info("connected to the NATS server at %s", self.address)
        self._outage_logged = False
        self._last_error = ""
        self._report(ConnectionState(connected=True))

    async def _on_disconnected(self) -> None:
        if self._state.connected and not self._closing:
            problem = self._last_error or "connection lost"
            logger.warning(
                "lost the connection to the NATS server at %s: %s", self.address, problem
            )
            self._report(ConnectionState(connected=False, problem=problem))

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, nats.errors.SlowConsumerError):
            if callback := self._drop_callbacks.get(error.sub):
                callback()
            return
        if self._state.connected:  # reported with the disconnection, if it is one
            self._last_error = _describe(error)
            logger.debug("NATS client error: %s", self._last_error)
            return
        if not self._outage_logged:  # once per outage, not once per attempt
            self._outage_logged = True
            logger.warning("cannot reach the NATS server at %s: %s", self.address, _describe(error))
        self._report(ConnectionState(connected=False, problem=_describe(error)))

    def _report(self, state: ConnectionState) -> None:
        if state != self._state:
            self._state = state
            self._on_state(state)


def _describe(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.replace("\n", " ")[:300]
