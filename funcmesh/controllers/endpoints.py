"""The endpoints controller: for every Service with a selector, an Endpoints object of the same
name listing its pods (model.endpoints.subsets_for), rewritten when a pod or the Service changes.

Pods come from a ``PodSource`` (function instances and workload replicas); Services and
Endpoints from the store. A pod change marks the Services it is or was part of; one worker
recomputes every marked Service from a fresh list of its namespace's pods and writes the
Endpoints only when they differ, so a readiness change reaches the store within milliseconds
and a burst of changes costs one pass. Services without a selector are left alone: their
Endpoints are the user's. When a Service is deleted its Endpoints go too, also those whose
Service went while the daemon was down (as Kubernetes' controller does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from funcmesh.errors import AlreadyExists, Conflict, Invalid, NotFound
from funcmesh.model.endpoints import subsets_for
from funcmesh.model.kinds import ENDPOINTS, SERVICE, ResourceType
from funcmesh.model.objects import RawObject, labels_of, metadata_of, name_of, namespace_of
from funcmesh.model.services import ServiceSpec, parse_service
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
HEADLESS_LABEL = "service.kubernetes.io/headless"
RETRY_PAUSE_S = 1.0


class PodSource(Protocol):
    """Pods as ``v1`` Pod dicts: all of them now, and their changes from now on."""

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]: ...

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(ADDED|MODIFIED|DELETED, pod)`` after the first ``__anext__``, until closed."""
        ...


class EndpointsController:
    """Keeps the Endpoints of every Service with a selector equal to its pods."""

    def __init__(self, *, store: Store, pods: PodSource) -> None:
        self._store = store
        self._pods = pods
        self._services: dict[Key, ServiceSpec] = {}
        self._members: dict[Key, frozenset[str]] = {}  # pod names last listed per Service
        self._written: dict[Key, tuple[list[dict[str, Any]], dict[str, str]]] = {}  # last write
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
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
        self._services = {}
        for obj in objects:
            if (spec := _parsed(obj)) is not None:
                self._services[spec.key] = spec
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
            self._services.pop(key, None)
            self._members.pop(key, None)
            await self._delete_endpoints(key)
            return
        spec = _parsed(change.object)
        if spec is None:
            self._services.pop(key, None)
            return
        self._services[key] = spec
        self._mark(key)

    async def _on_endpoints(self, change: Change) -> None:
        """Someone else changed or deleted managed Endpoints: put them right again."""
        key = (namespace_of(change.object), name_of(change.object))
        written = self._written.get(key)
        if change.type == "DELETED" or written is None or not _same(change.object, *written):
            self._mark(key)

    async def _follow_pods(self) -> None:
        while True:
            events = self._pods.watch_pods(None)
            try:
                # The worker lists pods only after this task suspends, that is after the
                # ``async for`` below subscribed: no change falls between the list and the watch.
                self._mark_all()
                async for kind, pod in events:
                    self._on_pod(kind, pod)
                logger.warning("the watch of pods ended; listing them again")
            except Exception:  # the task's boundary: keep following pods
                logger.exception("following pods for the Endpoints failed")
            finally:
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()
            await asyncio.sleep(RETRY_PAUSE_S)

    def _on_pod(self, _kind: str, pod: Mapping[str, Any]) -> None:
        namespace, name, labels = namespace_of(pod), name_of(pod), labels_of(pod)
        for key, service in self._services.items():
            if key[0] == namespace and (
                service.selects(labels) or name in self._members.get(key, ())
            ):
                self._mark(key)

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
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in sorted(dirty):
                service = self._services.get(key)
                if service is None or service.selector is None:
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
        self._members[service.key] = members
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
