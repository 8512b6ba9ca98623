"""Every Function has a Service of its name, as Kubeless gives it one; it goes with the Function.

The Service: port ``spec.service.ports[0].port`` of the Function (8080 by default, what
``function deploy --port`` sets) named ``http-function-port``, ``targetPort`` the port function
instances listen on, selector ``function: NAME``, the Function's labels plus ``function`` and
``created-by: kubeless``, and an ownerReference to the Function, by which the VIP listeners know
to call the function through the gateway (cold start included). Its ClusterIP comes from the
same allocator as any Service's. A Service of that name that the Function does not own is left
alone, with a Warning Event (Kubeless refused such a "conflicting" Service too). On start,
function Services whose Function went while the daemon was down are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Mapping
from typing import Any

from funcmesh.controllers.events import EventRecorder
from funcmesh.controllers.service_ips import ClusterIPs
from funcmesh.errors import AlreadyExists, Conflict, FuncmeshError, NotFound
from funcmesh.model.kinds import FUNCTION, SERVICE
from funcmesh.model.objects import RawObject, labels_of, metadata_of, name_of, namespace_of
from funcmesh.model.services import function_owner_of
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

PORT_NAME = "http-function-port"
DEFAULT_PORT = 8080
RETRY_PAUSE_S = 1.0


def function_service(function: Mapping[str, Any], *, target_port: int) -> RawObject:
    """The Service a Function gets (before admission gives it a ClusterIP)."""
    meta = metadata_of(function)
    name = name_of(function)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace_of(function) or "default",
            "labels": {**labels_of(function), "created-by": "kubeless", "function": name},
            "ownerReferences": [
                {
                    "apiVersion": FUNCTION.api_version,
                    "kind": FUNCTION.kind,
                    "name": name,
                    "uid": str(meta.get("uid") or ""),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "type": "ClusterIP",
            "ports": [
                {
                    "name": PORT_NAME,
                    "protocol": "TCP",
                    "port": service_port_of(function),
                    "targetPort": target_port,
                }
            ],
            "selector": {"function": name},
        },
    }


def service_port_of(function: Mapping[str, Any]) -> int:
    """``spec.service.ports[0].port`` when it is a valid port, else 8080."""
    try:
        port = function["spec"]["service"]["ports"][0]["port"]
    except (KeyError, IndexError, TypeError):
        return DEFAULT_PORT
    valid = isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535
    return port if valid else DEFAULT_PORT


class FunctionServices:
    """Creates, updates and deletes the Service of every Function."""

    def __init__(self, *, store: Store, ips: ClusterIPs, target_port: int) -> None:
        self._store = store
        self._ips = ips
        self._target_port = target_port
        self._events = EventRecorder(store)
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        since = await self._sync_all()
        self._watcher = asyncio.create_task(self._follow(since), name="function-services")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _sync_all(self) -> int:
        """Give every Function its Service and delete those of Functions that are gone."""
        functions, since = await self._store.list_objects(FUNCTION)
        for function in functions:
            await self._ensure_guarded(function)
        existing = {(namespace_of(f), name_of(f)) for f in functions}
        services, _ = await self._store.list_objects(SERVICE)
        for service in services:
            owner = function_owner_of(service)
            if owner is not None and (namespace_of(service), owner) not in existing:
                await self._delete(namespace_of(service), name_of(service), owner)
        return since

    async def _follow(self, since: int) -> None:
        while True:
            try:
                async for change in self._store.watch(FUNCTION, None, since):
                    since = change.resource_version
                    if change.type == "DELETED":
                        obj = change.object
                        await self._delete(namespace_of(obj), name_of(obj), name_of(obj))
                    else:
                        await self._ensure_guarded(change.object)
                logger.warning("the watch of functions ended early; checking their Services")
            except Exception:  # the task's boundary: keep following the Functions
                logger.exception("following functions for their Services failed")
                await asyncio.sleep(RETRY_PAUSE_S)
            with contextlib.suppress(Exception):
                since = await self._sync_all()

    async def _ensure_guarded(self, function: RawObject) -> None:
        try:
            await self._ensure(function)
        except (AlreadyExists, Conflict):
            pass  # written meanwhile by someone else: the next change of the Function retries
        except FuncmeshError as exc:
            key = namespace_of(function), name_of(function)
            logger.warning("the Service of function %s/%s was not written: %s", *key, exc)

    async def _ensure(self, function: RawObject) -> None:
        namespace, name = namespace_of(function) or "default", name_of(function)
        wanted = function_service(function, target_port=self._target_port)
        try:
            current = await self._store.get(SERVICE, namespace, name)
        except NotFound:
            await self._store.create(SERVICE, self._ips.admit(wanted, None))
            logger.info("created the Service of function %s/%s", namespace, name)
            return
        if function_owner_of(current) != name:
            message = f'a Service "{name}" that the function does not own exists: left alone'
            await self._events.record(
                function, warning=True, reason="ServiceConflict", message=message
            )
            return
        updated = _updated(current, wanted)
        if updated is not None:
            await self._store.update(SERVICE, self._ips.admit(updated, current))

    async def _delete(self, namespace: str, name: str, function: str) -> None:
        try:
            current = await self._store.get(SERVICE, namespace, name)
        except NotFound:
            return
        if function_owner_of(current) != function:
            return
        logger.info("deleting the Service of function %s/%s", namespace, function)
        with contextlib.suppress(NotFound):
            await self._store.delete(
                SERVICE, namespace, name, resource_version=metadata_of(current)["resourceVersion"]
            )


def _updated(current: RawObject, wanted: RawObject) -> RawObject | None:
    """``current`` with the labels, owner, ports and selector of ``wanted``; None if equal."""
    updated = copy.deepcopy(current)
    meta, wanted_meta = metadata_of(updated), metadata_of(wanted)
    meta["labels"] = wanted_meta["labels"]
    meta["ownerReferences"] = wanted_meta["ownerReferences"]
    spec = updated.setdefault("spec", {})
    for field in ("ports", "selector"):
        spec[field] = wanted["spec"][field]
    current_spec = current.get("spec") or {}
    if (
        labels_of(current) == meta["labels"]
        and metadata_of(current).get("ownerReferences") == meta["ownerReferences"]
        and current_spec.get("ports") == spec["ports"]
        and current_spec.get("selector") == spec["selector"]
    ):
        return None
    return updated
