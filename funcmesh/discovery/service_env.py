"""Kubernetes service links: the ``<NAME>_SERVICE_HOST``... variables of a namespace's Services.

The kubelet writes eight variables per Service with a cluster IP into every container it
starts. ``ServiceEnvironments`` computes a namespace's set once and keeps it until a Service
of that namespace changes, so a cold start pays a dict copy, not a walk over every Service.
No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from funcmesh.discovery.services import Key, ServiceTable, ServiceView


def service_environment(table: ServiceTable | None, namespace: str) -> dict[str, str]:
    """The service links of every Service with a cluster IP in ``namespace``."""
    env: dict[str, str] = {}
    for view in table.services() if table is not None else ():
        if view.namespace == namespace and view.cluster_ip and view.ports:
            env.update(service_links(view))
    return env


def service_links(view: ServiceView) -> dict[str, str]:
    """Kubernetes's environment variables for one Service (as the kubelet writes them)."""
    assert view.cluster_ip is not None
    name = _env_name(view.name)
    host = f"[{view.cluster_ip}]" if ":" in view.cluster_ip else view.cluster_ip
    first = view.ports[0]
    env = {f"{name}_SERVICE_HOST": view.cluster_ip, f"{name}_SERVICE_PORT": str(first.port)}
    for port in view.ports:
        if port.name:
            env[f"{name}_SERVICE_PORT_{_env_name(port.name)}"] = str(port.port)
    env[f"{name}_PORT"] = f"{first.protocol.lower()}://{host}:{first.port}"
    for port in view.ports:
        protocol = port.protocol.lower()
        prefix = f"{name}_PORT_{port.port}_{port.protocol.upper()}"
        env[prefix] = f"{protocol}://{host}:{port.port}"
        env[f"{prefix}_PROTO"] = protocol
        env[f"{prefix}_PORT"] = str(port.port)
        env[f"{prefix}_ADDR"] = view.cluster_ip
    return env


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


class ServiceEnvironments:
    """``service_environment`` per namespace, cached until one of the namespace's Services
    changes (an Endpoints change, which every cold start makes, keeps it)."""

    def __init__(self, table: ServiceTable) -> None:
        self._table = table
        self._cache: dict[str, Mapping[str, str]] = {}
        self._views: dict[Key, ServiceView] = {}  # the Services the cached sets came from
        self._unsubscribe = table.subscribe(self._changed)

    def __call__(self, namespace: str) -> Mapping[str, str]:
        cached = self._cache.get(namespace)
        if cached is None:
            for view in self._table.services():
                if view.namespace == namespace:
                    self._views[view.key] = view
            cached = self._cache[namespace] = service_environment(self._table, namespace)
        return cached

    def close(self) -> None:
        self._unsubscribe()

    def _changed(self, key: Key) -> None:
        view = self._table.service(*key)
        if view is not None and self._views.get(key) is view:
            return  # the same Service: its Endpoints changed
        self._views.pop(key, None)
        self._cache.pop(key[0], None)
