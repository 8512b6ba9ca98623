"""What every worker starter shares: the spawn request, the started process, its load error.

A pool describes a new instance in a :class:`SpawnRequest`; a starter (the Python zygote,
``funcmesh.runtime.zygote``, or a Node.js spare, ``funcmesh.runtime.node``) turns it into a
:class:`WorkerProcess` whose futures say when the function has loaded (or why not, as a
:class:`WorkerLoadError`) and when the process exits. Starters mark such state futures with
:func:`retrieve_exception` and settle them with :func:`resolve`.

Must not: start or signal processes itself, create sockets, read os.environ, or block.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from funcmesh.errors import FuncmeshError
from funcmesh.runtime.mesh_credentials import MeshCredential

NO_VARIABLES: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnRequest:
    """Everything a forked worker needs to load one function instance.

    ``service_links`` are the Kubernetes service variables of the pod's namespace: one mapping
    shared by every instance there (the same object until a Service of the namespace changes),
    so a starter can hand it to its worker processes once instead of with every request.
    ``env`` is this instance's own environment and wins over them. ``credential`` is the mesh
    certificate of the instance's identity (None: it calls in plaintext): a descriptor the
    starter passes on, never the certificate itself (``funcmesh.runtime.mesh_credentials``).
    """

    pod_name: str
    namespace: str = ""
    module: str
    function: str
    function_name: str  # the Kubeless Function's name, shown as context["function-name"]
    code_dir: str
    sys_paths: tuple[str, ...]
    env: Mapping[str, str]
    service_links: Mapping[str, str] = field(default_factory=lambda: NO_VARIABLES)
    timeout_s: float
    runtime: str
    memory_limit: str  # as shown in context["memory-limit"]; "0" if none
    memory_limit_bytes: int | None = None
    use_rlimit: bool = False
    cgroup_procs: str | None = None
    uid: int | None = None
    gid: int | None = None
    credential: MeshCredential | None = field(default=None, repr=False, compare=False)

    def to_message(self) -> dict[str, Any]:
        """The request as the zygote reads it, without ``service_links`` (the zygote gets
        those in a message of their own) and ``credential`` (its descriptor goes with it)."""
        return {
            "op": "spawn",
            "pod_name": self.pod_name,
            "module": self.module,
            "function": self.function,
            "function_name": self.function_name,
            "code_dir": self.code_dir,
            "sys_paths": list(self.sys_paths),
            "env": dict(self.env),
            "timeout_s": self.timeout_s,
            "runtime": self.runtime,
            "memory_limit": self.memory_limit,
            "memory_limit_bytes": self.memory_limit_bytes,
            "use_rlimit": self.use_rlimit,
            "cgroup_procs": self.cgroup_procs,
            "uid": self.uid,
            "gid": self.gid,
        }


class WorkerLoadError(FuncmeshError):
    """The function's code did not load; ``error`` is the worker's one-line reason."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


class WorkerProcess:
    """One forked worker: its pid and two futures that follow it."""

    __slots__ = ("_signal", "exited", "pid", "pod_name", "ready")

    def __init__(
        self,
        *,
        pod_name: str,
        pid: int,
        ready: asyncio.Future[None],
        exited: asyncio.Future[int],
        signal_worker: Callable[[int, int], None],
    ) -> None:
        self.pod_name = pod_name
        self.pid = pid
        self.ready = ready  # None once loaded; WorkerLoadError or Unavailable if not
        self.exited = exited  # the return code (-N for signal N); Unavailable if the zygote died
        self._signal = signal_worker

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.pod_name} pid={self.pid}>"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the worker; nothing happens if it is gone already."""
        if not self.exited.done():
            self._signal(self.pid, sig)


def retrieve_exception(future: asyncio.Future[Any]) -> None:
    """These futures report state: an unobserved failure is not an error worth a log line."""
    if not future.cancelled():
        future.exception()


def resolve(future: asyncio.Future[None]) -> None:
    """Settle a state future unless it is settled: a reader or writer callback may fire again
    before it is removed."""
    if not future.done():
        future.set_result(None)
