"""Mesh mTLS at the Services' VIPs: which connections must, may or must not be TLS, and the
step that looks at a new connection's first bytes before the gateway reads it.

The VIP ports the daemon serves for HTTP (a function's Service, a Service with mesh rules or
one that STRICT mTLS pulls out of kernel NAT) accept, per their PeerAuthentication mode:

- ``PERMISSIVE`` (the default): both. The first bytes are peeked (``MSG_PEEK``: nothing is
  consumed) once the connection is readable; a TLS record (a ClientHello starts with 0x16)
  goes through the mesh's server context (``MeshIdentity.server_context``: a client
  certificate of the mesh CA is required), anything else is plain HTTP as before;
- ``STRICT``: only mTLS. A plaintext connection is reset at once, as Istio's sidecar does;
- ``DISABLE``: only plaintext, and no peek at all (a TLS client then gets 400 from the HTTP
  parser, as a workload without a sidecar would answer it).

The mode is Istio's (``Authorizer.mtls_mode``) for the workload behind the Service. funcmesh
has no sidecar per pod, so the workload's labels are approximated by the Service's selector
(a function's Service: the Function's labels plus ``function: NAME``), and its port by the
Service port's ``targetPort``. The mode is read per connection, so a new PeerAuthentication
acts on the next connection. Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Mapping
from typing import Protocol

from funcmesh.discovery.services import ServiceTable, ServiceView
from funcmesh.gateway.backends import Backends
from funcmesh.gateway.splicing import reset

logger = logging.getLogger(__name__)

STRICT = "STRICT"
PERMISSIVE = "PERMISSIVE"
DISABLE = "DISABLE"
SNIFF_TIMEOUT_S = 15.0  # Envoy's listener_filters_timeout; then PERMISSIVE takes plaintext
HANDSHAKE_TIMEOUT_S = 10.0
_TLS_HANDSHAKE_RECORD = 0x16


class MtlsModes(Protocol):
    """The PeerAuthentication modes (``funcmesh.mesh.authz.Authorizer``)."""

    def mtls_mode(self, *, namespace: str, labels: Mapping[str, str], port: int) -> str: ...


class VipSecurity:
    """What the VIP listeners need for mesh mTLS: the server context and each port's mode."""

    def __init__(
        self,
        context: ssl.SSLContext,
        modes: MtlsModes,
        *,
        services: ServiceTable,
        functions: Backends | None = None,
    ) -> None:
        self._context = context
        self._modes = modes
        self._services = services
        self._functions = functions

    def mode(self, namespace: str, name: str, service_port: int) -> str:
        """The mTLS mode of the Service's ``service_port`` now (PERMISSIVE when the Service
        is gone: its listener is about to close)."""
        view = self._services.service(namespace, name)
        if view is None:
            return PERMISSIVE
        port = next((p for p in view.ports if p.port == service_port), None)
        target = service_port
        if port is not None:
            target = self._target_port(view, port.name, port.target_port, service_port)
        return self._modes.mtls_mode(
            namespace=namespace, labels=self.workload_labels(view), port=target
        )

    def requires_mtls(self, view: ServiceView, ports: Callable[[str], bool]) -> bool:
        """Whether one of the Service's TCP ports whose name passes ``ports`` (the HTTP
        ones) is STRICT: the daemon must then serve it (kernel NAT cannot check a peer)."""
        return any(
            port.protocol == "TCP"
            and ports(port.name)
            and self.mode(view.namespace, view.name, port.port) == STRICT
            for port in view.ports
        )

    def workload_labels(self, view: ServiceView) -> Mapping[str, str]:
        """The labels of the workload behind the Service, approximated by its selector; a
        function's Service: the Function's labels and ``function: NAME``."""
        labels = dict(view.selector or ())
        if view.function is not None:
            labels["function"] = view.function
            functions = self._functions
            backend = functions.lookup(view.namespace, view.function) if functions else None
            if backend is not None:
                labels.update(backend.labels)
        return labels

    def _target_port(
        self, view: ServiceView, port_name: str, target: int | str, service_port: int
    ) -> int:
        if isinstance(target, int):
            return target
        endpoints = self._services.endpoints(view.namespace, view.name)
        for subset in endpoints.subsets if endpoints is not None else ():
            for endpoint_port in subset.ports:
                if endpoint_port.name == port_name:
                    return endpoint_port.port
        return service_port

    async def adopt(
        self, client: socket.socket, factory: Callable[[], asyncio.Protocol], *, mode: str
    ) -> None:
        """Hand an accepted connection to ``factory``'s protocol as ``mode`` allows: through
        TLS, in plaintext, or not at all (reset)."""
        loop = asyncio.get_running_loop()
        if mode == DISABLE:
            await loop.connect_accepted_socket(factory, client)
            return
        first = await _peek(loop, client)
        if first == b"":
            client.close()  # gone before a byte
        elif first and first[0] == _TLS_HANDSHAKE_RECORD:
            await self._handshake(loop, client, factory)
        elif mode == STRICT:
            reset(client)
        else:
            await loop.connect_accepted_socket(factory, client)

    async def _handshake(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        factory: Callable[[], asyncio.Protocol],
    ) -> None:
        try:
            await loop.connect_accepted_socket(
                factory, client, ssl=self._context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            # a client of another CA, without a certificate, or too slow: its own business
            logger.debug("mTLS handshake on a VIP failed: %s", exc)
            reset(client)


async def _peek(loop: asyncio.AbstractEventLoop, client: socket.socket) -> bytes | None:
    """The first byte the client sent, without taking it; b"" when it closed (or broke)
    first, None when it sent nothing within SNIFF_TIMEOUT_S."""
    deadline_s = loop.time() + SNIFF_TIMEOUT_S
    while True:
        try:
            return client.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        if not await _readable(loop, client, deadline_s - loop.time()):
            return None


async def _readable(loop: asyncio.AbstractEventLoop, client: socket.socket, wait_s: float) -> bool:
    readable = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    fd = client.fileno()
    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(readable, max(wait_s, 0.0))
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)
    return True
