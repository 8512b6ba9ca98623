"""TCP forwarding for Service VIPs: connect an accepted client to an endpoint, then splice bytes.

``forward`` runs once per accepted connection, as a short task: it connects to the first endpoint
the balancer offers that accepts (a refused or unreachable endpoint, or one that closes before a
byte went either way, costs a try, not the client's connection), then wraps the client socket in
a transport and links the two sides. From then on the connection costs no task and no timer:
each side is an ``asyncio.Protocol`` whose ``data_received`` writes straight into the other
side's transport (uvloop sends at once when it can, TCP_NODELAY is on, reads are up to 256 KiB).
Back-pressure: a side whose write buffer fills pauses the reading of the other side until it
drains. Half-close: an EOF from one side becomes a ``write_eof`` on the other, and the pair
closes when both sides ended. An error on one side (reset, timeout) aborts the other. Knows
nothing about Services or HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from typing import cast

from funcmesh.gateway.balancing import Balancer, Endpoint

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0  # an endpoint that neither accepts nor refuses in time is skipped
WRITE_BUFFER_HIGH_BYTES = 256 << 10  # per side: what is queued before the other side pauses
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


class Splices:
    """Every forwarded connection still open, so that shutdown can cut them."""

    def __init__(self) -> None:
        self._open: set[Half] = set()

    def __len__(self) -> int:
        return len(self._open) // 2

    def opened(self, half: Half) -> None:
        self._open.add(half)

    def closed(self, half: Half) -> None:
        self._open.discard(half)

    def abort_all(self) -> None:
        for half in list(self._open):
            half.abort()


class Half(asyncio.Protocol):
    """One side of a forwarded connection: what it reads, the other side writes."""

    __slots__ = ("_early", "_eof", "_failed", "_lost", "_peer", "_splices", "_write", "transport")

    def __init__(self, splices: Splices) -> None:
        self._splices = splices
        self._peer: Half | None = None
        self._eof = False  # this side sent its EOF
        self._lost = self._failed = False  # connection lost; lost with an error
        self._early: list[bytes] = []  # read before the link (uvloop may deliver one read)
        self._write: Callable[[bytes], object] = self._early.append  # the peer's, once linked
        self.transport = cast(asyncio.Transport, None)

    def link(self, peer: Half) -> None:
        """Forward what this side reads to ``peer``; ``peer.link(self)`` must follow at once,
        and then ``start``."""
        self._peer = peer
        self._write = peer.transport.write

    def start(self) -> None:
        """Pass on what was read before the link, then read on (both sides are linked)."""
        peer = self._peer
        assert peer is not None
        if self._early:
            early = b"".join(self._early)
            self._early.clear()
            if not peer.transport.is_closing():  # else it is gone, and this side follows it
                peer.transport.write(early)
        if self._lost and self._failed:
            peer.transport.abort()
        elif self._lost:
            peer.transport.close()
        elif self._eof:
            self.eof_received()
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def gone_silently(self) -> bool:
        """The connection ended before this side read anything: trying elsewhere is safe."""
        return self._lost and not self._early and self._peer is None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.pause_reading()  # until linked: nothing to write into yet
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        self._splices.opened(self)

    def data_received(self, data: bytes) -> None:
        try:  # noqa: SIM105 - a try is free on this hot path, contextlib.suppress is not
            self._write(data)
        except RuntimeError:  # uvloop: the other side is closed already; it closes this one
            pass

    def eof_received(self) -> bool:
        self._eof = True
        peer = self._peer
        if peer is None:
            return True  # passed on at the link
        if peer._eof:
            self.transport.close()
            peer.transport.close()
            return True
        if peer.transport.can_write_eof() and not peer.transport.is_closing():
            peer.transport.write_eof()
        return True  # keep this side open: its peer may still answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost, self._failed = True, exc is not None
        self._splices.closed(self)
        peer = self._peer
        if peer is None:
            return
        if exc is None:
            peer.transport.close()  # after what is still buffered for it
        else:
            peer.transport.abort()

    def pause_writing(self) -> None:
        peer = self._peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self._peer
        if peer is not None and not peer.transport.is_closing():
            peer.transport.resume_reading()


async def forward(
    client: socket.socket,
    client_ip: str,
    *,
    balancer: Balancer,
    splices: Splices,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> Endpoint | None:
    """Forward the accepted ``client`` to an endpoint; the endpoint, or None when every
    candidate failed (the client is then reset)."""
    loop = asyncio.get_running_loop()
    candidates = iter(balancer.candidates(client_ip))
    upstream = await _connect_first(loop, candidates, splices, connect_timeout_s)
    if upstream is None:
        reset(client)
        return None
    try:
        _, front = await loop.connect_accepted_socket(lambda: Half(splices), client)
    except BaseException:
        upstream[1].abort()
        reset(client)
        raise
    while upstream is not None and upstream[1].gone_silently:
        # The endpoint closed before a byte went either way (a pod killed just as it accepted):
        # the client has lost nothing yet, so the next endpoint may take it.
        upstream = await _connect_first(loop, candidates, splices, connect_timeout_s)
    if upstream is None:
        front.abort()
        return None
    endpoint, backend = upstream
    balancer.connected(client_ip, endpoint)
    front.link(backend)
    backend.link(front)
    front.start()
    backend.start()
    return endpoint


async def _connect_first(
    loop: asyncio.AbstractEventLoop,
    candidates: Iterator[Endpoint],
    splices: Splices,
    timeout_s: float,
) -> tuple[Endpoint, Half] | None:
    """A connection to the first of the remaining ``candidates`` that takes one."""
    factory: Callable[[], Half] = lambda: Half(splices)  # noqa: E731
    for endpoint in candidates:
        try:
            async with asyncio.timeout(timeout_s):
                _, backend = await loop.create_connection(factory, *endpoint)
        except (OSError, TimeoutError) as exc:
            logger.debug("endpoint %s:%d did not take a connection: %s", *endpoint, exc)
            continue
        return endpoint, backend
    return None


def reset(sock: socket.socket) -> None:
    """Close with a RST, so the client sees its connection refused rather than a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    sock.close()
