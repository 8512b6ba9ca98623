"""The mesh's rules, kept in memory: what the data plane reads to route one request.

``MeshTable`` holds the VirtualServices (compiled once when they change), DestinationRules,
Gateways, AuthorizationPolicies and PeerAuthentications by (namespace, name). It answers the
data plane's questions with a dict look-up while nothing changes: the routes of a Service host
(``mesh_routes``), of a host that reaches the funcmesh gateway (``gateway_routes``) and the
DestinationRule of a host (``destination_rule``); each answer is built on first use after a
change and cached until the next one. Whoever keeps the table current (``MeshFeed``) calls the
``put_*``/``remove_*`` methods; readers that must act when a Service gains or loses rules (the
VIP listeners) ``subscribe``. No I/O here, and nothing per request but look-ups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from funcmesh.mesh.hosts import CLUSTER_DOMAIN, host_matches, qualify, service_host, service_of
from funcmesh.mesh.routes import CompiledRoute, HostRoutes, compile_virtual_service
from funcmesh.model.istio_destinations import DestinationRuleSpec, GatewayServer, GatewaySpec
from funcmesh.model.istio_networking import VirtualServiceSpec
from funcmesh.model.istio_security import AuthorizationPolicySpec, PeerAuthenticationSpec

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
Listener = Callable[[set[Key]], None]
MESH = "mesh"  # the gateway name that binds a VirtualService to the Services' own traffic
ANY_NAMESPACE = "*"
CACHE_ENTRIES = 4096  # per cache; a full cache starts again empty
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True, kw_only=True)
class BoundVirtualService:
    """A VirtualService compiled, with the hosts and gateways it binds (qualified)."""

    spec: VirtualServiceSpec
    hosts: tuple[str, ...]
    routes: tuple[CompiledRoute, ...]
    mesh: bool  # bound to the Services' traffic (no gateways, or "mesh" among them)
    gateways: tuple[Key, ...]


def bind_virtual_service(spec: VirtualServiceSpec) -> BoundVirtualService:
    compiled = compile_virtual_service(spec)
    refs = tuple(_gateway_ref(ref, spec.namespace) for ref in spec.gateways if ref != MESH)
    return BoundVirtualService(
        spec=spec,
        hosts=tuple(compiled),
        routes=tuple(next(iter(compiled.values()), ())),
        mesh=not spec.gateways or MESH in spec.gateways,
        gateways=refs,
    )


def _gateway_ref(ref: str, namespace: str) -> Key:
    """A VirtualService's ``gateways`` entry: "name" (its own namespace) or "ns/name"."""
    gateway_namespace, slash, name = ref.partition("/")
    return (gateway_namespace, name) if slash else (namespace, ref)


def serves_tls(server: GatewayServer) -> bool:
    """Whether a Gateway server binds the gateway's TLS listener (else the plain one)."""
    return server.protocol == "HTTPS" or server.tls_mode == "SIMPLE"


def server_host(entry: str, gateway_namespace: str) -> tuple[str, str]:
    """(namespace whose VirtualServices it admits, or "*"; host) of a server's hosts entry:
    "host" and "*/host" admit any namespace, "./host" the Gateway's, "ns/host" ns's."""
    namespace, slash, host = entry.lower().partition("/")
    if not slash:
        return ANY_NAMESPACE, namespace
    return (gateway_namespace if namespace == "." else namespace), host


class _HostIndex:
    """Object keys by the hosts they name: exact names in a dict, wildcards scanned."""

    def __init__(self) -> None:
        self.exact: dict[str, set[Key]] = {}
        self.wildcards: dict[Key, tuple[str, ...]] = {}

    def add(self, key: Key, hosts: Iterable[str]) -> None:
        patterns = []
        for host in hosts:
            if "*" in host:
                patterns.append(host)
            else:
                self.exact.setdefault(host, set()).add(key)
        if patterns:
            self.wildcards[key] = tuple(patterns)

    def discard(self, key: Key, hosts: Iterable[str]) -> None:
        for host in hosts:
            keys = self.exact.get(host)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.exact[host]
        self.wildcards.pop(key, None)

    def keys_for(self, fqdn: str) -> set[Key]:
        found = set(self.exact.get(fqdn, ()))
        for key, patterns in self.wildcards.items():
            if any(host_matches(pattern, fqdn) for pattern in patterns):
                found.add(key)
        return found


class ServiceRules(NamedTuple):
    """A Service's host name, VirtualService routes and DestinationRule (None: none)."""

    host: str
    routes: HostRoutes | None
    destination_rule: DestinationRuleSpec | None


class MeshTable:
    """Every Istio object by (namespace, name), and the routes and rules per host."""

    def __init__(self) -> None:
        self._virtual_services: dict[Key, BoundVirtualService] = {}
        self._destination_rules: dict[Key, DestinationRuleSpec] = {}
        self._gateways: dict[Key, GatewaySpec] = {}
        self._authorization_policies: dict[Key, AuthorizationPolicySpec] = {}
        self._peer_authentications: dict[Key, PeerAuthenticationSpec] = {}
        self._mesh_hosts = _HostIndex()  # mesh-bound VirtualServices
        self._rule_hosts = _HostIndex()  # DestinationRules
        self._mesh_cache: dict[str, HostRoutes | None] = {}
        self._gateway_cache: dict[tuple[str, bool], HostRoutes | None] = {}
        self._rule_cache: dict[tuple[str, str | None], DestinationRuleSpec | None] = {}
        self._service_cache: dict[Key, ServiceRules] = {}
        self._listeners: list[Listener] = []
        self.version = 0  # grows with every change

    # the data plane's questions

    @property
    def has_gateways(self) -> bool:
        """Whether any Gateway is stored: while none is, the gateway need not look up the
        Host of each request."""
        return bool(self._gateways)

    def mesh_routes(self, fqdn: str) -> HostRoutes | None:
        """The routes of the mesh-bound VirtualServices that name ``fqdn`` (a full Service
        name; wildcard hosts count), or None when none does."""
        try:
            return self._mesh_cache[fqdn]
        except KeyError:
            pass
        keys = sorted(self._mesh_hosts.keys_for(fqdn))
        routes = [route for key in keys for route in self._virtual_services[key].routes]
        return _remember(self._mesh_cache, fqdn, HostRoutes(routes) if routes else None)

    def service_rules(self, namespace: str, name: str) -> ServiceRules:
        """What the mesh says about the Service ``NAME.NS.svc.cluster.local``: its host name,
        its routes (``mesh_routes``) and its DestinationRule, in one look-up by (namespace,
        name): a function call asks this first, and mostly hears "nothing"."""
        key = (namespace, name)
        try:
            return self._service_cache[key]
        except KeyError:
            pass
        host = service_host(namespace, name)
        rules = ServiceRules(host, self.mesh_routes(host), self.destination_rule(host))
        return _remember(self._service_cache, key, rules)

    def gateway_routes(self, authority: str, *, tls: bool) -> HostRoutes | None:
        """The routes for a request that reached the funcmesh gateway for host ``authority``
        (as ``hosts.authority_host`` gives it), on its TLS listener or its plain one: those of
        the VirtualServices bound to a Gateway with a server for that host and listener, that
        the server admits (by namespace), and that name the host themselves."""
        key = (authority, tls)
        try:
            return self._gateway_cache[key]
        except KeyError:
            pass
        admitted = self._gateways_for(authority, tls=tls)
        routes: list[CompiledRoute] = []
        if admitted:
            for bound in self._virtual_services.values():
                if _admitted(bound, admitted) and any(
                    host_matches(host, authority) for host in bound.hosts
                ):
                    routes.extend(bound.routes)
        return _remember(self._gateway_cache, key, HostRoutes(routes) if routes else None)

    def _gateways_for(self, authority: str, *, tls: bool) -> dict[Key, set[str]]:
        """Gateways with a server for ``authority`` on that listener, and the namespaces
        whose VirtualServices each admits ("*": any)."""
        admitted: dict[Key, set[str]] = {}
        for key, gateway in self._gateways.items():
            for server in gateway.servers:
                if serves_tls(server) != tls:
                    continue
                for entry in server.hosts:
                    namespace, host = server_host(entry, gateway.namespace)
                    if host_matches(host, authority):
                        admitted.setdefault(key, set()).add(namespace)
        return admitted

    def destination_rule(
        self, fqdn: str, *, client_namespace: str | None = None
    ) -> DestinationRuleSpec | None:
        """The DestinationRule for host ``fqdn``. When several name it: one in the client's
        namespace first, then one in the Service's, then any; within those an exact host
        before a wildcard, then by (namespace, name)."""
        key = (fqdn, client_namespace)
        try:
            return self._rule_cache[key]
        except KeyError:
            pass
        service = service_of(fqdn)
        service_namespace = service[0] if service is not None else None

        def rank(rule_key: Key) -> tuple[int, bool, str, str]:
            namespace = rule_key[0]
            place = (
                0 if namespace == client_namespace else 1 if namespace == service_namespace else 2
            )
            return (place, rule_key in self._rule_hosts.wildcards, *rule_key)

        keys = self._rule_hosts.keys_for(fqdn)
        found = self._destination_rules[min(keys, key=rank)] if keys else None
        return _remember(self._rule_cache, key, found)

    @property
    def has_authorization_policies(self) -> bool:
        """Whether any AuthorizationPolicy is stored: while none is, no request is checked."""
        return bool(self._authorization_policies)

    def has_rules(self, namespace: str, name: str) -> bool:
        """Whether a mesh-bound VirtualService or a DestinationRule names Service
        namespace/name (its HTTP ports must then go through the daemon, not kernel NAT)."""
        fqdn = f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"
        return bool(self._mesh_hosts.keys_for(fqdn) or self._rule_hosts.keys_for(fqdn))

    def hosts_with_rules(self) -> set[Key]:
        """The Services that a mesh-bound VirtualService or a DestinationRule names by their
        own name. Rules with wildcard hosts are not listed (the table does not know which
        Services exist): ask ``has_rules`` for those."""
        hosts = self._mesh_hosts.exact.keys() | self._rule_hosts.exact.keys()
        return {service for host in hosts if (service := service_of(host)) is not None}

    def unknown_destinations(
        self, namespace: str, name: str, service_exists: Callable[[str, str], bool]
    ) -> list[str]:
        """The destination hosts (routes and mirrors) of VirtualService namespace/name that
        are cluster Services which do not exist, sorted."""
        bound = self._virtual_services.get((namespace, name))
        if bound is None:
            return []
        hosts = {d.host for route in bound.routes for d in route.destinations}
        hosts.update(route.mirror.host for route in bound.routes if route.mirror is not None)
        return sorted(
            host
            for host in hosts
            if (service := service_of(host)) is not None and not service_exists(*service)
        )

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(services)`` after each change of a VirtualService or
        DestinationRule that names a Service, with the Services (namespace, name) whose rules
        may have changed: those named by the object before and after the change. An empty set
        means "possibly any" (the object names a wildcard host). A PeerAuthentication's
        change is told with an empty set (its mode may make any Service's VIP require mTLS).
        Changes of Gateways and AuthorizationPolicies are not told (``version`` counts every
        change). Returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # listings (status, tables)

    def virtual_services(self) -> Iterator[VirtualServiceSpec]:
        return iter([bound.spec for bound in self._virtual_services.values()])

    def virtual_service(self, namespace: str, name: str) -> BoundVirtualService | None:
        return self._virtual_services.get((namespace, name))

    def destination_rules(self) -> Iterator[DestinationRuleSpec]:
        return iter(list(self._destination_rules.values()))

    def gateways(self) -> Iterator[GatewaySpec]:
        return iter(list(self._gateways.values()))

    def authorization_policies(self, namespace: str) -> list[AuthorizationPolicySpec]:
        return _in_namespace(self._authorization_policies, namespace)

    def peer_authentications(self, namespace: str) -> list[PeerAuthenticationSpec]:
        return _in_namespace(self._peer_authentications, namespace)

    # writers (the feed)

    def put_virtual_service(self, spec: VirtualServiceSpec) -> None:
        key = (spec.namespace, spec.name)
        old = self._virtual_services.get(key)
        if old is not None and old.spec == spec:
            return
        bound = bind_virtual_service(spec)
        self._unbind(key, old)
        self._virtual_services[key] = bound
        if bound.mesh:
            self._mesh_hosts.add(key, bound.hosts)
        self._routing_changed(old.hosts if old else (), bound.hosts)

    def remove_virtual_service(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        old = self._virtual_services.pop(key, None)
        if old is not None:
            self._unbind(key, old)
            self._routing_changed(old.hosts, ())

    def _unbind(self, key: Key, old: BoundVirtualService | None) -> None:
        if old is not None and old.mesh:
            self._mesh_hosts.discard(key, old.hosts)

    def put_destination_rule(self, spec: DestinationRuleSpec) -> None:
        key = (spec.namespace, spec.name)
        old = self._destination_rules.get(key)
        if old == spec:
            return
        old_hosts = (qualify(old.host, old.namespace),) if old is not None else ()
        host = qualify(spec.host, spec.namespace)
        self._rule_hosts.discard(key, old_hosts)
        self._rule_hosts.add(key, (host,))
        self._destination_rules[key] = spec
        self._routing_changed(old_hosts, (host,))

    def remove_destination_rule(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        old = self._destination_rules.pop(key, None)
        if old is not None:
            old_hosts = (qualify(old.host, old.namespace),)
            self._rule_hosts.discard(key, old_hosts)
            self._routing_changed(old_hosts, ())

    def put_gateway(self, spec: GatewaySpec) -> None:
        key = (spec.namespace, spec.name)
        if self._gateways.get(key) != spec:
            self._gateways[key] = spec
            self._gateway_changed()

    def remove_gateway(self, namespace: str, name: str) -> None:
        if self._gateways.pop((namespace, name), None) is not None:
            self._gateway_changed()

    def put_authorization_policy(self, spec: AuthorizationPolicySpec) -> None:
        self._authorization_policies[(spec.namespace, spec.name)] = spec
        self.version += 1

    def remove_authorization_policy(self, namespace: str, name: str) -> None:
        if self._authorization_policies.pop((namespace, name), None) is not None:
            self.version += 1

    def put_peer_authentication(self, spec: PeerAuthenticationSpec) -> None:
        key = (spec.namespace, spec.name)
        if self._peer_authentications.get(key) != spec:
            self._peer_authentications[key] = spec
            self.version += 1
            self._tell(set())

    def remove_peer_authentication(self, namespace: str, name: str) -> None:
        if self._peer_authentications.pop((namespace, name), None) is not None:
            self.version += 1
            self._tell(set())

    def _gateway_changed(self) -> None:
        self.version += 1
        self._gateway_cache.clear()

    def _routing_changed(self, old_hosts: Iterable[str], new_hosts: Iterable[str]) -> None:
        self.version += 1
        self._mesh_cache.clear()
        self._gateway_cache.clear()
        self._rule_cache.clear()
        self._service_cache.clear()
        hosts = {*old_hosts, *new_hosts}
        services: set[Key] = set()
        if not any("*" in host for host in hosts):
            services = {s for host in hosts if (s := service_of(host)) is not None}
            if not services:
                return  # only external names: no Service is concerned
        self._tell(services)

    def _tell(self, services: set[Key]) -> None:
        for listener in list(self._listeners):
            try:
                listener(set(services))
            except Exception:  # one broken reader must not stop the others
                logger.exception("a mesh table listener failed")


def _admitted(bound: BoundVirtualService, admitted: dict[Key, set[str]]) -> bool:
    namespace = bound.spec.namespace
    for ref in bound.gateways:
        namespaces = admitted.get(ref)
        if namespaces is not None and (ANY_NAMESPACE in namespaces or namespace in namespaces):
            return True
    return False


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    if len(cache) >= CACHE_ENTRIES:
        cache.clear()
    cache[key] = value
    return value


def _in_namespace(objects: dict[Key, _V], namespace: str) -> list[_V]:
    return [objects[key] for key in sorted(objects) if key[0] == namespace]
