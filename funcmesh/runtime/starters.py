"""How a new instance gets its process: the seam between a pool and a language's runtime.

A pool starts an instance in two steps. ``WorkerStarter.reserve`` is synchronous: it returns a
``PendingWorker`` whose pod address accepts connections already (a listening socket is bound),
so the pool can register the instance and hand it to callers at once; the kernel holds their
connections until the worker accepts. ``PendingWorker.start`` then gives the worker its function
and returns once the process exists; its ``ready`` future says when the function has loaded.

Python instances are forked from the runtime's zygote (:class:`ZygoteStarter`, here); Node.js
instances come from pre-started spare processes (``funcmesh.runtime.node``). A revision's Secret
values (env from Secret keys, volumes to mount) go to the worker in a memfd beside the request,
never in it (``funcmesh.runtime.secret_files``). This module must not decide limits or
identities (the pool puts them in the ``SpawnRequest``), read worker output, or speak HTTP.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Protocol

from funcmesh.errors import Unavailable
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.secret_files import payload_fd, secrets_payload
from funcmesh.runtime.workers import SpawnRequest, WorkerProcess
from funcmesh.runtime.zygote import Zygote

LISTEN_BACKLOG = 1024
BIND_ATTEMPTS = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedWorker:
    """A worker process that exists, and the read end of its stdout/stderr pipe (now yours)."""

    process: WorkerProcess
    log_read_fd: int


class PendingWorker(Protocol):
    """A new instance's pod address, accepting connections already; its process is not
    serving yet."""

    @property
    def ip(self) -> str: ...

    async def start(self, request: SpawnRequest) -> StartedWorker:
        """Give the worker its function; returns once the process exists (``ready`` tells
        when it serves). Call it once, right after ``reserve``: on failure it releases what it
        holds, except the address, which the pool gives back."""
        ...


class WorkerStarter(Protocol):
    """Starts the instances of one language."""

    def reserve(self, revision: Revision) -> PendingWorker:
        """A pod address for a new instance of ``revision``; raises Unavailable."""
        ...


class ZygoteSource(Protocol):
    """Where pools get a running zygote for an interpreter (restarted when one died)."""

    async def zygote_for(self, interpreter: str) -> Zygote: ...


class ZygoteStarter:
    """Python instances: the pod address is bound here and the worker forked from the zygote."""

    def __init__(self, *, addresses: AddressPool, zygotes: ZygoteSource, port: int) -> None:
        self._addresses = addresses
        self._zygotes = zygotes
        self._port = port

    def reserve(self, revision: Revision) -> PendingWorker:
        ip, listener = bind_pod_address(self._addresses, self._port)
        interpreter = str(revision.runtime.executable)
        return _ZygoteFork(
            ip=ip,
            listener=listener,
            zygotes=self._zygotes,
            interpreter=interpreter,
            revision=revision,
        )


class _ZygoteFork:
    """A bound pod address waiting for the zygote to fork its worker."""

    def __init__(
        self,
        *,
        ip: str,
        listener: socket.socket,
        zygotes: ZygoteSource,
        interpreter: str,
        revision: Revision,
    ) -> None:
        self.ip = ip
        self._listener = listener
        self._zygotes = zygotes
        self._interpreter = interpreter
        self._revision = revision

    async def start(self, request: SpawnRequest) -> StartedWorker:
        revision = self._revision
        payload = secrets_payload(
            env=revision.secret_env,
            directory=revision.secrets_dir,
            volumes=revision.secret_volumes,
            uid=request.uid,
            gid=request.gid,
        )
        secrets_fd: int | None = None
        read_fd, write_fd = os.pipe()
        try:
            secrets_fd = None if payload is None else payload_fd(payload)
            zygote = await self._zygotes.zygote_for(self._interpreter)
            process = await zygote.spawn(
                request, listen_socket=self._listener, log_fd=write_fd, secrets_fd=secrets_fd
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
            if secrets_fd is not None:
                os.close(secrets_fd)
            # The worker holds the socket now; without our copy, connections to a dead
            # worker are refused at once instead of waiting in the backlog.
            self._listener.close()
        return StartedWorker(process=process, log_read_fd=read_fd)


def bind_pod_address(addresses: AddressPool, port: int) -> tuple[str, socket.socket]:
    """A fresh pod IP with ``port`` bound and listening; skips addresses something else holds
    (another daemon on the same machine, a lingering process)."""
    error: OSError | None = None
    for _ in range(BIND_ATTEMPTS):
        ip = addresses.take()
        try:
            return ip, _listen(ip, port)
        except OSError as exc:
            addresses.give_back(ip)
            error = exc
    raise Unavailable(f"cannot listen on a pod address, port {port}: {error}")


def _listen(ip: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((ip, port))
        listener.listen(LISTEN_BACKLOG)
    except OSError:
        listener.close()
        raise
    return listener
