"""Services and their endpoints, kept in memory: what the DNS server and the VIP listeners read.

``ServiceTable`` holds one ``ServiceView`` per stored Service and one ``EndpointsView`` per
stored Endpoints object, both parsed once when they change, so a DNS answer or a new VIP
connection costs dict look-ups only. Whoever keeps it current (a feed that watches the store)
calls ``put_service``/``remove_service``/``put_endpoints``/``remove_endpoints``; readers that
cache derived data (pre-encoded DNS answers, bound VIP listeners) ``subscribe`` and are told
which (namespace, name) changed. No I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
LOAD_BALANCER = "LoadBalancer"
EXTERNAL_NAME = "ExternalName"
HEADLESS = "None"  # spec.clusterIP of a headless Service


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePortView:
    """One entry of ``spec.ports``; ``target_port`` is a number or a container port's name."""

    name: str
    protocol: str  # TCP | UDP | SCTP
    port: int
    target_port: int | str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceView:
    """A Service as the data plane needs it."""

    namespace: str
    name: str
    type: str  # ClusterIP | NodePort | LoadBalancer | ExternalName
    cluster_ip: str | None  # None when headless or ExternalName
    ports: tuple[ServicePortView, ...]
    selector: tuple[tuple[str, str], ...] | None  # None: endpoints written by the user
    external_name: str | None = None
    session_affinity: str = "None"  # None | ClientIP
    affinity_timeout_s: float = 10800.0
    function: str | None = None  # set for the Service every Function gets (VIP calls it)

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def headless(self) -> bool:
        return self.type != EXTERNAL_NAME and self.cluster_ip is None


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointAddressView:
    """One address of an Endpoints subset."""

    ip: str
    hostname: str | None = None  # pod spec.hostname (headless DNS names)
    pod: str | None = None  # targetRef name when it is a Pod


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointPortView:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSubsetView:
    """Addresses that all serve the same ports (``subsets[]`` of v1 Endpoints)."""

    ready: tuple[EndpointAddressView, ...]
    not_ready: tuple[EndpointAddressView, ...]
    ports: tuple[EndpointPortView, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointsView:
    namespace: str
    name: str
    subsets: tuple[EndpointSubsetView, ...]

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def ready_addresses(self) -> Iterator[EndpointAddressView]:
        for subset in self.subsets:
            yield from subset.ready

    def backends(self, port_name: str) -> list[tuple[str, int]]:
        """(ip, port) of every ready address serving the port named ``port_name`` (the
        Service port's name; "" for a single unnamed port)."""
        found: list[tuple[str, int]] = []
        for subset in self.subsets:
            for port in subset.ports:
                if port.name == port_name or (not port_name and len(subset.ports) == 1):
                    found.extend((address.ip, port.port) for address in subset.ready)
                    break
        return found


Listener = Callable[[Key], None]


class ServiceTable:
    """Every Service and Endpoints by (namespace, name), and by cluster IP."""

    def __init__(self) -> None:
        self._services: dict[Key, ServiceView] = {}
        self._endpoints: dict[Key, EndpointsView] = {}
        self._by_ip: dict[str, ServiceView] = {}
        self._listeners: list[Listener] = []

    # readers

    def service(self, namespace: str, name: str) -> ServiceView | None:
        return self._services.get((namespace, name))

    def endpoints(self, namespace: str, name: str) -> EndpointsView | None:
        return self._endpoints.get((namespace, name))

    def by_cluster_ip(self, ip: str) -> ServiceView | None:
        return self._by_ip.get(ip)

    def services(self) -> Iterator[ServiceView]:
        return iter(list(self._services.values()))

    def namespaces(self) -> set[str]:
        return {namespace for namespace, _ in self._services}

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(key)`` after each change; returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    # writers (the feed)

    def put_service(self, view: ServiceView) -> None:
        old = self._services.get(view.key)
        if old is not None and old.cluster_ip:
            self._by_ip.pop(old.cluster_ip, None)
        self._services[view.key] = view
        if view.cluster_ip:
            self._by_ip[view.cluster_ip] = view
        self._changed(view.key)

    def remove_service(self, namespace: str, name: str) -> None:
        old = self._services.pop((namespace, name), None)
        if old is None:
            return
        if old.cluster_ip and self._by_ip.get(old.cluster_ip) is old:
            del self._by_ip[old.cluster_ip]
        self._changed(old.key)

    def put_endpoints(self, view: EndpointsView) -> None:
        self._endpoints[view.key] = view
        self._changed(view.key)

    def remove_endpoints(self, namespace: str, name: str) -> None:
        if self._endpoints.pop((namespace, name), None) is not None:
            self._changed((namespace, name))

    def _changed(self, key: Key) -> None:
        for listener in list(self._listeners):
            try:
                listener(key)
            except Exception:  # one broken reader must not stop the others
                logger.exception("a service table listener failed on %s/%s", *key)
