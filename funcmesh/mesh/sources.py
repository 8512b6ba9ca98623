"""Which workload a call comes from, known by the caller's pod IP (Istio's ``source_workload``,
``source_workload_namespace``, ``source_app``, ``source_version``).

The worker shims make a function's connections to loopback addresses (ClusterIPs, pod IPs,
the gateway) leave from the instance's own pod IP, so a client connection's peer address
names the pod that opened it. ``PodAddresses`` keeps pod IP -> ``WorkloadSource`` for every
pod of the daemon (function instances and workload replicas), from their list and then their
changes; the gateway asks it once per client connection, a dictionary lookup.

Must not: decide access. An address is no credential (any local process can bind one):
AuthorizationPolicy reads principals and namespaces from certificates only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from funcmesh.discovery.pod_watch import PodSource, follow_pods
from funcmesh.mesh.telemetry import UNKNOWN

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSource:
    """The workload a pod belongs to, as Istio's metrics name a call's source."""

    workload: str  # the Function's or the Deployment's name (a pod without owner: its own)
    namespace: str
    app: str = UNKNOWN  # the pod's ``app`` label
    version: str = UNKNOWN  # its ``version`` label


class SourceLookup(Protocol):
    """Pod IP -> the workload of that pod; None for an address that is no pod's."""

    def source_of(self, ip: str) -> WorkloadSource | None: ...


def source_of_pod(pod: Mapping[str, Any]) -> WorkloadSource:
    """The workload of a Pod: its controlling owner's name (a Function or a Deployment),
    else the pod's own name."""
    metadata = pod.get("metadata") or {}
    owners = metadata.get("ownerReferences") or ()
    labels = metadata.get("labels") or {}
    workload = next((str(owner["name"]) for owner in owners if owner.get("name")), "")
    return WorkloadSource(
        workload=workload or str(metadata.get("name", UNKNOWN)),
        namespace=str(metadata.get("namespace", UNKNOWN)),
        app=str(labels.get("app") or UNKNOWN),
        version=str(labels.get("version") or UNKNOWN),
    )


class PodAddresses:
    """Pod IP -> WorkloadSource of every pod, kept up to date from a PodSource."""

    def __init__(self, pods: PodSource) -> None:
        self._pods = pods
        self._by_ip: dict[str, tuple[str, WorkloadSource]] = {}  # ip -> (pod key, source)
        self._task: asyncio.Task[None] | None = None

    def source_of(self, ip: str) -> WorkloadSource | None:
        found = self._by_ip.get(ip)
        return None if found is None else found[1]

    def start(self) -> None:
        """Follow the pods from now on (their list first, taken as the watch starts)."""
        self._task = asyncio.create_task(self._follow(), name="pod-addresses")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self) -> None:
        await follow_pods(
            self._pods, on_start=self._list, on_event=self._on_pod, what="their addresses"
        )

    def _list(self) -> None:
        self._by_ip = {}
        for pod in self._pods.list_pods(None):
            self._on_pod("ADDED", pod)

    def _on_pod(self, kind: str, pod: Mapping[str, Any]) -> None:
        ip = str((pod.get("status") or {}).get("podIP") or "")
        if not ip:
            return
        metadata = pod.get("metadata") or {}
        key = f"{metadata.get('namespace')}/{metadata.get('name')}"
        if kind == "DELETED":
            found = self._by_ip.get(ip)
            if found is not None and found[0] == key:  # not a new pod that got the address
                del self._by_ip[ip]
            return
        self._by_ip[ip] = (key, source_of_pod(pod))
