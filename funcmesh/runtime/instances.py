"""One running instance of a function, the lease a caller holds on it, and its Pod view.

An instance is a worker process (forked from a zygote, or a specialised Node.js spare) serving
HTTP on its own pod IP. The pool owns instances; callers (the gateway) hold a Lease for exactly
one call and give it back with ``release``, and wait for one in a QueuedCall when every
instance is busy. When an instance ends, ``exit_reason`` says why in words a user understands.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from funcmesh.errors import FuncmeshError
from funcmesh.model.function import Scaling
from funcmesh.model.objects import rfc3339
from funcmesh.runtime.catalog import Runtime
from funcmesh.runtime.secret_files import SecretVolume

if TYPE_CHECKING:
    from funcmesh.runtime.pool import FunctionPool
    from funcmesh.runtime.workers import WorkerProcess

MEMORY_ERROR_EXIT_CODE = 213  # the worker shim exits with this after answering a MemoryError


@dataclass(frozen=True, slots=True, kw_only=True)
class Revision:
    """Everything needed to start instances of one generation of a function.

    Values read from Secrets stay out of ``repr`` (and so out of logs and tracebacks), and out
    of ``env``, which goes through the zygote: ``secret_env`` holds env values from Secret keys
    and ``secret_volumes`` the files a worker mounts in its private mount namespace, both handed
    to the worker directly (``funcmesh.runtime.secret_files``). ``secrets_dir`` is
    ``FUNCMESH_SECRETS_DIR`` (also in ``env``), None without secret volumes.
    """

    namespace: str
    name: str
    uid: str
    generation: int
    runtime: Runtime
    code_dir: Path
    sys_paths: tuple[str, ...]
    module: str
    handler: str
    env: tuple[tuple[str, str], ...]
    timeout_s: float
    memory_limit: str | None
    memory_limit_bytes: int | None
    labels: Mapping[str, str]
    scaling: Scaling
    template_hash: str
    secret_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    secret_volumes: tuple[SecretVolume, ...] = field(default=(), repr=False)
    secrets_dir: str | None = None
    service_links: bool = True  # the namespace's service variables in the environment
    service_account: str = "default"  # mesh identity: spiffe://cluster.local/ns/NS/sa/THIS


@dataclass(slots=True, kw_only=True)
class Instance:
    """A worker process and what the pool knows about it."""

    pod: str
    ip: str
    port: int
    revision: Revision
    uid: str
    process: WorkerProcess | None = None
    in_flight: int = 0
    started_at: float = field(default_factory=time.time)
    last_active: float = field(default_factory=time.monotonic)
    ready: bool = False
    draining: bool = False
    load_error: str | None = None
    stop_reason: str | None = None
    exit_reason: str | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def signal(self, sig: int) -> None:
        if self.process is not None and not self.exited.is_set():
            self.process.kill(sig)

    @property
    def pod_labels(self) -> dict[str, str]:
        return {**self.revision.labels, "function": self.revision.name}

    def pod_object(self) -> dict[str, Any]:
        """The read-only Pod the API shows for this instance."""
        revision = self.revision
        phase = "Succeeded" if self.exited.is_set() else "Running" if self.process else "Pending"
        ready = self.ready and not self.exited.is_set()
        state: dict[str, Any] = {"running": {"startedAt": rfc3339(self.started_at)}}
        if self.load_error:
            state = {"waiting": {"reason": "LoadFailed", "message": self.load_error}}
        elif self.exited.is_set():
            state = {"terminated": {"reason": self.exit_reason or "Completed"}}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.pod,
                "namespace": revision.namespace,
                "uid": self.uid,
                "creationTimestamp": rfc3339(self.started_at),
                "labels": self.pod_labels,
                "ownerReferences": [
                    {
                        "apiVersion": "kubeless.io/v1beta1",
                        "kind": "Function",
                        "name": revision.name,
                        "uid": revision.uid,
                    }
                ],
            },
            "spec": {
                "containers": [
                    {
                        "name": revision.name,
                        "image": f"funcmesh/{revision.runtime.id}",
                        "ports": [{"containerPort": self.port, "protocol": "TCP"}],
                    }
                ],
                "nodeName": socket.gethostname(),
                "serviceAccountName": revision.service_account,
            },
            "status": {
                "phase": phase,
                "podIP": self.ip,
                "podIPs": [{"ip": self.ip}],
                "hostIP": "127.0.0.1",
                "startTime": rfc3339(self.started_at),
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [
                    {"name": revision.name, "ready": ready, "restartCount": 0, "state": state}
                ],
            },
        }


def describe_exit(
    returncode: int, *, stop_reason: str | None, oom: bool, memory_limit: str | None
) -> str:
    """Why an instance ended, for error bodies and logs."""
    if oom or (returncode == MEMORY_ERROR_EXIT_CODE and memory_limit):
        return f"memory limit ({memory_limit}) exceeded"
    if stop_reason:
        return stop_reason
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with code {returncode}"


class Lease:
    """One call's hold on one instance; ``release`` exactly once."""

    __slots__ = ("_instance", "_pool", "_released")

    def __init__(self, pool: FunctionPool, instance: Instance) -> None:
        self._pool = pool
        self._instance = instance
        self._released = False

    @property
    def address(self) -> tuple[str, int]:
        return self._instance.ip, self._instance.port

    @property
    def instance_id(self) -> str:
        return self._instance.pod

    @property
    def timeout_s(self) -> float:
        return self._instance.revision.timeout_s

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._instance, ok=ok, duration_s=duration_s)

    def kill(self, reason: str) -> None:
        self._pool.kill(self._instance, reason)

    async def exit_reason(self, wait_s: float) -> str | None:
        try:
            await asyncio.wait_for(self._instance.exited.wait(), wait_s)
        except TimeoutError:
            return None
        return self._instance.exit_reason


class QueuedCall:
    """A call waiting in a function's queue with callbacks instead of a task (the gateway's
    fast path when every instance is busy: no task, no future, no coroutine per call).

    The pool treats it as a waiting future (``done``, ``deadline``, ``set_result``,
    ``set_exception``). Its lease or its error is handed over from the loop, soon after
    (never inside the ``release`` that freed the instance); a caller that left meanwhile
    (``cancel``) gets nothing, and the instance it was given goes back to the pool.
    """

    __slots__ = ("_cancelled", "_done", "_loop", "_on_error", "_on_lease", "_pool", "deadline")

    def __init__(
        self,
        pool: FunctionPool,
        on_lease: Callable[[Lease], None],
        on_error: Callable[[FuncmeshError], None],
        *,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._pool = pool
        self._on_lease = on_lease
        self._on_error = on_error
        self._loop = loop
        self._done = self._cancelled = False
        self.deadline = deadline  # time.monotonic() after which it fails with QueueFull

    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """The caller left: skip it in the queue, or give back what it was just handed."""
        self._done = self._cancelled = True

    def set_result(self, instance: Instance) -> None:
        self._done = True
        self._loop.call_soon(self._hand_over, instance)

    def set_exception(self, error: FuncmeshError) -> None:
        self._done = True
        self._loop.call_soon(self._fail, error)

    def _hand_over(self, instance: Instance) -> None:
        if self._cancelled:
            self._pool.give_back(instance)
        else:
            self._on_lease(Lease(self._pool, instance))

    def _fail(self, error: FuncmeshError) -> None:
        if not self._cancelled:
            self._on_error(error)
