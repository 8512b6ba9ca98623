"""One VIP port as ``vips.VipListeners`` keeps it: what it should be, and its socket.

A ``WantedPort`` says what a (cluster IP, port, protocol) should do: forward to endpoints
(with ClientIP affinity or not), or be the entrance of a function. A ``VipPort`` is one bound
port: a non-blocking TCP listening socket that hands each accepted connection to a callback
(pausing a moment when the process is out of file descriptors), or a ``DatagramPort`` for UDP.

Must not: follow the ServiceTable or decide which ports listen (``vips`` does), or forward
connections itself (``splicing``).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from funcmesh.gateway.balancing import Balancer, Endpoint
from funcmesh.gateway.datagrams import DatagramPort

logger = logging.getLogger(__name__)

BACKLOG = 1024
_ACCEPTS_PER_WAKE = 64
_ACCEPT_PAUSE_S = 0.1  # out of file descriptors: stop accepting this long, then try again
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}

VipAddress = tuple[str, int, str]  # (cluster IP, port, protocol)


@dataclass(frozen=True, slots=True, kw_only=True)
class WantedPort:
    """What one VIP port should be: forwarding to endpoints, or the entrance of a function."""

    endpoints: tuple[Endpoint, ...] = ()
    # (namespace, name) of a Service whose HTTP requests go through the gateway: a function's,
    # or one with mesh rules; ``service_port`` is the port they arrive on
    function: tuple[str, str] | None = None
    service_port: int = 0
    affinity_timeout_s: float | None = None  # ClientIP affinity, else None

    def same_kind(self, other: WantedPort) -> bool:
        return (self.function, self.service_port, self.affinity_timeout_s) == (
            other.function,
            other.service_port,
            other.affinity_timeout_s,
        )


class VipPort:
    """One bound VIP port: a TCP listening socket with its accept callback, or a UDP port."""

    def __init__(
        self,
        address: VipAddress,
        wanted: WantedPort,
        *,
        balancer: Balancer | None = None,
        on_accept: Callable[[socket.socket, str], None] | None = None,
        datagrams: DatagramPort | None = None,
    ) -> None:
        self.address = address
        self.wanted = wanted
        self._balancer = balancer
        self._on_accept = on_accept
        self._datagrams = datagrams
        self._loop = asyncio.get_running_loop()
        self._sock: socket.socket | None = None
        self._resume: asyncio.TimerHandle | None = None

    def open(self, backlog: int = BACKLOG) -> None:
        if self._datagrams is not None:
            self._datagrams.open()
            return
        ip, port, _ = self.address
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((ip, port))
            sock.listen(backlog)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._accept)

    def update(self, wanted: WantedPort) -> None:
        if wanted.endpoints != self.wanted.endpoints:
            if self._datagrams is not None:
                self._datagrams.update(list(wanted.endpoints))
            elif self._balancer is not None:
                self._balancer.update(wanted.endpoints)
        self.wanted = wanted

    def close(self) -> None:
        if self._datagrams is not None:
            self._datagrams.close()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()  # new connections are refused from now on; accepted ones go on
        logger.debug("VIP %s:%d/%s closed", *self.address)

    def _accept(self) -> None:
        sock, on_accept = self._sock, self._on_accept
        if sock is None or on_accept is None:
            return
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                client, peer = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(exc)
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # uvloop does; asyncio not
            on_accept(client, str(peer[0]))

    def _pause_accepting(self, exc: OSError) -> None:
        logger.warning("VIP %s:%d/%s cannot accept: %s", *self.address, exc.strerror or exc)
        sock = self._sock
        if sock is None:
            return
        self._loop.remove_reader(sock.fileno())
        self._resume = self._loop.call_later(
            _ACCEPT_PAUSE_S, self._loop.add_reader, sock.fileno(), self._accept
        )
