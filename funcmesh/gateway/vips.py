"""Service virtual IPs: the kube-proxy of funcmesh.

``VipListeners`` follows a ``ServiceTable`` and keeps one listening socket per (cluster IP,
port) of each Service, changed in the table's own change callback so that the sockets always
match the table:

- a TCP port listens only while the Service has a ready endpoint for it, so a connection to a
  VIP without one is refused by the kernel at once; when the last endpoint goes, the socket
  closes and established connections carry on. Each accepted connection is forwarded to an
  endpoint (``splicing``) chosen by the port's ``Balancer`` (round robin; ClientIP affinity
  when the Service asks for it), the next endpoint being tried when one refuses;
- a UDP port forwards datagrams the same way (``datagrams``);
- the ports of a function's Service always listen (a function can start from zero), and every
  HTTP request on them is a call of the function through the gateway (``FunctionEntrances``);
- so do the HTTP ports (named ``http`` or ``http-*``, Istio's convention) of a Service with
  mesh rules (a VirtualService or DestinationRule for its host, ``MeshRules``), or whose
  PeerAuthentication mode is STRICT: the gateway routes their requests;
- and the HTTP ports (by name, or unnamed) of a Service whose selector matches deployed
  functions (``FunctionEntrances.selects_functions``): the gateway starts them from zero, where
  kernel NAT or a TCP listener would only reach warm instances. The deployed functions have no
  change feed: their ``functions_generation`` is compared at each change of the table and once
  a second, and every Service with a selector is decided again when it moved;
- given a ``VipSecurity`` (``vip_tls``), those gateway-served ports take mesh mTLS as their
  PeerAuthentication mode says (PERMISSIVE: TLS or plaintext, STRICT: TLS only, DISABLE:
  plaintext only).

Given a ``KernelForwarding`` (``vip_nat.NatTable``: root, nftables), the ports of plain Services
are forwarded by kernel NAT instead, as kube-proxy's iptables mode does: no socket is bound for
them, a rule is asked for while they have ready endpoints. ``served_by_kernel`` decides which
ports, in one place; every port is served by one path, never both.

Headless and ExternalName Services have no VIP; SCTP ports are not forwarded. A port that cannot
be bound (taken by another process, below 1024 without root) is logged and tried again at the
Service's next change. Does no HTTP itself and never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from funcmesh.discovery.services import Key, ServiceTable, ServiceView
from funcmesh.gateway.balancing import Balancer, ClientIpAffinity, Endpoint, RoundRobin
from funcmesh.gateway.datagrams import DatagramPort
from funcmesh.gateway.splicing import Splices, forward, reset
from funcmesh.gateway.vip_ports import BACKLOG, VipAddress, VipPort, WantedPort
from funcmesh.gateway.vip_tls import VipSecurity

logger = logging.getLogger(__name__)

CLIENT_IP_AFFINITY = "ClientIP"
FUNCTIONS_CHECK_S = 1.0  # how often the deployed functions' generation is compared

BalancerFactory = Callable[[], Balancer]


class FunctionEntrances(Protocol):
    """The gateway, as the VIP of a function's Service (or a mesh-routed one) needs it."""

    def function_entrance(
        self, namespace: str, name: str, port: int = 0
    ) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for connections whose every HTTP request goes to the Service
        ``namespace/name`` (arriving on its ``port``) through the gateway."""
        ...

    def selects_functions(self, namespace: str, selector: Mapping[str, str]) -> bool:
        """Whether the gateway serves a Service with this selector by deployed functions."""
        ...

    @property
    def functions_generation(self) -> int:
        """Changes whenever ``selects_functions`` may answer differently."""
        ...


class MeshRules(Protocol):
    """The mesh's rules (``funcmesh.mesh.table.MeshTable``), as the VIPs need them."""

    def has_rules(self, namespace: str, name: str) -> bool:
        """Whether a VirtualService or DestinationRule applies to the Service."""
        ...

    def subscribe(self, listener: Callable[[set[Key]], None]) -> Callable[[], None]:
        """Call ``listener`` with the Services whose rules may have changed (empty: any)."""
        ...


class KernelForwarding(Protocol):
    """Kernel NAT (``vip_nat.NatTable``), as the VIPs use it."""

    def can_serve(self, ip: str, protocol: str) -> bool:
        """Whether this VIP address and protocol can be given a rule at all."""
        ...

    def put(self, key: Key, rules: Mapping[VipAddress, tuple[Endpoint, ...]]) -> None:
        """Make the rules of the Service ``key`` these (none: no rule)."""
        ...

    async def drain(self, ip: str) -> None:
        """Send the pod address ``ip`` no new connection; return once the kernel does so."""
        ...


def served_by_kernel(view: ServiceView, protocol: str) -> bool:
    """Whether kernel NAT, where there is one, serves this Service's ``protocol`` ports rather
    than a VIP listener: plain Services only. A function's Service calls the function (HTTP in
    the gateway), and ClientIP affinity remembers clients, which a stateless random DNAT rule
    cannot. The HTTP ports of Services with mesh rules or in front of functions are the
    gateway's (``_wanted_ports``), which this is not asked about."""
    return (
        view.function is None
        and view.session_affinity != CLIENT_IP_AFFINITY
        and protocol in ("TCP", "UDP")
    )


class VipListeners:
    """Listens on the VIPs of every Service in ``table`` while it should; ``close`` stops."""

    def __init__(
        self,
        table: ServiceTable,
        *,
        functions: FunctionEntrances | None = None,
        kernel: KernelForwarding | None = None,
        mesh: MeshRules | None = None,
        security: VipSecurity | None = None,
        balancer: BalancerFactory = RoundRobin,
        backlog: int = BACKLOG,
    ) -> None:
        self._table = table
        self._mesh = mesh
        self._security = security
        self._functions = functions
        self._kernel = kernel
        self._new_balancer = balancer
        self._backlog = backlog
        self._ports: dict[Key, dict[VipAddress, VipPort]] = {}
        self._kernel_served: dict[Key, set[VipAddress]] = {}
        self._splices = Splices()
        self._setups: set[asyncio.Task[None]] = set()
        self._failed: set[tuple[VipAddress, int]] = set()  # bind failures logged already
        self._unsubscribe: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._functions_generation: int | None = None  # as last seen
        self._selecting: dict[tuple[str, tuple[tuple[str, str], ...]], bool] = {}  # by selector
        self._functions_check: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Listen for every Service in the table now and follow its changes."""
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = [self._table.subscribe(self._changed)]
        if self._mesh is not None:
            self._unsubscribe.append(self._mesh.subscribe(self._rules_changed))
        if self._functions is not None:
            self._functions_generation = self._functions.functions_generation
            self._functions_check = self._loop.call_later(FUNCTIONS_CHECK_S, self._check_often)
        for view in self._table.services():
            self._update(view.key)

    async def close(self) -> None:
        """Stop listening, cut the forwarded connections (function calls drain in the gateway).
        The kernel's rules stay until their owner closes the NAT table."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self._functions_check is not None:
            self._functions_check.cancel()
            self._functions_check = None
        self._kernel_served.clear()
        for ports in self._ports.values():
            for port in ports.values():
                port.close()
        self._ports.clear()
        for task in self._setups:
            task.cancel()
        await asyncio.gather(*self._setups, return_exceptions=True)
        self._splices.abort_all()

    @property
    def listening(self) -> set[VipAddress]:
        """Every (cluster IP, port, protocol) bound now."""
        return {address for ports in self._ports.values() for address in ports}

    async def drain(self, ip: str) -> None:
        """Before the pod at ``ip`` stops: send it no new connection, and return when none goes
        to it. Only kernel NAT needs this (a refused DNAT connection is not tried elsewhere);
        the listeners try the next endpoint when one refuses."""
        if self._kernel is not None:
            await self._kernel.drain(ip)

    @property
    def kernel_served(self) -> set[VipAddress]:
        """Every (cluster IP, port, protocol) handed to kernel NAT now (with ready endpoints)."""
        return {address for addresses in self._kernel_served.values() for address in addresses}

    @property
    def forwarded_connections(self) -> int:
        """TCP connections being forwarded now."""
        return len(self._splices)

    # following the table

    def _rules_changed(self, keys: set[Key]) -> None:
        for key in keys or [view.key for view in self._table.services()]:
            self._changed(key)

    def _changed(self, key: Key) -> None:
        self._check_functions()
        self._update(key)

    def _check_often(self) -> None:
        assert self._loop is not None
        self._functions_check = self._loop.call_later(FUNCTIONS_CHECK_S, self._check_often)
        try:
            self._check_functions()
        except Exception:  # a timer's boundary: the next check tries again
            logger.exception("deciding the VIPs of Services in front of functions failed")

    def _check_functions(self) -> None:
        """When functions were deployed or removed, decide again for every Service with a
        selector: it may be in front of functions now, or no longer."""
        functions = self._functions
        if functions is None or functions.functions_generation == self._functions_generation:
            return
        self._functions_generation = functions.functions_generation
        self._selecting.clear()
        for view in self._table.services():
            if view.function is None and view.selector:
                self._update(view.key)

    def _selects_functions(self, view: ServiceView) -> bool:
        functions = self._functions
        if functions is None or view.function is not None or not view.selector:
            return False
        key = (view.namespace, view.selector)
        found = self._selecting.get(key)
        if found is None:
            selector = dict(view.selector)
            found = self._selecting[key] = functions.selects_functions(view.namespace, selector)
        return found

    def _update(self, key: Key) -> None:
        view = self._table.service(*key)
        routed = self._mesh is not None and self._mesh.has_rules(*key)
        if not routed and view is not None and view.function is None and self._security:
            routed = self._security.requires_mtls(view, is_http_port)
        wanted = _wanted_ports(
            self._table,
            view,
            functions=bool(self._functions),
            routed=routed,
            to_functions=view is not None and self._selects_functions(view),
        )
        if self._kernel is not None:
            self._hand_to_kernel(key, view, wanted)
        ports = self._ports.setdefault(key, {})
        for address, bound in list(ports.items()):
            want = wanted.get(address)
            if want is None or not want.same_kind(bound.wanted):
                bound.close()
                del ports[address]
        for address, want in wanted.items():
            if (existing := ports.get(address)) is not None:
                existing.update(want)
            elif (opened := self._open(address, want)) is not None:
                ports[address] = opened
        if not ports:
            del self._ports[key]

    def _hand_to_kernel(
        self, key: Key, view: ServiceView | None, wanted: dict[VipAddress, WantedPort]
    ) -> None:
        """Move the ports the kernel serves out of ``wanted`` (so no socket binds them) into
        the Service's NAT rules."""
        assert self._kernel is not None
        rules = {
            address: want.endpoints
            for address, want in wanted.items()
            if view is not None
            and want.function is None
            and served_by_kernel(view, address[2])
            and self._kernel.can_serve(address[0], address[2])
        }
        for address in rules:
            del wanted[address]
        self._kernel.put(key, rules)
        if rules:
            self._kernel_served[key] = set(rules)
        else:
            self._kernel_served.pop(key, None)

    def _open(self, address: VipAddress, want: WantedPort) -> VipPort | None:
        port = self._port_for(address, want)
        try:
            port.open(self._backlog)
        except OSError as exc:
            if (address, exc.errno or 0) not in self._failed:
                self._failed.add((address, exc.errno or 0))
                logger.warning("cannot listen on VIP %s:%d/%s: %s", *address, exc.strerror or exc)
            return None
        if self._failed:
            self._failed = {failed for failed in self._failed if failed[0] != address}
        logger.debug("VIP %s:%d/%s listening", *address)
        return port

    def _port_for(self, address: VipAddress, want: WantedPort) -> VipPort:
        if want.function is not None:
            assert self._functions is not None
            entrance = self._functions.function_entrance(*want.function, want.service_port)
            return VipPort(address, want, on_accept=self._adopter(entrance, want))
        balancer = self._balancer(want)
        if address[2] == "UDP":
            return VipPort(address, want, datagrams=DatagramPort(address[:2], balancer))
        return VipPort(address, want, balancer=balancer, on_accept=self._forwarder(balancer))

    def _balancer(self, want: WantedPort) -> Balancer:
        balancer = self._new_balancer()
        if want.affinity_timeout_s is not None:
            assert self._loop is not None
            timeout_s = want.affinity_timeout_s
            balancer = ClientIpAffinity(balancer, timeout_s=timeout_s, clock=self._loop.time)
        balancer.update(want.endpoints)
        return balancer

    # accepted connections

    def _forwarder(self, balancer: Balancer) -> Callable[[socket.socket, str], None]:
        def accepted(client: socket.socket, client_ip: str) -> None:
            self._spawn(
                forward(client, client_ip, balancer=balancer, splices=self._splices), client
            )

        return accepted

    def _adopter(
        self, entrance: Callable[[], asyncio.Protocol], want: WantedPort
    ) -> Callable[[socket.socket, str], None]:
        security, service, port = self._security, want.function, want.service_port
        assert service is not None

        async def adopt(client: socket.socket) -> None:
            assert self._loop is not None
            if security is None:
                await self._loop.connect_accepted_socket(entrance, client)
            else:  # the mode read per connection: a new PeerAuthentication acts at once
                await security.adopt(client, entrance, mode=security.mode(*service, port))

        def accepted(client: socket.socket, client_ip: str) -> None:
            self._spawn(adopt(client), client)

        return accepted

    def _spawn(self, setup: Coroutine[Any, Any, object], client: socket.socket) -> None:
        assert self._loop is not None
        task = self._loop.create_task(_guarded(setup, client))
        self._setups.add(task)
        task.add_done_callback(self._setups.discard)


async def _guarded(setup: Coroutine[Any, Any, object], client: socket.socket) -> None:
    """A task boundary: a connection whose set-up failed unexpectedly is reset, and logged."""
    try:
        await setup
    except asyncio.CancelledError:
        reset(client)
        raise
    except Exception:
        logger.exception("setting up a VIP connection failed")
        with contextlib.suppress(OSError):
            reset(client)


def _wanted_ports(
    table: ServiceTable,
    view: ServiceView | None,
    *,
    functions: bool,
    routed: bool = False,
    to_functions: bool = False,
) -> dict[VipAddress, WantedPort]:
    """What each VIP port of the Service should be now; absent ports do not listen.
    ``routed``: the Service has mesh rules, so its HTTP ports go through the gateway;
    ``to_functions``: it selects functions, so its HTTP and unnamed ports do."""
    if view is None or not view.cluster_ip or view.headless:
        return {}
    if view.function is not None:
        if not functions:
            return {}
        return {
            (view.cluster_ip, port.port, port.protocol): WantedPort(
                function=view.key, service_port=port.port
            )
            for port in view.ports
            if port.protocol == "TCP"
        }
    endpoints = table.endpoints(view.namespace, view.name)
    affinity_s = view.affinity_timeout_s if view.session_affinity == CLIENT_IP_AFFINITY else None
    wanted: dict[VipAddress, WantedPort] = {}
    for port in view.ports:
        if functions and port.protocol == "TCP" and _to_gateway(port.name, routed, to_functions):
            wanted[(view.cluster_ip, port.port, "TCP")] = WantedPort(
                function=view.key, service_port=port.port
            )
            continue
        # each endpoint once, in the Endpoints' order (so an unchanged list compares equal)
        ready = tuple(dict.fromkeys(endpoints.backends(port.name))) if endpoints else ()
        if ready and port.protocol in ("TCP", "UDP"):
            wanted[(view.cluster_ip, port.port, port.protocol)] = WantedPort(
                endpoints=ready, affinity_timeout_s=affinity_s
            )
    return wanted


def _to_gateway(port_name: str, routed: bool, to_functions: bool) -> bool:
    """Whether a TCP port goes through the gateway: an HTTP port of a Service with mesh rules,
    or one (an unnamed port included: Istio sniffs those, and a function speaks HTTP) of a
    Service in front of functions."""
    if to_functions and not port_name:
        return True
    return (routed or to_functions) and is_http_port(port_name)


def is_http_port(name: str) -> bool:
    """Istio's protocol selection by port name: ``http``, ``http-*``, ``http2``, ``http2-*``."""
    return name in ("http", "http2") or name.startswith(("http-", "http2-"))
