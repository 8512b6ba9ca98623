"""The Ready condition of every VirtualService: False while a destination does not exist.

A VirtualService may name a host before its Service exists, as in Istio: it is stored, and its
calls to that host are answered 503 ``no healthy upstream``. This controller says so where a
user looks (``kubectl get virtualservice -o yaml``, ``funcmesh describe``)::

    status:
      conditions:
      - type: Ready
        status: "False"
        reason: DestinationNotFound
        message: "no Service for nowhere.default.svc.cluster.local"

and turns it True (``reason: Resolved``) once every destination host that names a cluster
Service has one. Outside hosts (not ``*.svc.cluster.local``) are not checked. It follows the
mesh table and the Service table (both in memory) and writes a status only when it changed,
after a short pause that gathers a burst of changes into one pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from funcmesh.discovery.services import ServiceTable
from funcmesh.errors import Conflict, NotFound
from funcmesh.mesh.table import MeshTable
from funcmesh.model.conditions import find_condition, set_condition
from funcmesh.model.kinds import VIRTUAL_SERVICE
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

SETTLE_S = 0.1  # how long a pass waits for more changes after the first one


class VirtualServiceStatus:
    """Keeps the Ready condition of the stored VirtualServices current."""

    def __init__(self, *, store: Store, mesh: MeshTable, services: ServiceTable) -> None:
        self._store = store
        self._mesh = mesh
        self._services = services
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._written: dict[tuple[str, str], tuple[bool, str]] = {}
        self._unsubscribe = [mesh.subscribe(self._changed), services.subscribe(self._changed)]

    def start(self) -> None:
        self._wake.set()
        self._task = asyncio.create_task(self._run(), name="virtual-service-status")

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _changed(self, *_: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(SETTLE_S)
            self._wake.clear()
            try:
                await self._pass()
            except Exception:  # the task's boundary: try again at the next change
                logger.exception("updating the status of VirtualServices failed")

    async def _pass(self) -> None:
        exists = self._service_exists
        seen = set()
        for spec in list(self._mesh.virtual_services()):
            key = (spec.namespace, spec.name)
            seen.add(key)
            missing = self._mesh.unknown_destinations(spec.namespace, spec.name, exists)
            message = "no Service for " + ", ".join(missing) if missing else ""
            wanted = (not missing, message)
            if self._written.get(key) != wanted:
                await self._write(key, ok=not missing, message=message)
                self._written[key] = wanted
        for key in set(self._written) - seen:
            del self._written[key]

    def _service_exists(self, namespace: str, name: str) -> bool:
        return self._services.service(namespace, name) is not None

    async def _write(self, key: tuple[str, str], *, ok: bool, message: str) -> None:
        namespace, name = key
        try:
            current = await self._store.get(VIRTUAL_SERVICE, namespace, name)
        except NotFound:
            return
        status = dict(current.get("status") or {})
        old = find_condition(status, "Ready")
        reason = "Resolved" if ok else "DestinationNotFound"
        value = "True" if ok else "False"
        if old and (old.get("status"), old.get("reason"), old.get("message")) == (
            value,
            reason,
            message,
        ):
            return
        set_condition(status, "Ready", ok=ok, reason=reason, message=message)
        update = {
            "metadata": {**current["metadata"], "resourceVersion": None},
            "status": status,
        }
        with contextlib.suppress(NotFound, Conflict):
            await self._store.update(VIRTUAL_SERVICE, update, status_only=True)
