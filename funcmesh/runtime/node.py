"""Node.js instances, from a pool of started but not yet specialised ``node`` processes.

A fresh ``node`` takes about 54 ms to start; a spare pays that ahead of need. Each spare is a
process of the runtime shim (``funcmesh.runtime.node_processes``) with its own pod address bound
already: the listening socket is inherited at start, because Node cannot receive a file
descriptor later (it has no SCM_RIGHTS). A spare warms up, says hello and waits. Specialising it
is one JSON line on its control socket (environment, code directory, NODE_PATH, module, handler,
context): it loads the function, starts accepting and answers ready or failed. After each take,
the missing spares start in the background. A function whose process needs something at start
(``NODE_OPTIONS``, or a heap limit) gets a fresh process instead.

Mesh identity: the specialisation names the service CIDR; the instance asks for its certificate
over the control socket when its code first calls a VIP there (nothing per cold start).

Secrets: env values from Secret keys go in the specialisation (straight to that process). Secret
volumes to mount (the daemon runs as root) need a private mount namespace, which a spare running
as nobody cannot get any more: such an instance is a fresh process started through
``shims/_funcmesh_secrets.py``, which mounts them as root and then executes ``setpriv ... node``
(a cold start of roughly 80-100 ms instead of 3-5 ms). Without private mounts the files are on
disk and any spare will do.

The daemon keeps its end of each control socket open for the instance's whole life: end of file
tells an orphan that the daemon is gone, in addition to the parent-death signal.

Memory limits: with cgroup v1, the daemon writes the pid into the instance's memory group before
specialising; what Node allocated before (about 40 MB of its own) stays charged where it was,
because this kernel no longer moves charges between groups. Without cgroups, a function with a
memory limit gets a process of its own started with ``--max-old-space-size`` (V8's heap limit,
which a running process cannot change).

Must not: speak HTTP, decide limits or identities (the pool and the app do), read os.environ,
or block the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections import deque
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, Final

from funcmesh.errors import FuncmeshError, Unavailable
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.node_processes import SHIM_PATH, Launch, NodeLauncher, NodeProcess
from funcmesh.runtime.secret_files import secrets_payload
from funcmesh.runtime.starters import PendingWorker, StartedWorker, bind_pod_address
from funcmesh.runtime.workers import SpawnRequest, WorkerProcess

logger = logging.getLogger(__name__)

DEFAULT_SPARES: Final = 2
HELLO_TIMEOUT_S: Final = 10.0
EXIT_WAIT_S: Final = 1.0  # for a process whose control socket broke to be seen exiting
REFILL_DELAY_S: Final = 0.05  # after a take: the new instance loads and answers first
RETRY_MIN_S: Final = 1.0
RETRY_MAX_S: Final = 30.0


def specialisation(
    request: SpawnRequest, *, secret_env: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """The message that turns a spare into an instance of the requested function; env values
    from Secrets win over the service variables, the request's env (Kubeless's variables) over
    both. With a mesh identity, the service CIDR whose calls it upgrades to mTLS (it asks for
    its certificate when its code first calls one, ``node_processes``)."""
    message: dict[str, Any] = {
        "op": "specialise",
        "pod_name": request.pod_name,
        "env": {**request.service_links, **dict(secret_env), **request.env},
        "code_dir": request.code_dir,
        "node_paths": list(request.sys_paths),
        "module": request.module,
        "handler": request.function,
        "function_name": request.function_name,
        "timeout_s": request.timeout_s,
        "runtime": request.runtime,
        "memory_limit": request.memory_limit,
    }
    if request.credential is not None:
        message["mesh"] = {"cidr": request.credential.service_cidr}
    return message


class NodeStarter:
    """Starts Node.js instances, keeping ``spares`` started processes per ``node`` binary."""

    def __init__(
        self,
        *,
        addresses: AddressPool,
        port: int,
        shim: Path = SHIM_PATH,
        spares: int = DEFAULT_SPARES,
        uid: int | None = None,
        gid: int | None = None,
        setpriv: str | None = None,
        heap_limits: bool = False,
    ) -> None:
        self._addresses = addresses
        self._port = port
        self._launcher = NodeLauncher(shim=shim, uid=uid, gid=gid, setpriv=setpriv)
        self._uid, self._gid = uid, gid
        self._spare_count = spares
        self._heap_limits = heap_limits  # no memory cgroups: limit V8's heap at start instead
        self._spares: dict[str, deque[NodeProcess]] = {}
        self._processes: set[NodeProcess] = set()
        self._starting: dict[str, int] = {}  # spares being spawned, not yet in _spares
        self._retry_s = RETRY_MIN_S
        self._retry_at_s = 0.0  # loop time before which no spare is started (after a failure)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spares(self, executable: str) -> list[NodeProcess]:
        """The spares kept for ``executable`` now, oldest first."""
        return list(self._spares.get(executable, ()))

    def reserve(self, revision: Revision) -> PendingWorker:
        """A warm spare's pod address, else a freshly bound one whose process starts in
        ``start``; the spares taken are replaced in the background."""
        if self._closed:
            raise Unavailable("the daemon is stopping: no new Node.js instances")
        executable = str(revision.runtime.executable)
        launch = self._launch_for(revision)
        if launch is None:
            spare = self._take_spare(executable)
            self._top_up_later(executable)
            if spare is not None:
                return _Spare(self, spare, secret_env=revision.secret_env)
        ip, listener = bind_pod_address(self._addresses, self._port)
        return _Fresh(
            self,
            executable=executable,
            ip=ip,
            listener=listener,
            launch=launch,
            secret_env=revision.secret_env,
        )

    def prepare(self, executable: str) -> None:
        """Start spares for ``executable`` now, before the first instance needs one."""
        self._top_up_later(executable, delay_s=0.0)

    async def close(self) -> None:
        """Stop making spares, kill every process still running, wait until they are reaped."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        processes = list(self._processes)
        for process in processes:
            process.signal(signal.SIGKILL)
        await asyncio.gather(*(p.followed for p in processes), return_exceptions=True)

    # -- starting processes

    def _launch_for(self, revision: Revision) -> Launch | None:
        """How an instance of ``revision`` must start, when a generic spare will not do."""
        node_args: tuple[str, ...] = ()
        if self._heap_limits and revision.memory_limit_bytes:
            node_args = (f"--max-old-space-size={max(1, revision.memory_limit_bytes >> 20)}",)
        env = {key: value for key, value in revision.env if key == "NODE_OPTIONS"}
        secrets = secrets_payload(
            env=(),
            directory=revision.secrets_dir,
            volumes=revision.secret_volumes,
            uid=self._uid,
            gid=self._gid,
        )
        if node_args or env or secrets:
            return Launch(node_args=node_args, env=env, secrets=secrets)
        return None

    async def spawn(
        self, executable: str, *, ip: str, listener: socket.socket, launch: Launch
    ) -> NodeProcess:
        """Start a process serving on ``listener`` (closed here), followed until it exits."""
        node = await self._launcher.launch(executable, ip=ip, listener=listener, launch=launch)
        self._processes.add(node)
        node.followed.add_done_callback(lambda _: self._forget(node))
        return node

    async def specialise(
        self,
        node: NodeProcess,
        request: SpawnRequest,
        *,
        secret_env: Iterable[tuple[str, str]] = (),
    ) -> StartedWorker:
        """Give ``node`` its function: join the memory cgroup, send the specialisation.

        The request's uid and gid are not applied here: every process of this starter runs as
        the identity it was made with, from its start.
        """
        node.specialised = True
        node.credential = request.credential  # what it is answered when it asks for one
        if request.cgroup_procs and node.alive:
            try:
                _join_cgroup(request.cgroup_procs, node.pid)
            except OSError as exc:
                node.signal(signal.SIGKILL)
                node.close_log()
                raise Unavailable(
                    f"could not limit the memory of instance {request.pod_name} "
                    f"(Node.js process {node.pid}): {exc}"
                ) from exc
        if node.alive:
            try:
                await node.send(specialisation(request, secret_env=secret_env))
            except OSError as exc:  # ConnectionResetError: it is dying, or its socket broke
                await _stop_unready(
                    node, f"Node.js process {node.pid} could not be sent its function: {exc}"
                )
        # A process that died before it read its function (a node that cannot start, a spare
        # killed on the way) is still returned: its ``ready`` fails with its exit status, and
        # its output, which says why, reaches the instance's log like any other.

        def signal_worker(pid: int, sig: int) -> None:
            node.signal(sig)

        process = WorkerProcess(
            pod_name=request.pod_name,
            pid=node.pid,
            ready=node.ready,
            exited=node.exited,
            signal_worker=signal_worker,
        )
        return StartedWorker(process=process, log_read_fd=node.take_log_fd())

    def _forget(self, node: NodeProcess) -> None:
        self._processes.discard(node)
        if node.specialised:
            return  # the pool owns its address and output now
        for spares in self._spares.values():
            with contextlib.suppress(ValueError):
                spares.remove(node)
        if not self._closed:
            tail = node.log_tail()
            logger.warning(
                "Node.js spare %d exited with status %s%s",
                node.pid,
                node.exited.result() if node.exited.done() else "?",
                f": {tail}" if tail else "",
            )
        node.close_log()
        self._addresses.give_back(node.ip)
        if node.hello.done() and not node.hello.exception():
            self._top_up_later(node.executable)  # a failed start is retried by _add_spare

    # -- spares

    def _take_spare(self, executable: str) -> NodeProcess | None:
        spares = self._spares.get(executable)
        if not spares:
            return None
        live = [spare for spare in spares if spare.alive]
        warm = [spare for spare in live if spare.hello.done() and not spare.hello.exception()]
        candidates = warm or live
        if not candidates:
            return None
        spares.remove(candidates[0])
        return candidates[0]

    def _top_up_later(self, executable: str, *, delay_s: float = REFILL_DELAY_S) -> None:
        """Start the spares ``executable`` lacks, all at once, after ``delay_s`` (or after the
        back-off that follows a failed start)."""
        if not self._closed and self._spare_count > 0:
            self._guard(self._top_up(executable, delay_s), name=f"node-spares-{executable}")

    async def _top_up(self, executable: str, delay_s: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(delay_s, self._retry_at_s - loop.time()))
        if self._closed:
            return
        present = len(self._spares.get(executable, ())) + self._starting.get(executable, 0)
        for _ in range(self._spare_count - present):
            self._starting[executable] = self._starting.get(executable, 0) + 1
            self._guard(self._add_spare(executable), name=f"node-spare-{executable}")

    async def _add_spare(self, executable: str) -> None:
        """Start one spare and wait for its hello; a failure is logged and retried later."""
        try:
            spare = await self._spawn_spare(executable)
        finally:
            self._starting[executable] -= 1
        if spare is not None:
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_S):
                    await asyncio.shield(spare.hello)
                self._retry_s = RETRY_MIN_S
                return
            except (TimeoutError, FuncmeshError):
                if spare.specialised:
                    return  # taken while starting: what became of it is the pool's affair
                if spare.alive:
                    logger.warning(
                        "Node.js spare %d did not start in %g s", spare.pid, HELLO_TIMEOUT_S
                    )
                    spare.signal(signal.SIGKILL)
                # else it exited, and _forget logged why
        loop = asyncio.get_running_loop()
        self._retry_at_s = loop.time() + self._retry_s
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        self._top_up_later(executable, delay_s=0.0)

    async def _spawn_spare(self, executable: str) -> NodeProcess | None:
        try:
            ip, listener = bind_pod_address(self._addresses, self._port)
        except Unavailable as exc:
            logger.warning("no Node.js spare: %s", exc)
            return None
        try:
            spare = await self.spawn(executable, ip=ip, listener=listener, launch=Launch())
        except Unavailable as exc:
            self._addresses.give_back(ip)
            logger.warning("no Node.js spare: %s", exc)
            return None
        self._spares.setdefault(executable, deque()).append(spare)
        return spare

    def _guard(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("%s failed", task.get_name(), exc_info=task.exception())


class _Spare:
    """A spare taken for a new instance: its address accepts connections already."""

    def __init__(
        self, starter: NodeStarter, node: NodeProcess, *, secret_env: tuple[tuple[str, str], ...]
    ) -> None:
        self._starter = starter
        self._node = node
        self._secret_env = secret_env
        self.ip = node.ip

    async def start(self, request: SpawnRequest) -> StartedWorker:
        return await self._starter.specialise(self._node, request, secret_env=self._secret_env)


class _Fresh:
    """A bound address for an instance whose process starts now (no spare, or special needs)."""

    def __init__(
        self,
        starter: NodeStarter,
        *,
        executable: str,
        ip: str,
        listener: socket.socket,
        launch: Launch | None,
        secret_env: tuple[tuple[str, str], ...],
    ) -> None:
        self._starter = starter
        self._executable = executable
        self._listener = listener
        self._launch = launch or Launch()
        self._secret_env = secret_env
        self.ip = ip

    async def start(self, request: SpawnRequest) -> StartedWorker:
        node = await self._starter.spawn(
            self._executable, ip=self.ip, listener=self._listener, launch=self._launch
        )
        return await self._starter.specialise(node, request, secret_env=self._secret_env)


async def _stop_unready(node: NodeProcess, reason: str) -> None:
    """Settle a process that broke off before it was ready: by its exit status when it is dying
    anyway (its control socket breaks as it exits), by ``reason`` when it would live on."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(node.exited), EXIT_WAIT_S)
    if not node.ready.done():
        node.ready.set_exception(Unavailable(reason))
    node.signal(signal.SIGKILL)


def _join_cgroup(procs: str, pid: int) -> None:
    fd = os.open(procs, os.O_WRONLY)
    try:
        os.write(fd, b"%d" % pid)
    finally:
        os.close(fd)
