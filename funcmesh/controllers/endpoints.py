"""The endpoints controller: for every Service with a selector, an Endpoints object of the same
name listing its pods (model.endpoints.subsets_for), rewritten when a pod or the Service changes.

Pods come from a ``PodSource`` (function instances and workload replicas); Services and
Endpoints from the store. A pod change marks the Services it is or was part of (found through
an index of the Services by selector, not by trying each Service of the namespace); one worker
recomputes every marked Service from a fresh list of its selected pods and writes the
Endpoints only when they differ. For a new or newly ready pod the worker waits
``batch_period_s`` after the first change before it starts, as Kubernetes'
``--endpoint-updates-batch-period`` does: a cold start's two changes (the pod is created, then
ready a few milliseconds later) cost one write, and that write comes after the new instance
has answered its first call instead of competing with it. A listed pod that goes (deleted,
terminating, no longer ready) is taken out at once: calls must stop going to it. Services without a
selector are left alone: their Endpoints are the user's. When a Service is deleted its
Endpoints go too, also those whose Service went while the daemon was down (as Kubernetes'
controller does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from funcmesh.discovery.pod_watch import PodSource, follow_pods
from funcmesh.errors import AlreadyExists, Conflict, Invalid, NotFound
from funcmesh.model.endpoints import pod_ready, subsets_for
from funcmesh.model.kinds import ENDPOINTS, SERVICE, ResourceType
from funcmesh.model.objects import RawObject, labels_of, metadata_of, name_of, namespace_of
from funcmesh.model.services import ServiceSpec, parse_service
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
HEADLESS_LABEL = "service.kubernetes.io/headless"
RETRY_PAUSE_S = 1.0
BATCH_PERIOD_S = 0.02


class EndpointsController:
    """Keeps the Endpoints of every Service with a selector equal to its pods."""

    def __init__(
        self, *, store: Store, pods: PodSource, batch_period_s: float = BATCH_PERIOD_S
    ) -> None:
        self._store = store
        self._pods = pods
        self._batch_period_s = batch_period_s
        self._services: dict[Key, ServiceSpec] = {}
        self._selecting = SelectorIndex()
        self._members: dict[Key, frozenset[str]] = {}  # pod names last listed per Service
        self._member_of: dict[Key, set[Key]] = {}  # (namespace, pod) -> its Services, as listed
        self._written: dict[Key, tuple[list[dict[str, Any]], dict[str, str]]] = {}  # last write
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()  # a Service is marked
        self._hurry = asyncio.Event()  # ... for a pod that must leave its Endpoints now
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the Services, drop Endpoints without a Service, then follow everything."""
        services_rv = await self._load_services()
        endpoints_rv = await self._delete_orphans()
        self._tasks = [
            asyncio.create_task(self._follow_pods(), name="endpoints-pods"),
            asyncio.create_task(
                self._follow(SERVICE, services_rv, self._on_service, self._load_services),
                name="endpoints-services",
            ),
            asyncio.create_task(
                self._follow(ENDPOINTS, endpoints_rv, self._on_endpoints, self._delete_orphans),
                name="endpoints-endpoints",
            ),
            asyncio.create_task(self._work(), name="endpoints-worker"),
        ]
        self._mark_all()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # inputs

    async def _load_services(self) -> int:
        objects, since = await self._store.list_objects(SERVICE)
        self._services, self._selecting = {}, SelectorIndex()
        for obj in objects:
            if (spec := _parsed(obj)) is not None:
                self._set_service(spec)
        self._mark_all()
        return since

    async def _delete_orphans(self) -> int:
        objects, since = await self._store.list_objects(ENDPOINTS)
        stored = {
            (namespace_of(s), name_of(s)) for s in (await self._store.list_objects(SERVICE))[0]
        }
        for obj in objects:
            key = (namespace_of(obj), name_of(obj))
            if key not in stored:
                logger.info("deleting Endpoints %s/%s: their Service is gone", *key)
                await self._delete_endpoints(key)
        return since

    async def _follow(
        self,
        rt: ResourceType,
        since: int,
        apply: Callable[[Change], Awaitable[None]],
        reload: Callable[[], Awaitable[int]],
    ) -> None:
        """Apply each change of ``rt``; after a watch that ended early or failed, list again."""
        while True:
            try:
                async for change in self._store.watch(rt, None, since):
                    since = change.resource_version
                    await apply(change)
                logger.warning("the watch of %s ended early; listing them again", rt.plural)
            except Exception:  # the task's boundary: keep the Endpoints following the store
                logger.exception("following %s for the Endpoints failed", rt.plural)
                await asyncio.sleep(RETRY_PAUSE_S)
            with contextlib.suppress(Exception):
                since = await reload()

    async def _on_service(self, change: Change) -> None:
        key = (namespace_of(change.object), name_of(change.object))
        if change.type == "DELETED":
            self._drop_service(key)
            self._set_members(key, frozenset())
            await self._delete_endpoints(key)
            return
        spec = _parsed(change.object)
        if spec is None:
            self._drop_service(key)
            return
        self._set_service(spec)
        self._mark(key)

    def _set_service(self, spec: ServiceSpec) -> None:
        self._drop_service(spec.key)
        self._services[spec.key] = spec
        self._selecting.add(spec)

    def _drop_service(self, key: Key) -> None:
        old = self._services.pop(key, None)
        if old is not None:
            self._selecting.discard(old)

    async def _on_endpoints(self, change: Change) -> None:
        """Someone else changed or deleted managed Endpoints: put them right again."""
        key = (namespace_of(change.object), name_of(change.object))
        written = self._written.get(key)
        if change.type == "DELETED" or written is None or not _same(change.object, *written):
            self._mark(key)

    async def _follow_pods(self) -> None:
        # The worker lists pods only after this task suspends, that is after the watch
        # subscribed: no change falls between the list and the watch.
        await follow_pods(
            self._pods, on_start=self._mark_all, on_event=self._on_pod, what="the Endpoints"
        )

    def _on_pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        """Mark the Services that select the pod now, and those it was listed in (at once if
        it is leaving them)."""
        namespace = namespace_of(pod)
        for key in self._selecting.selecting(namespace, labels_of(pod)):
            self._mark(key)
        listed = self._member_of.get((namespace, name_of(pod)), ())
        if listed and _leaving(kind, pod):
            self._hurry.set()
        for key in listed:
            self._mark(key)

    def _set_members(self, key: Key, members: frozenset[str]) -> None:
        """Note the pods last listed for Service ``key`` (to mark it when one of them changes,
        whatever its labels say by then)."""
        old = self._members.pop(key, frozenset())
        if members:
            self._members[key] = members
        for pod in old - members:
            services = self._member_of.get((key[0], pod))
            if services is not None:
                services.discard(key)
                if not services:
                    del self._member_of[(key[0], pod)]
        for pod in members - old:
            self._member_of.setdefault((key[0], pod), set()).add(key)

    def _mark(self, key: Key) -> None:
        self._dirty.add(key)
        self._wake.set()

    def _mark_all(self) -> None:
        for key, service in self._services.items():
            if service.selector is not None:
                self._mark(key)

    # the work

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            if self._batch_period_s > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):  # the changes of a moment: one pass
                    async with asyncio.timeout(self._batch_period_s):
                        await self._hurry.wait()
            self._wake.clear()
            self._hurry.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                service = self._services.get(key)
                if service is None or service.selector is None:
                    self._set_members(key, frozenset())
                    continue
                try:
                    # only the selected pods are built: a cold start must not cost a Pod
                    # object of every instance in the namespace
                    pods = self._pods.list_pods(key[0], selector=dict(service.selector))
                    await self._sync(service, pods)
                except Exception:  # one Service's failure must not stop the others
                    logger.exception("updating the Endpoints of %s/%s failed", *key)
                    asyncio.get_running_loop().call_later(RETRY_PAUSE_S, self._mark, key)

    async def _sync(self, service: ServiceSpec, pods: list[dict[str, Any]]) -> None:
        subsets, members = subsets_for(service, pods)
        self._set_members(service.key, members)
        labels = dict(service.labels)
        if service.headless:
            labels[HEADLESS_LABEL] = ""
        try:
            current = await self._store.get(ENDPOINTS, *service.key)
        except NotFound:
            current = None
        if current is not None and _same(current, subsets, labels):
            return
        wanted: RawObject = {
            "metadata": {"name": service.name, "namespace": service.namespace, "labels": labels},
            "subsets": subsets,
        }
        if not subsets:
            del wanted["subsets"]
        self._written[service.key] = (subsets, labels)  # before: its watch event may come first
        try:
            if current is None:
                await self._store.create(ENDPOINTS, wanted)
            else:
                metadata_of(wanted)["resourceVersion"] = metadata_of(current)["resourceVersion"]
                await self._store.update(ENDPOINTS, wanted)
        except (AlreadyExists, Conflict, NotFound):
            self._written.pop(service.key, None)
            self._mark(service.key)  # someone wrote meanwhile: compute again from what is there

    async def _delete_endpoints(self, key: Key) -> None:
        self._written.pop(key, None)
        with contextlib.suppress(NotFound):
            await self._store.delete(ENDPOINTS, *key)


class SelectorIndex:
    """The Services with a selector, by namespace and the first label pair of their selector:
    a pod is looked up by its own label pairs, not tested against every Service."""

    def __init__(self) -> None:
        self._by_pair: dict[tuple[str, str, str], dict[Key, ServiceSpec]] = {}

    def add(self, service: ServiceSpec) -> None:
        if service.selector:
            self._by_pair.setdefault(_first_pair(service), {})[service.key] = service

    def discard(self, service: ServiceSpec) -> None:
        if not service.selector:
            return
        pair = _first_pair(service)
        services = self._by_pair.get(pair)
        if services is not None and services.pop(service.key, None) is not None and not services:
            del self._by_pair[pair]

    def selecting(self, namespace: str, labels: Mapping[str, str]) -> list[Key]:
        """The Services of ``namespace`` that select a pod with ``labels``."""
        return [
            key
            for label, value in labels.items()
            for key, service in self._by_pair.get((namespace, label, value), {}).items()
            if service.selects(labels)
        ]


def _first_pair(service: ServiceSpec) -> tuple[str, str, str]:
    assert service.selector
    label, value = service.selector[0]
    return (service.namespace, label, value)


def _leaving(kind: str, pod: Mapping[str, Any]) -> bool:
    """Whether a change takes a pod out of the ready addresses: deleted, terminating, or not
    ready (again)."""
    return (
        kind == "DELETED" or bool(metadata_of(pod).get("deletionTimestamp")) or not pod_ready(pod)
    )


def _same(
    current: Mapping[str, Any], subsets: list[dict[str, Any]], labels: dict[str, str]
) -> bool:
    return (current.get("subsets") or []) == subsets and labels_of(current) == labels


def _parsed(obj: RawObject) -> ServiceSpec | None:
    try:
        return parse_service(obj)
    except Invalid as exc:  # admitted objects parse; an older schema may not
        logger.warning("Service %s/%s is ignored: %s", namespace_of(obj), name_of(obj), exc)
        return None
