"""The workload supervisor: keeps each Deployment's replicas running, as processes.

``apply`` hands over a Deployment's current spec; the supervisor then starts and stops replicas
(``funcmesh.runtime.replicas``) until the plan of ``funcmesh.runtime.rollout`` says nothing is
left to do: scaling, rolling out a changed template, replacing a deleted pod (which gets a new
name and a new IP). Each change of a pod is published as a Pod watch event, and listeners (the
Deployment controller, for ``status``) hear which Deployment changed. Pods are named
``<deployment>-<template hash>-<5 random>`` and labelled ``pod-template-hash``.

Must not: read the store or Services (the controller passes specs and a service environment),
or block the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from funcmesh.model.deployments import HASH_ALPHABET, DeploymentSpec
from funcmesh.model.objects import RawObject
from funcmesh.runtime.replicas import Replica, ServiceEnv
from funcmesh.runtime.rollout import PodState, plan
from funcmesh.runtime.workload_context import WorkloadContext, deployment_log_name

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, deployment name)
SHUTDOWN_GRACE_S = 10.0  # when the daemon stops, a pod gets at most this long to exit


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaCounts:
    """What a Deployment's status reports."""

    replicas: int  # pods that are not terminating
    updated: int  # of those, pods of the current template
    ready: int
    available: int  # ready for at least minReadySeconds
    template_hash: str


def pod_name(deployment: str, template_hash: str) -> str:
    suffix = "".join(secrets.choice(HASH_ALPHABET) for _ in range(5))
    return f"{deployment}-{template_hash}-{suffix}"


class _Workload:
    """The replicas of one Deployment."""

    def __init__(self, spec: DeploymentSpec, service_env: ServiceEnv) -> None:
        self.spec = spec
        self.service_env = service_env
        self.replicas: dict[str, Replica] = {}
        self.removed = False

    def live(self) -> list[Replica]:
        return [r for r in self.replicas.values() if not r.terminating]

    def counts(self) -> ReplicaCounts:
        live, now = self.live(), time.monotonic()
        current = self.spec.template.hash
        return ReplicaCounts(
            replicas=len(live),
            updated=sum(1 for r in live if r.template.hash == current),
            ready=sum(1 for r in live if r.ready),
            available=sum(
                1
                for r in live
                if r.ready_since is not None and now - r.ready_since >= self.spec.min_ready_s
            ),
            template_hash=current,
        )


class Workloads:
    """Every Deployment's replicas; also the workload half of the API's PodSource."""

    def __init__(self, context: WorkloadContext) -> None:
        self._context = context
        self._workloads: dict[Key, _Workload] = {}
        self._listeners: list[Callable[[Key], None]] = []
        self._pending: set[Key] = set()
        self._closed = False

    # the Deployment controller's side

    def apply(self, spec: DeploymentSpec, *, service_env: ServiceEnv) -> None:
        """Run ``spec`` from now on (a new Deployment, or a new generation of one)."""
        if self._closed:
            return
        workload = self._workloads.get(spec.key)
        if workload is None or workload.removed:
            workload = self._workloads[spec.key] = _Workload(spec, service_env)
        workload.spec, workload.service_env = spec, service_env
        self._schedule(spec.key)

    async def remove(self, namespace: str, name: str) -> None:
        """Stop every pod of a deleted Deployment; returns when they are gone."""
        key = (namespace, name)
        workload = self._workloads.get(key)
        if workload is None or workload.removed:
            return
        workload.removed = True  # its pods show as Terminating until they are gone
        replicas = list(workload.replicas.values())
        for replica in replicas:
            replica.terminate()
        await asyncio.gather(*(r.gone.wait() for r in replicas))
        if self._workloads.get(key) is workload:
            del self._workloads[key]
            self._context.logbook.forget_function(namespace, deployment_log_name(name))

    def subscribe(self, listener: Callable[[Key], None]) -> Callable[[], None]:
        """``listener(key)`` after each change of a Deployment's pods; returns unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def counts(self, namespace: str, name: str) -> ReplicaCounts | None:
        workload = self._workloads.get((namespace, name))
        return None if workload is None else workload.counts()

    async def close(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stop every pod (SIGTERM; SIGKILL after at most ``grace_s``)."""
        self._closed = True
        replicas = [r for w in self._workloads.values() for r in w.replicas.values()]
        self._workloads.clear()
        for replica in replicas:
            replica.terminate()
        done = [asyncio.create_task(r.gone.wait()) for r in replicas]
        if done:
            _, late = await asyncio.wait(done, timeout=grace_s)
            for replica in replicas:
                if not replica.gone.is_set() and replica.process is not None:
                    replica.process.kill()
            await asyncio.gather(*late)

    # the API's side (through funcmesh.runtime.pod_sources)

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[RawObject]:
        """The Pods of the replicas (those whose template labels hold ``selector``, when
        given: only those are built)."""
        return [
            replica.pod_object()
            for replica in self._replicas(namespace)
            if selector is None
            or all(replica.template.labels.get(k) == v for k, v in selector.items())
        ]

    def find_pod(self, namespace: str, name: str) -> Replica | None:
        for replica in self._replicas(namespace):
            if replica.name == name:
                return replica
        return None

    def _replicas(self, namespace: str | None) -> list[Replica]:
        return [
            replica
            for (ns, _), workload in self._workloads.items()
            if namespace is None or ns == namespace
            for replica in workload.replicas.values()
        ]

    # reconciling

    def _schedule(self, key: Key) -> None:
        """Reconcile ``key`` soon, once, however many changes arrive meanwhile."""
        if key not in self._pending:
            self._pending.add(key)
            asyncio.get_running_loop().call_soon(self._reconcile, key)

    def _reconcile(self, key: Key) -> None:
        self._pending.discard(key)
        workload = self._workloads.get(key)
        if workload is None or workload.removed or self._closed:
            return
        spec = workload.spec
        current = spec.template.hash
        states = [
            PodState(
                name=r.name, current=r.template.hash == current, ready=r.ready, created=r.sequence
            )
            for r in workload.live()
        ]
        old_terminating = sum(
            1 for r in workload.replicas.values() if r.terminating and r.template.hash != current
        )
        todo = plan(
            states, replicas=spec.replicas, strategy=spec.strategy, old_terminating=old_terminating
        )
        for name in todo.stop:
            workload.replicas[name].terminate()
        for _ in range(todo.start):
            if not self._start_replica(workload):
                break

    def _start_replica(self, workload: _Workload) -> bool:
        spec = workload.spec
        name = pod_name(spec.name, spec.template.hash)
        while name in workload.replicas:
            name = pod_name(spec.name, spec.template.hash)
        try:
            replica = Replica(
                deployment=spec,
                name=name,
                context=self._context,
                service_env=lambda: workload.service_env(),
                on_change=lambda r: self._replica_changed(workload, r),
            )
        except Exception:
            logger.exception("cannot start a pod of deployment %s/%s", *spec.key)
            return False
        workload.replicas[replica.name] = replica
        self._context.on_pod_change("ADDED", replica.pod_object())
        replica.start()
        self._notify(spec.key)
        return True

    def _replica_changed(self, workload: _Workload, replica: Replica) -> None:
        key = workload.spec.key
        if replica.gone.is_set():
            if workload.replicas.pop(replica.name, None) is None:
                return
            self._context.on_pod_change("DELETED", replica.pod_object())
        else:
            self._context.on_pod_change("MODIFIED", replica.pod_object())
            min_ready_s = workload.spec.min_ready_s
            if replica.ready and min_ready_s > 0:  # available only after minReadySeconds
                asyncio.get_running_loop().call_later(min_ready_s, self._notify, key)
        if not workload.removed:
            self._schedule(key)
            self._notify(key)

    def _notify(self, key: Key) -> None:
        for listener in list(self._listeners):
            try:
                listener(key)
            except Exception:  # one broken listener must not stop the others
                logger.exception("a workload listener failed on %s/%s", *key)
