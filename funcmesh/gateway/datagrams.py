"""UDP forwarding for Service VIPs: datagrams to a VIP port go to a ready endpoint, replies back.

``DatagramPort`` owns the VIP's UDP socket. Each client address gets a session: a socket of its
own connected to the endpoint the balancer chose, so the endpoint's replies are told apart by
socket and sent back to that client from the VIP's address (as conntrack does for kube-proxy).
A session idle for ``idle_timeout_s`` ends (kube-proxy's conntrack default for UDP is 30 s),
and so does one whose endpoint left or refused (ICMP port unreachable): the client's next
datagram chooses again. Plain sockets read from loop callbacks: no transport, no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from funcmesh.gateway.balancing import Balancer, Endpoint

logger = logging.getLogger(__name__)

UDP_IDLE_TIMEOUT_S = 30.0
MAX_DATAGRAM_BYTES = 65535
_READS_PER_WAKE = 64  # datagrams handled per readiness callback, so one flood cannot starve others
ClientAddress = tuple[str, int]


class _Session:
    """One client's flow to one endpoint."""

    __slots__ = ("client", "endpoint", "last_s", "sock")

    def __init__(self, client: ClientAddress, endpoint: Endpoint, sock: socket.socket) -> None:
        self.client = client
        self.endpoint = endpoint
        self.sock = sock
        self.last_s = 0.0


class DatagramPort:
    """Forwards the datagrams sent to one VIP UDP port."""

    def __init__(
        self,
        address: tuple[str, int],
        balancer: Balancer,
        *,
        idle_timeout_s: float = UDP_IDLE_TIMEOUT_S,
    ) -> None:
        self._address = address
        self._balancer = balancer
        self._idle_timeout_s = idle_timeout_s
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._sessions: dict[ClientAddress, _Session] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def sessions(self) -> int:
        return len(self._sessions)

    def open(self) -> None:
        """Bind the VIP port; raises OSError when it cannot."""
        family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(self._address)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._read_clients)
        self._sweeper = self._loop.call_later(self._idle_timeout_s / 2, self._sweep)

    def update(self, endpoints: list[Endpoint]) -> None:
        """New ready endpoints: sessions on an endpoint that left end."""
        self._balancer.update(endpoints)
        ready = set(endpoints)
        for session in list(self._sessions.values()):
            if session.endpoint not in ready:
                self._end(session)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for session in list(self._sessions.values()):
            self._end(session)
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    # datagrams

    def _read_clients(self) -> None:
        sock = self._sock
        if sock is None:
            return
        now_s = self._loop.time()
        for _ in range(_READS_PER_WAKE):
            try:
                data, client = sock.recvfrom(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier reply to a client: ignore
                logger.debug("VIP %s:%d UDP read: %s", *self._address, exc)
                continue
            client = (str(client[0]), int(client[1]))
            session = self._sessions.get(client) or self._start(client)
            if session is None:
                continue  # no endpoint takes it: dropped, as UDP is
            session.last_s = now_s
            try:
                session.sock.send(data)
            except OSError:  # the endpoint refused an earlier datagram: choose again next time
                self._end(session)

    def _start(self, client: ClientAddress) -> _Session | None:
        for endpoint in self._balancer.candidates(client[0]):
            family = socket.AF_INET6 if ":" in endpoint[0] else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(endpoint)
            except OSError:
                sock.close()
                continue
            session = _Session(client, endpoint, sock)
            self._sessions[client] = session
            self._loop.add_reader(sock.fileno(), self._read_endpoint, session)
            self._balancer.connected(client[0], endpoint)
            return session
        return None

    def _read_endpoint(self, session: _Session) -> None:
        vip = self._sock
        for _ in range(_READS_PER_WAKE):
            try:
                data = session.sock.recv(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # ICMP port unreachable: nothing listens there any more
                self._end(session)
                return
            session.last_s = self._loop.time()
            if vip is not None:
                with contextlib.suppress(OSError):
                    vip.sendto(data, session.client)

    def _end(self, session: _Session) -> None:
        if self._sessions.get(session.client) is session:
            del self._sessions[session.client]
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_reader(session.sock.fileno())
        session.sock.close()

    def _sweep(self) -> None:
        self._sweeper = self._loop.call_later(self._idle_timeout_s / 2, self._sweep)
        idle_since_s = self._loop.time() - self._idle_timeout_s
        for session in list(self._sessions.values()):
            if session.last_s < idle_since_s:
                self._end(session)
