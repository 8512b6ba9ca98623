"""Every pod of the daemon in one place: function instances and workload replicas.

``PodDirectory`` is the API's PodSource and what the endpoints controller reads: it lists and
finds pods of both kinds, streams their changes (both publish to the same ``PodEvents``) and
deletes them. Deleting a workload pod stops its process and its Deployment starts a
replacement with a new name and IP; deleting a function pod stops that instance (at once when
it is idle, after its calls otherwise). ``delete_pod`` waits, for a bounded time, until the pod
is gone, so that a client that looks right after the delete (``kubectl delete`` waits with a
list and a watch) does not miss the end.

Must not: decide how many pods run; that is the pools' and the supervisor's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from funcmesh.errors import NotFound
from funcmesh.model.objects import RawObject, labels_of, name_of, namespace_of, rfc3339
from funcmesh.runtime.instances import Instance
from funcmesh.runtime.pools import PodEvents, Pools
from funcmesh.runtime.workloads import Workloads

DELETE_WAIT_S = 5.0  # how long DELETE waits for a pod to be gone before it answers


class PodDirectory:
    """Function pods and workload pods, as one read/delete view."""

    def __init__(
        self,
        *,
        functions: Pools,
        workloads: Workloads,
        events: PodEvents,
        delete_wait_s: float = DELETE_WAIT_S,
    ) -> None:
        self._functions = functions
        self._workloads = workloads
        self._events = events
        self._delete_wait_s = delete_wait_s

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[RawObject]:
        pods = self._functions.list_pods(namespace, selector=selector)
        pods += self._workloads.list_pods(namespace, selector=selector)
        return sorted(pods, key=lambda pod: (namespace_of(pod), name_of(pod)))

    def get_pod(self, namespace: str, name: str) -> RawObject:
        replica = self._workloads.find_pod(namespace, name)
        if replica is not None:
            return replica.pod_object()
        return self._functions.get_pod(namespace, name)

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._events.follow(namespace)

    def pod_labels(self, namespace: str, name: str) -> Mapping[str, str] | None:
        """The labels of a pod (what mesh subsets select), or None when there is no such pod."""
        try:
            return labels_of(self.get_pod(namespace, name))
        except NotFound:
            return None

    async def delete_pod(self, namespace: str, name: str) -> RawObject:
        """Stop the pod; its last view (with ``deletionTimestamp``). Raises NotFound."""
        replica = self._workloads.find_pod(namespace, name)
        if replica is not None:
            replica.terminate()
            deleted = replica.pod_object()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(replica.gone.wait()), self._delete_wait_s)
            return deleted
        instance = self._function_instance(namespace, name)
        deleted = instance.pod_object()
        deleted["metadata"]["deletionTimestamp"] = rfc3339(time.time())
        self._stop_instance(namespace, instance)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(instance.exited.wait()), self._delete_wait_s)
        return deleted

    def _function_instance(self, namespace: str, name: str) -> Instance:
        pod = self._functions.get_pod(namespace, name)  # NotFound for a pod of neither kind
        pool = self._functions.lookup(namespace, labels_of(pod).get("function", ""))
        for instance in pool.instances if pool is not None else []:
            if instance.pod == name:
                return instance
        raise NotFound(f'pods "{name}" not found')

    def _stop_instance(self, namespace: str, instance: Instance) -> None:
        """Idle: stopped now. Busy: draining, so the pool stops it after its last call."""
        pool = self._functions.lookup(namespace, instance.revision.name)
        if pool is None:
            return
        if instance.in_flight == 0:
            pool.kill(instance, "the pod was deleted")
        else:
            instance.draining = True
            instance.stop_reason = "the pod was deleted"
