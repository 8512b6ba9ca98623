"""The lives of one function's instances: start, launch, supervise, forget, stop.

The pool (``funcmesh.runtime.pool``) decides when an instance is needed and which call it
serves; this module gives it one. A start reserves a pod address through the runtime's starter
(``funcmesh.runtime.starters``), so callers can connect at once, fences the instance's memory,
hands the worker its ``SpawnRequest`` and forwards its log lines. Supervision follows the process
until it exits, says why in words a user understands, and gives its address and memory fence
back. Stopping is SIGTERM, then SIGKILL after ``STOP_GRACE_S``.

Must not: queue or route calls, decide how many instances to run, speak HTTP, or block.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from funcmesh.errors import FuncmeshError, Unavailable
from funcmesh.runtime.instances import Instance, Revision, describe_exit
from funcmesh.runtime.logs import LineSplitter
from funcmesh.runtime.mesh_credentials import MeshCredential
from funcmesh.runtime.starters import PendingWorker, WorkerStarter, ZygoteStarter
from funcmesh.runtime.stats import FunctionStats
from funcmesh.runtime.worker_env import linked_services, worker_environment
from funcmesh.runtime.workers import SpawnRequest, WorkerLoadError

if TYPE_CHECKING:
    from funcmesh.runtime.pool import PoolContext

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


class InstanceLifecycle:
    """The instances of one function by pod name, and the tasks that follow them.

    ``instances`` is for the pool to read; only this class adds or removes entries.
    ``on_exit`` runs after an instance has exited and been forgotten (the pool hands its
    waiting callers to the instances left).
    """

    def __init__(
        self,
        namespace: str,
        name: str,
        *,
        context: PoolContext,
        stats: FunctionStats,
        on_exit: Callable[[], None],
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.display_name = f"{namespace}/{name}"
        self.instances: dict[str, Instance] = {}
        self._context = context
        self._stats = stats
        self._on_exit = on_exit
        python = ZygoteStarter(
            addresses=context.addresses, zygotes=context.zygotes, port=context.worker_port
        )
        self._starters: dict[str, WorkerStarter] = {"python": python, **context.starters}
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, revision: Revision, *, reserved: bool = False) -> Instance:
        """Start a new instance; ``reserved`` counts the caller's call on it from the start."""
        context = self._context
        pending = self._starter(revision).reserve(revision)
        pod = f"{revision.name}-{revision.template_hash[:8]}-{secrets.token_hex(3)[:5]}"
        instance = Instance(
            pod=pod,
            ip=pending.ip,
            port=context.worker_port,
            revision=revision,
            uid=str(uuid.uuid4()),
            in_flight=1 if reserved else 0,
        )
        self.instances[pod] = instance
        self._stats.record_cold_start()
        try:
            await self._launch(instance, pending)
        except BaseException:
            self._forget(instance)
            raise
        self._stats.set_instances(len(self.instances))
        context.on_pod_change("ADDED", instance)
        return instance

    def _starter(self, revision: Revision) -> WorkerStarter:
        starter = self._starters.get(revision.runtime.language)
        if starter is None:
            raise Unavailable(f"funcmesh cannot start {revision.runtime.id} instances here")
        return starter

    async def _launch(self, instance: Instance, pending: PendingWorker) -> None:
        context, revision = self._context, instance.revision
        credentials = context.mesh_credentials
        credential = None  # made once per identity, then a dictionary lookup
        if credentials is not None:
            credential = await credentials.credential(revision.namespace, revision.service_account)
        fence = context.limiter.fence(instance.pod, revision.memory_limit_bytes)
        request = self._spawn_request(instance, fence.cgroup_procs, fence.use_rlimit, credential)
        started = await pending.start(request)
        instance.process = started.process
        sink = context.logbook.instance_sink(revision.namespace, revision.name, instance.pod)
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(started.log_read_fd, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: LineSplitter(sink), pipe)
        self.guard(self._supervise(instance))

    def _spawn_request(
        self,
        instance: Instance,
        cgroup_procs: str | None,
        use_rlimit: bool,
        credential: MeshCredential | None = None,
    ) -> SpawnRequest:
        revision = instance.revision
        return SpawnRequest(
            pod_name=instance.pod,
            namespace=revision.namespace,
            module=revision.module,
            function=revision.handler,
            function_name=revision.name,
            code_dir=str(revision.code_dir),
            sys_paths=revision.sys_paths,
            env=worker_environment(instance, dns_server=self._context.dns_server),
            service_links=linked_services(instance, self._context.service_env),
            timeout_s=revision.timeout_s,
            runtime=revision.runtime.id,
            memory_limit=revision.memory_limit or "0",
            memory_limit_bytes=revision.memory_limit_bytes,
            use_rlimit=use_rlimit,
            cgroup_procs=cgroup_procs,
            uid=self._context.worker_uid,
            gid=self._context.worker_gid,
            credential=credential,
        )

    async def _supervise(self, instance: Instance) -> None:
        process = instance.process
        assert process is not None
        try:
            await process.ready
            instance.ready = True
            instance.last_active = time.monotonic()  # idle time counts from being loaded
        except WorkerLoadError as exc:
            instance.load_error = str(exc)
            instance.last_active = time.monotonic()
            self._context.logbook.note(self.namespace, self.name, f"{instance.pod}: {exc}")
        except FuncmeshError:
            pass
        self._context.on_pod_change("MODIFIED", instance)
        try:
            returncode = await asyncio.shield(process.exited)
        except FuncmeshError:  # the zygote died, and the worker with it
            returncode = -signal.SIGKILL
        instance.exit_reason = describe_exit(
            returncode,
            stop_reason=instance.stop_reason,
            oom=self._context.limiter.breached(instance.pod),
            memory_limit=instance.revision.memory_limit,
        )
        self._context.logbook.note(
            self.namespace, self.name, f"instance {instance.pod} {instance.exit_reason}"
        )
        self._forget(instance)
        self._on_exit()

    def _forget(self, instance: Instance) -> None:
        if self.instances.pop(instance.pod, None) is None:
            return
        instance.exited.set()
        self._context.addresses.give_back(instance.ip)
        self._context.limiter.release(instance.pod)
        self._context.logbook.forget_pod(self.namespace, instance.pod)
        self._stats.set_instances(len(self.instances))
        if instance.process is not None:
            self._context.on_pod_change("DELETED", instance)

    def stop(self, instance: Instance, reason: str) -> None:
        """Ask an instance to finish (SIGTERM), and SIGKILL it if it does not in time."""
        instance.draining = True
        instance.stop_reason = instance.stop_reason or reason
        instance.signal(signal.SIGTERM)

        async def enforce() -> None:
            try:
                await asyncio.wait_for(instance.exited.wait(), STOP_GRACE_S)
            except TimeoutError:
                instance.signal(signal.SIGKILL)

        self.guard(enforce())

    def kill(self, instance: Instance, reason: str) -> None:
        """Stop an instance at once (after a timeout); its calls fail, new ones go elsewhere."""
        instance.draining = True
        instance.stop_reason = reason
        instance.signal(signal.SIGKILL)

    def guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that is kept, logged if it fails, and cancelled on close."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task of %s failed", self.display_name, exc_info=task.exception())

    async def cancel_tasks(self) -> None:
        """Cancel the tasks still running (supervisors, stop timers, starts) and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
