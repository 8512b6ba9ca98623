"""The DNS server of ``funcmesh up``: UDP and TCP listeners answering for the cluster zone.

Every datagram first tries the fast path (:mod:`funcmesh.nameserver.wire`: a pre-encoded reply
for a question asked before); the rest goes to the slow path (:mod:`.responder`), which may
fill the cache, and whose upstream questions run as tasks that this server keeps and cancels
on close. The cache is emptied whenever the ServiceTable changes, so an answer is never older
than the table.

Fairness: while the server is saturated (the kernel holds a backlog for its UDP socket, see
:mod:`.backlog`; checked every 100 ms window, remembered for a second), a client (source address
and port) that sends more than ``client_burst`` queries in one window has the rest of that
window's queries dropped before any parsing. Dropping is much cheaper than answering, so the
server drains its socket faster than a flood fills it, and the other clients' queries, queued
behind the flood, get answered instead of being dropped by the kernel with the flood's. A
server that keeps up throttles nobody, however busy one client is (a benchmark with 100
queries in flight). Cache misses count ``SLOW_PATH_WEIGHT`` times, as they cost that much more.

TCP (RFC 7766): length-prefixed messages, pipelined, answered in any order; idle connections
close after ``TCP_IDLE_S``; at most ``MAX_TCP_CONNECTIONS`` at once.

Must not: crash or stop serving on any input; block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from funcmesh.discovery.services import Key, ServiceTable
from funcmesh.nameserver.backlog import socket_inode, udp_backlog
from funcmesh.nameserver.responder import Responder
from funcmesh.nameserver.upstream import Forwarder, system_upstreams
from funcmesh.nameserver.wire import AnswerCache, error_reply
from funcmesh.nameserver.zone import DEFAULT_DOMAIN, DEFAULT_TTL_S, Zone

logger = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
SERVFAIL = 2
WINDOW_S = 0.1
SATURATED_HOLD_S = 1.0  # fairness stays on this long after a backlog was seen
BACKLOG_BYTES = 256 << 10  # about 200 queued queries: more than clients keep in flight
DEFAULT_CLIENT_BURST = 2000  # queries per window per client while saturated (20k/s)
SLOW_PATH_WEIGHT = 10
MAX_PENDING_UPSTREAM = 1000
MAX_TCP_CONNECTIONS = 1000
TCP_IDLE_S = 10.0
UDP_RECEIVE_BUFFER_BYTES = 4 << 20
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
PORT_ATTEMPTS = 5
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux


async def start_nameserver(
    table: ServiceTable,
    *,
    address: tuple[str, int],
    upstream: Sequence[tuple[str, int]] | None,
    kube_dns: tuple[str, int] | None = None,
    resolv_conf: Path = RESOLV_CONF,
) -> NameServer:
    """The daemon's DNS server, listening on ``address``; also on ``kube_dns`` (the kube-dns
    Service's IP and port 53) when that can be bound, with a warning when it cannot.

    ``upstream`` None means the nameservers of ``resolv_conf`` other than this server; an empty
    sequence means names outside the zone are refused. Raises OSError when ``address`` cannot
    be bound."""
    own = {address, *([kube_dns] if kube_dns else [])}
    if upstream is None:
        upstream = system_upstreams(await asyncio.to_thread(_read_text, resolv_conf), own=own)
    server = NameServer(table, forwarder=Forwarder(upstream) if upstream else None)
    try:
        await server.listen(*address)
    except OSError:
        await server.close()
        raise
    if kube_dns is not None:
        try:
            await server.listen(*kube_dns)
        except OSError as exc:
            logger.warning(
                "the kube-dns Service address %s:%d is not served: %s",
                *kube_dns,
                exc.strerror or exc,
            )
    logger.info(
        "DNS on %s, names outside %s %s",
        ", ".join(f"{host}:{port}" for host, port in server.addresses),
        server.zone.origin.to_text(omit_final_dot=True),
        "forwarded to " + ", ".join(f"{h}:{p}" for h, p in upstream) if upstream else "refused",
    )
    return server


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class NameServer:
    """The cluster DNS server; ``listen`` on one or more addresses, then ``close``."""

    def __init__(
        self,
        table: ServiceTable,
        *,
        forwarder: Forwarder | None,
        domain: str = DEFAULT_DOMAIN,
        ttl_s: int = DEFAULT_TTL_S,
        client_burst: int = DEFAULT_CLIENT_BURST,
    ) -> None:
        self.cache = AnswerCache()
        self.zone = Zone(table, domain=domain, ttl_s=ttl_s)
        self.responder = Responder(self.zone, self.cache, forwarder)
        self.forwarder = forwarder
        self.client_burst = client_burst
        self.addresses: list[tuple[str, int]] = []
        self.dropped = 0
        self._unsubscribe = table.subscribe(self._table_changed)
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._connections: set[_TcpConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counts: dict[Any, int] = {}
        self._saturated_until = 0.0
        self._inodes: set[int] = set()
        self._drops = 0
        self._window: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        """Serve UDP and TCP on ``host:port`` (port 0: the same free port for both); the bound
        address. Raises OSError when either cannot be bound (nothing stays bound then)."""
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = _bind_pair(host, port)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), sock=udp_sock
        )
        self._udp.append(transport)
        self._inodes.add(socket_inode(udp_sock))
        self._tcp.append(await loop.create_server(lambda: _TcpConnection(self), sock=tcp_sock))
        bound = udp_sock.getsockname()[:2]
        self.addresses.append((bound[0], bound[1]))
        self.zone.set_nameserver_ips(
            [address for address, _ in self.addresses if address not in WILDCARD_HOSTS]
        )
        if self._window is None:
            self._window = loop.call_later(WINDOW_S, self._next_window)
        return bound[0], bound[1]

    async def close(self) -> None:
        """Stop listening, drop connections and cancel upstream questions in flight."""
        self._unsubscribe()
        if self._window is not None:
            self._window.cancel()
            self._window = None
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for connection in list(self._connections):
            connection.abort()
        for server in self._tcp:
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._udp.clear()
        self._tcp.clear()

    # -- shared by both transports ---------------------------------------------------------------

    def answer(self, packet: bytes, *, udp: bool, send: Callable[[bytes], None]) -> None:
        """Answer ``packet`` now (fast or slow path) or later (upstream) through ``send``."""
        reply = self.cache.reply(packet, udp=udp)
        if reply is not None:
            send(reply)
        else:
            self.answer_slowly(packet, udp=udp, send=send)

    def answer_slowly(self, packet: bytes, *, udp: bool, send: Callable[[bytes], None]) -> None:
        """The slow path of :meth:`answer` (the caller tried the cache)."""
        try:
            result = self.responder.respond(packet, udp=udp)
        except Exception:  # the request boundary: a bug answers SERVFAIL, never stops serving
            logger.exception("the DNS slow path failed on a %d-byte packet", len(packet))
            result = error_reply(packet, SERVFAIL)
        if result is None or isinstance(result, bytes):
            if result is not None:
                send(result)
            return
        if len(self._tasks) >= MAX_PENDING_UPSTREAM:
            result.close()  # too many upstream questions in flight: the client will retry
            self.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._send_later(result, packet, send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_later(self, pending: Any, packet: bytes, send: Callable[[bytes], None]) -> None:
        try:
            reply = await pending
        except asyncio.CancelledError:
            raise
        except Exception:  # the task boundary
            logger.exception("forwarding a DNS query failed")
            reply = error_reply(packet, SERVFAIL)
        if reply is not None:
            send(reply)

    def admit(self, client: Any, *, weight: int = 1) -> bool:
        """Count a query from ``client``; False when it must be dropped (see module doc)."""
        counts = self._counts
        seen = counts.get(client, 0) + weight
        counts[client] = seen
        if seen <= self.client_burst:
            return True
        if asyncio.get_running_loop().time() < self._saturated_until:
            self.dropped += 1
            return False
        return True

    def charge_slow_path(self, client: Any) -> None:
        self._counts[client] = self._counts.get(client, 0) + SLOW_PATH_WEIGHT - 1

    def accept_connection(self, connection: _TcpConnection) -> bool:
        if len(self._connections) >= MAX_TCP_CONNECTIONS:
            return False
        self._connections.add(connection)
        return True

    def forget_connection(self, connection: _TcpConnection) -> None:
        self._connections.discard(connection)

    def _next_window(self) -> None:
        loop = asyncio.get_running_loop()
        # A window without queries cannot have filled the sockets: no kernel table to read (a
        # read of /proc/net/udp{,6} costs ~0.3 ms, ten times a second, on an idle server).
        if self._counts and self._saturated():
            self._saturated_until = loop.time() + SATURATED_HOLD_S
        self._counts = {}
        self._window = loop.call_later(WINDOW_S, self._next_window)

    def _saturated(self) -> bool:
        backlog = udp_backlog(self._inodes)
        if backlog is None:  # no kernel table to read: any two clients at once count
            return len(self._counts) > 1
        queued, drops = backlog
        grew, self._drops = drops > self._drops, drops
        return queued > BACKLOG_BYTES or grew

    def _table_changed(self, _key: Key) -> None:
        self.zone.changed()
        self.cache.clear()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: NameServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is no subclass

    def datagram_received(self, data: bytes, addr: Any) -> None:
        server, transport = self._server, self._transport
        if transport is None or not server.admit(addr):
            return
        reply = server.cache.reply(data, udp=True)
        if reply is not None:  # the fast path, inlined: most queries end here
            transport.sendto(reply, addr)
            return
        server.charge_slow_path(addr)
        server.answer_slowly(
            data, udp=True, send=lambda reply: _send_datagram(transport, reply, addr)
        )

    def error_received(self, exc: Exception) -> None:
        logger.debug("DNS UDP socket error: %s", exc)  # e.g. ICMP port unreachable from a client


def _send_datagram(transport: asyncio.DatagramTransport, reply: bytes, addr: Any) -> None:
    if not transport.is_closing():
        transport.sendto(reply, addr)


class _TcpConnection(asyncio.Protocol):
    """One DNS-over-TCP client: 2-byte length prefixed messages, pipelined."""

    def __init__(self, server: NameServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._server.accept_connection(self):
            self._transport.abort()
            return
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.forget_connection(self)
        if self._idle is not None:
            self._idle.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._touch()
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2])
            if len(self._buffer) < 2 + size:
                return
            message = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            self._server.answer(message, udp=False, send=self._send)

    def _send(self, reply: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(len(reply).to_bytes(2) + reply)

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE_S, self._close_idle)

    def _close_idle(self) -> None:
        if self._transport is not None:
            self._transport.close()


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same port (with port 0: a free one, tried a few times)."""
    attempts = PORT_ATTEMPTS if port == 0 else 1
    for attempt in range(1, attempts + 1):
        udp_sock = _udp_socket(host, port)
        try:
            return udp_sock, _tcp_socket(host, udp_sock.getsockname()[1])
        except OSError:
            udp_sock.close()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        _grow_receive_buffer(sock)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _grow_receive_buffer(sock: socket.socket) -> None:
    """A bigger queue absorbs bursts: beyond net.core.rmem_max when we are root; best effort."""
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, UDP_RECEIVE_BUFFER_BYTES)
            return


def _tcp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
