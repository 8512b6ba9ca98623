"""Where the objects of a resource come from: the store, or a provider for derived kinds (Pods).

``ObjectSource`` is the read seam the CRUD and watch handlers use; ``StoredObjects`` adds the
writes. Writes are shielded from cancellation: aiohttp cancels a handler when its client goes
away, and a change the store has committed must still reach the watch feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from funcmesh.api.providers import PodSource
from funcmesh.api.streams import close_iterator
from funcmesh.errors import NotFound
from funcmesh.model.kinds import ALL, NAMESPACE, ResourceType
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.store.sqlite import Store

WatchEvent = tuple[str, RawObject]  # (ADDED|MODIFIED|DELETED, object)


class ObjectSource(Protocol):
    async def list_objects(
        self, rt: ResourceType, namespace: str | None
    ) -> tuple[list[RawObject], str]:
        """Objects in namespace-then-name order, and the resourceVersion of the list."""
        ...

    async def get(self, rt: ResourceType, namespace: str, name: str) -> RawObject: ...

    def watch(
        self, rt: ResourceType, namespace: str | None, since: int
    ) -> AsyncIterator[WatchEvent]:
        """Changes after resourceVersion ``since``; may raise Gone when it is too old."""
        ...


class StoredObjects:
    """Objects in the store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def resource_version(self) -> int:
        return self._store.resource_version

    async def list_objects(
        self, rt: ResourceType, namespace: str | None
    ) -> tuple[list[RawObject], str]:
        objects, rv = await self._store.list_objects(rt, namespace)
        return objects, str(rv)

    async def get(self, rt: ResourceType, namespace: str, name: str) -> RawObject:
        return await self._store.get(rt, namespace, name)

    async def watch(
        self, rt: ResourceType, namespace: str | None, since: int
    ) -> AsyncIterator[WatchEvent]:
        changes = self._store.watch(rt, namespace, since)
        try:
            async for change in changes:
                yield change.type, change.object
        finally:
            await close_iterator(changes)

    async def create(self, rt: ResourceType, obj: RawObject) -> RawObject:
        return await asyncio.shield(self._store.create(rt, obj))

    async def update(self, rt: ResourceType, obj: RawObject, *, status_only: bool) -> RawObject:
        return await asyncio.shield(self._store.update(rt, obj, status_only=status_only))

    async def delete(
        self, rt: ResourceType, namespace: str, name: str, *, resource_version: str | None
    ) -> RawObject:
        if rt == NAMESPACE:
            await self._delete_namespace_contents(name)
        deleting = self._store.delete(rt, namespace, name, resource_version=resource_version)
        return await asyncio.shield(deleting)

    async def _delete_namespace_contents(self, namespace: str) -> None:
        """Delete everything stored in the namespace (before the namespace itself, so a crash
        half-way leaves a namespace that can be deleted again)."""
        await self._store.get(NAMESPACE, "", namespace)  # NotFound before anything is deleted
        for rt in ALL:
            if not rt.namespaced or rt.read_only:
                continue
            objects, _ = await self._store.list_objects(rt, namespace)
            for obj in objects:
                try:
                    await asyncio.shield(self._store.delete(rt, namespace, name_of(obj)))
                except NotFound:
                    continue  # deleted meanwhile


class PodObjects:
    """The read-only Pod view of running instances."""

    def __init__(self, pods: PodSource, *, resource_version: Callable[[], int]) -> None:
        self._pods = pods
        self._resource_version = resource_version

    async def list_objects(
        self, rt: ResourceType, namespace: str | None
    ) -> tuple[list[RawObject], str]:
        """Pods have no versions of their own; the list carries the store's, so that a watch
        from it means "changes from now on" (``0`` would ask for the current pods again)."""
        pods = self._pods.list_pods(namespace)
        pods.sort(key=lambda pod: (namespace_of(pod), name_of(pod)))
        return pods, str(max(1, self._resource_version()))

    async def get(self, rt: ResourceType, namespace: str, name: str) -> RawObject:
        return self._pods.get_pod(namespace, name)

    def watch(
        self, rt: ResourceType, namespace: str | None, since: int
    ) -> AsyncIterator[WatchEvent]:
        return self._pods.watch_pods(namespace)  # pods have no history to resume from
