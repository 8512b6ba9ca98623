"""Triggers go with their function: deleting a Function deletes the HTTPTriggers naming it.

Kubeless's trigger controllers did this (kubeless.md 5.4). On start, triggers whose Function
went away while the daemon was down are deleted too. (Cron triggers do the same in their own
controller, which also has to stop their schedules.) This controller only deletes objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from funcmesh.errors import NotFound
from funcmesh.model.kinds import FUNCTION, HTTP_TRIGGER, ResourceType
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)


class TriggerCascade:
    """Deletes triggers whose ``spec.function-name`` names a Function that no longer exists."""

    def __init__(self, store: Store, *, kinds: Sequence[ResourceType] = (HTTP_TRIGGER,)) -> None:
        self._store = store
        self._kinds = tuple(kinds)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        since = await self._delete_orphans()
        self._task = asyncio.create_task(self._follow(since), name="trigger-cascade")

    async def _delete_orphans(self) -> int:
        """Delete triggers without a Function; the resourceVersion to watch from."""
        functions, since = await self._store.list_objects(FUNCTION)
        existing = {(namespace_of(f), name_of(f)) for f in functions}
        for rt in self._kinds:
            triggers, _ = await self._store.list_objects(rt)
            for trigger in triggers:
                if (namespace_of(trigger), _function_of(trigger)) not in existing:
                    await self._delete(rt, trigger)
        return since

    async def _follow(self, since: int) -> None:
        while True:
            async for change in self._store.watch(FUNCTION, None, since):
                since = change.resource_version
                if change.type == "DELETED":
                    namespace, name = namespace_of(change.object), name_of(change.object)
                    await self._delete_triggers_of(namespace, name)
            logger.warning("the watch of functions ended early; checking triggers again")
            since = await self._delete_orphans()

    async def _delete_triggers_of(self, namespace: str, function: str) -> None:
        for rt in self._kinds:
            triggers, _ = await self._store.list_objects(rt, namespace)
            for trigger in triggers:
                if _function_of(trigger) == function:
                    await self._delete(rt, trigger)

    async def _delete(self, rt: ResourceType, trigger: RawObject) -> None:
        namespace, name = namespace_of(trigger), name_of(trigger)
        logger.info(
            "deleting %s %s/%s: function %s is gone",
            rt.kind,
            namespace,
            name,
            _function_of(trigger),
        )
        with contextlib.suppress(NotFound):
            await self._store.delete(rt, namespace, name)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _function_of(trigger: RawObject) -> str:
    spec = trigger.get("spec")
    return str(spec.get("function-name") or "") if isinstance(spec, dict) else ""
