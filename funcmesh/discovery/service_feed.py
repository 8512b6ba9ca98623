"""Keeps a ServiceTable (discovery.services) equal to the stored Services and Endpoints.

At start every Service and Endpoints object is parsed and put into the table; then each
committed change is applied as it comes, so the DNS server and the VIP listeners see a change
within one pass of the event loop. A watch that ends early (it fell behind) or fails is followed
by a fresh list, and whatever the table holds that the store no longer has is removed. Objects
that do not parse (an older schema) are left out with a warning. It never answers queries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.errors import Invalid
from funcmesh.model.endpoints import EndpointAddress, EndpointsSpec, parse_endpoints
from funcmesh.model.kinds import ENDPOINTS, SERVICE, ResourceType
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.model.services import ServiceSpec, parse_service
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]
RETRY_PAUSE_S = 1.0


def service_view(spec: ServiceSpec) -> ServiceView:
    return ServiceView(
        namespace=spec.namespace,
        name=spec.name,
        type=spec.type,
        cluster_ip=spec.cluster_ip,
        ports=tuple(
            ServicePortView(
                name=port.name, protocol=port.protocol, port=port.port, target_port=port.target_port
            )
            for port in spec.ports
        ),
        selector=spec.selector,
        external_name=spec.external_name,
        session_affinity=spec.session_affinity,
        affinity_timeout_s=spec.affinity_timeout_s,
        function=spec.function,
    )


def endpoints_view(spec: EndpointsSpec) -> EndpointsView:
    return EndpointsView(
        namespace=spec.namespace,
        name=spec.name,
        subsets=tuple(
            EndpointSubsetView(
                ready=tuple(_address_view(a) for a in subset.ready),
                not_ready=tuple(_address_view(a) for a in subset.not_ready),
                ports=tuple(
                    EndpointPortView(name=p.name, port=p.port, protocol=p.protocol)
                    for p in subset.ports
                ),
            )
            for subset in spec.subsets
        ),
    )


def _address_view(address: EndpointAddress) -> EndpointAddressView:
    return EndpointAddressView(ip=address.ip, hostname=address.hostname, pod=address.pod)


class ServiceFeed:
    """Follows the store's Services and Endpoints into a ServiceTable."""

    def __init__(self, store: Store, table: ServiceTable) -> None:
        self._store = store
        self.table = table
        self._services: set[Key] = set()
        self._endpoints: set[Key] = set()
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        services_rv = await self._load_services()
        endpoints_rv = await self._load_endpoints()
        self._watchers = [
            asyncio.create_task(
                self._follow(SERVICE, services_rv, self._load_services),
                name="service-feed-services",
            ),
            asyncio.create_task(
                self._follow(ENDPOINTS, endpoints_rv, self._load_endpoints),
                name="service-feed-endpoints",
            ),
        ]

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []

    async def _follow(
        self, rt: ResourceType, since: int, reload: Callable[[], Awaitable[int]]
    ) -> None:
        stale = False
        while True:
            try:
                if stale:
                    since = await reload()
                async for change in self._store.watch(rt, None, since):
                    since = change.resource_version
                    self._apply(change)
                logger.warning("the watch of %s ended early; listing them again", rt.plural)
            except Exception:  # the task's boundary: keep the table following the store
                logger.exception("following %s for the service table failed", rt.plural)
                await asyncio.sleep(RETRY_PAUSE_S)
            stale = True

    def _apply(self, change: Change) -> None:
        obj = change.object
        namespace, name = namespace_of(obj) or "default", name_of(obj)
        if change.resource == SERVICE.key:
            if change.type == "DELETED":
                self._services.discard((namespace, name))
                self.table.remove_service(namespace, name)
            else:
                self._put_service(obj)
        elif change.type == "DELETED":
            self._endpoints.discard((namespace, name))
            self.table.remove_endpoints(namespace, name)
        else:
            self._put_endpoints(obj)

    async def _load_services(self) -> int:
        objects, since = await self._store.list_objects(SERVICE)
        old, self._services = self._services, set()
        for obj in objects:
            self._put_service(obj)
        for key in old - self._services:
            self.table.remove_service(*key)
        return since

    async def _load_endpoints(self) -> int:
        objects, since = await self._store.list_objects(ENDPOINTS)
        old, self._endpoints = self._endpoints, set()
        for obj in objects:
            self._put_endpoints(obj)
        for key in old - self._endpoints:
            self.table.remove_endpoints(*key)
        return since

    def _put_service(self, obj: RawObject) -> None:
        try:
            view = service_view(parse_service(obj))
        except Invalid as exc:  # admitted objects parse; an older schema may not
            logger.warning("Service %s/%s is ignored: %s", namespace_of(obj), name_of(obj), exc)
            return
        self._services.add(view.key)
        self.table.put_service(view)

    def _put_endpoints(self, obj: RawObject) -> None:
        try:
            view = endpoints_view(parse_endpoints(obj))
        except Invalid as exc:
            logger.warning("Endpoints %s/%s are ignored: %s", namespace_of(obj), name_of(obj), exc)
            return
        self._endpoints.add(view.key)
        self.table.put_endpoints(view)
