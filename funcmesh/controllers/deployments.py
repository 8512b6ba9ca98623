"""The Deployment controller: stored Deployments into running replicas, and back into status.

Every stored Deployment (on start, then each new generation from the watch) goes to the
workload supervisor with a service environment: the Kubernetes service links
(``<NAME>_SERVICE_HOST``, ``<NAME>_SERVICE_PORT``, ``<NAME>_PORT_<P>_TCP...``) of the Services
in its namespace at the moment each process starts, read from the ServiceTable. A deleted
Deployment's pods are stopped. Whenever the supervisor says a Deployment's pods changed, its
``status`` (replicas, updatedReplicas, readyReplicas, availableReplicas, observedGeneration,
the Available and Progressing conditions) is computed and written, status only, when it
differs from the last one written. After a restart of the daemon every Deployment starts again
with new pods.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Mapping
from typing import Any

from funcmesh.discovery.service_env import service_environment
from funcmesh.discovery.services import ServiceTable
from funcmesh.errors import FuncmeshError, Invalid, NotFound
from funcmesh.model.conditions import set_condition
from funcmesh.model.deployments import DeploymentSpec, parse_deployment
from funcmesh.model.kinds import DEPLOYMENT
from funcmesh.model.objects import RawObject, metadata_of, name_of, namespace_of
from funcmesh.runtime.workloads import ReplicaCounts, Workloads
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]


def deployment_status(
    obj: RawObject, spec: DeploymentSpec, counts: ReplicaCounts, *, overdue: bool
) -> dict[str, Any]:
    """The status of a Deployment with these pods; ``overdue``: its rollout took longer than
    ``progressDeadlineSeconds``."""
    status: dict[str, Any] = copy.deepcopy(obj.get("status") or {})
    desired = spec.replicas
    status.update(
        observedGeneration=spec.generation,
        replicas=counts.replicas,
        updatedReplicas=counts.updated,
        readyReplicas=counts.ready,
        availableReplicas=counts.available,
        unavailableReplicas=max(0, desired - counts.available),
    )
    enough = counts.available >= desired - spec.strategy.unavailable(desired)
    set_condition(
        status,
        "Available",
        ok=enough,
        reason="MinimumReplicasAvailable" if enough else "MinimumReplicasUnavailable",
        message=f"Deployment {'has' if enough else 'does not have'} minimum availability.",
    )
    replica_set = f'ReplicaSet "{spec.name}-{spec.template.hash}"'
    if rolled_out(spec, counts):
        progress = (True, "NewReplicaSetAvailable", f"{replica_set} has successfully progressed.")
    elif overdue:
        progress = (False, "ProgressDeadlineExceeded", f"{replica_set} has timed out progressing.")
    else:
        progress = (True, "ReplicaSetUpdated", f"{replica_set} is progressing.")
    ok, reason, message = progress
    set_condition(status, "Progressing", ok=ok, reason=reason, message=message)
    return status


def rolled_out(spec: DeploymentSpec, counts: ReplicaCounts) -> bool:
    desired = spec.replicas
    return counts.updated == desired == counts.replicas and counts.available >= desired


class DeploymentController:
    """Runs every stored Deployment and keeps its status current."""

    def __init__(
        self, *, store: Store, workloads: Workloads, services: ServiceTable | None = None
    ) -> None:
        self._store = store
        self._workloads = workloads
        self._services = services
        self._objects: dict[Key, RawObject] = {}
        self._specs: dict[Key, DeploymentSpec] = {}
        self._rollouts: dict[Key, tuple[str, float]] = {}  # template hash, began (monotonic)
        self._dirty: set[Key] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._unsubscribe = workloads.subscribe(self._mark)

    async def start(self) -> None:
        since = await self._resync()
        self._guard(self._follow(since), "deployments-watch")
        self._guard(self._write(), "deployments-status")

    async def close(self) -> None:
        self._unsubscribe()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # desired state

    async def _resync(self) -> int:
        """Run every stored Deployment and stop the ones that are gone; the version to watch
        from."""
        objects, since = await self._store.list_objects(DEPLOYMENT)
        stored = {(namespace_of(o), name_of(o)): o for o in objects}
        for key in set(self._objects) - set(stored):
            self._forget(key)
        for obj in objects:
            self._offer(obj)
        return since

    async def _follow(self, since: int) -> None:
        while True:
            async for change in self._store.watch(DEPLOYMENT, None, since):
                since = change.resource_version
                self._on_change(change)
            logger.warning("the watch of deployments ended early; listing them again")
            since = await self._resync()

    def _on_change(self, change: Change) -> None:
        key = (namespace_of(change.object), name_of(change.object))
        if change.type == "DELETED":
            self._forget(key)
        else:
            self._offer(change.object)

    def _offer(self, obj: RawObject) -> None:
        key = (namespace_of(obj), name_of(obj))
        self._objects[key] = obj
        generation = int(metadata_of(obj).get("generation") or 1)
        known = self._specs.get(key)
        if known is not None and known.generation == generation:
            return  # a status write, or a label change: nothing to run differently
        try:
            spec = parse_deployment(obj)
        except Invalid as exc:
            logger.warning("deployment %s/%s cannot run: %s", *key, exc)
            return
        self._specs[key] = spec
        namespace = spec.namespace
        self._workloads.apply(spec, service_env=lambda: self._service_env(namespace))
        self._mark(key)

    def _service_env(self, namespace: str) -> Mapping[str, str]:
        return service_environment(self._services, namespace)

    def _forget(self, key: Key) -> None:
        self._objects.pop(key, None)
        self._specs.pop(key, None)
        self._rollouts.pop(key, None)
        self._guard(self._workloads.remove(*key), f"deployment-{key[0]}-{key[1]}-removal")

    # status

    def _mark(self, key: Key) -> None:
        self._dirty.add(key)
        self._wake.set()

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                try:
                    await self._write_status(key)
                except FuncmeshError as exc:
                    logger.warning("status of deployment %s/%s: %s", *key, exc)

    async def _write_status(self, key: Key) -> None:
        obj, spec = self._objects.get(key), self._specs.get(key)
        counts = self._workloads.counts(*key)
        if obj is None or spec is None or counts is None:
            return
        status = deployment_status(obj, spec, counts, overdue=self._overdue(key, spec, counts))
        if status == obj.get("status"):
            return
        update = {"metadata": {**metadata_of(obj), "resourceVersion": None}, "status": status}
        with contextlib.suppress(NotFound):  # deleted meanwhile
            self._objects[key] = await self._store.update(DEPLOYMENT, update, status_only=True)

    def _overdue(self, key: Key, spec: DeploymentSpec, counts: ReplicaCounts) -> bool:
        """Whether the rollout of the current template has passed its deadline; schedules a
        status check for the moment it will."""
        if rolled_out(spec, counts):
            self._rollouts.pop(key, None)
            return False
        began = self._rollouts.get(key)
        if began is None or began[0] != spec.template.hash:
            began = self._rollouts[key] = (spec.template.hash, time.monotonic())
            loop = asyncio.get_running_loop()
            loop.call_later(spec.progress_deadline_s + 0.01, self._mark, key)
        return time.monotonic() - began[1] >= spec.progress_deadline_s

    def _guard(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("%s failed", name, exc_info=finished.exception())

        task.add_done_callback(done)
