"""Daemon side of the Python zygote: start one, have it fork workers, follow their lives.

A :class:`Zygote` is one warmed interpreter (``shims/_funcmesh_zygote.py``) behind an AF_UNIX
SOCK_SEQPACKET control socket, one JSON message per packet. :meth:`Zygote.spawn` passes the
listening socket and the log pipe of a new instance (and the memfd of its Secrets, if any)
along with a :class:`SpawnRequest` and returns a :class:`WorkerProcess` whose futures say when
the function is loaded (or why not) and when the process exits (both in
``funcmesh.runtime.workers``, shared with the Node.js starter; their records are kept in
``funcmesh.runtime.spawns``). A namespace's Kubernetes service variables go to the zygote once
per change, in a message of their own, and a spawn request names them: with a few hundred
Services they are thousands of variables, which the zygote prepares once for every worker it
forks afterwards instead of each worker decoding and installing them. If the zygote dies, its
workers die with it (PDEATHSIG) and every pending future fails with
:class:`~funcmesh.errors.Unavailable`; the pool starts a new zygote.

Must not: create or bind sockets, read worker logs, parse HTTP, decide limits or identities
(the pool does), read os.environ, or block the event loop.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from funcmesh.errors import AlreadyExists, Invalid, Unavailable
from funcmesh.runtime.spawns import Spawns
from funcmesh.runtime.workers import (
    SpawnRequest,
    WorkerLoadError,
    WorkerProcess,
    resolve,
    retrieve_exception,
)

logger = logging.getLogger(__name__)

ZYGOTE_SCRIPT: Final = Path(__file__).parent / "shims" / "_funcmesh_zygote.py"
CONTROL_FD_ENV: Final = "FUNCMESH_CONTROL_FD"
DAEMON_PID_ENV: Final = "FUNCMESH_DAEMON_PID"
MAX_MESSAGE_BYTES: Final = 256 * 1024  # the zygote's receive buffer
HELLO_TIMEOUT_S: Final = 10.0
SPAWN_TIMEOUT_S: Final = 5.0
CLOSE_GRACE_S: Final = 2.0
EXIT_TIMEOUT_S: Final = 5.0
STDERR_TAIL_LINES: Final = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class _SentLinks:
    """The service variables of a namespace as last sent to the zygote."""

    variables: Mapping[str, str]  # kept: the next request's are usually this very object
    version: int


class Zygote:
    """A running zygote process and its control socket; create with :meth:`start`."""

    def __init__(
        self, *, process: asyncio.subprocess.Process, control: socket.socket, interpreter: str
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._process = process
        self._control = control
        self._interpreter = interpreter
        self._spawns = Spawns(self._loop)
        self._buffer = bytearray(MAX_MESSAGE_BYTES)  # reused: allocating per message is slower
        self._hello: asyncio.Future[str] = self._loop.create_future()
        self._hello.add_done_callback(retrieve_exception)
        self._send_lock = asyncio.Lock()  # also keeps "links" before the spawns that name them
        self._links: dict[str, _SentLinks] = {}  # by namespace
        self._link_versions = itertools.count(1)
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._alive = True
        self._closing = False
        self.pid = process.pid
        self.python_version = ""
        self._loop.add_reader(control.fileno(), self._on_readable)
        self._stderr_task = asyncio.create_task(
            self._read_stderr(), name=f"zygote-{self.pid}-stderr"
        )
        self._watch_task = asyncio.create_task(
            self._watch_process(), name=f"zygote-{self.pid}-watch"
        )

    def __repr__(self) -> str:
        state = "alive" if self._alive else "gone"
        return f"<Zygote pid={self.pid} python={self.python_version or '?'} {state}>"

    @property
    def alive(self) -> bool:
        return self._alive

    @classmethod
    async def start(
        cls,
        interpreter: str,
        *,
        env: Mapping[str, str] | None = None,
        hello_timeout_s: float = HELLO_TIMEOUT_S,
    ) -> Zygote:
        """Start a zygote on ``interpreter`` and wait until it has warmed up and said hello."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        child_env = {
            **(env or {}),
            DAEMON_PID_ENV: str(os.getpid()),
            CONTROL_FD_ENV: str(theirs.fileno()),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                interpreter,
                "-s",
                str(ZYGOTE_SCRIPT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                env=child_env,
                start_new_session=True,  # Ctrl-C in the daemon's terminal must not hit workers
            )
        except OSError as exc:
            ours.close()
            raise Unavailable(f"cannot start a Python zygote with {interpreter}: {exc}") from exc
        finally:
            theirs.close()
        ours.setblocking(False)
        zygote = cls(process=process, control=ours, interpreter=interpreter)
        try:
            await zygote._await_hello(hello_timeout_s)
        except BaseException:
            await zygote.close()
            raise
        logger.info(
            "python zygote %d started (%s, Python %s)",
            zygote.pid,
            interpreter,
            zygote.python_version,
        )
        return zygote

    async def spawn(
        self,
        request: SpawnRequest,
        *,
        listen_socket: socket.socket,
        log_fd: int,
        secrets_fd: int | None = None,
    ) -> WorkerProcess:
        """Fork a worker for ``request``; returns once it exists (see ``ready`` for loading).

        ``secrets_fd`` (a memfd, see ``funcmesh.runtime.secret_files``) goes to the worker as a
        third descriptor that the zygote passes on unread: Secret values never enter the
        zygote's memory, which every later worker inherits. So does the request's mesh
        credential, a read-only descriptor of its identity's memfd, always the last one
        (``funcmesh.runtime.mesh_credentials``): per spawn a reference, never a certificate.
        """
        pod = request.pod_name
        if not self._alive or self._closing:
            raise Unavailable(f"the Python zygote (pid {self.pid}) is not running")
        if pod in self._spawns:
            raise AlreadyExists(f"pod {pod} already has a worker in zygote {self.pid}")
        message = request.to_message()
        fds: tuple[int, ...] = (listen_socket.fileno(), log_fd)
        if secrets_fd is not None:
            message["secrets"] = True
            fds += (secrets_fd,)
        if (credential := request.credential) is not None:  # last, after the Secrets memfd
            message["mesh"] = {"cidr": credential.service_cidr}
            fds += (credential.reader_fd,)
        spawn = self._spawns.open(pod)
        try:
            async with self._send_lock:
                message["links"] = await self._share_links(request)
                await self._send(_encoded(message, f"spawn request for pod {pod}"), fds=fds)
        except BaseException:
            self._spawns.discard(pod)
            raise
        try:
            async with asyncio.timeout(SPAWN_TIMEOUT_S):
                pid = await asyncio.shield(spawn.spawned)
        except TimeoutError:
            spawn.abandoned = True
            raise Unavailable(
                f"the Python zygote (pid {self.pid}) did not fork pod {pod} "
                f"within {SPAWN_TIMEOUT_S:g} s"
            ) from None
        except asyncio.CancelledError:
            spawn.abandoned = True
            raise
        return WorkerProcess(
            pod_name=pod,
            pid=pid,
            ready=spawn.ready,
            exited=spawn.exited,
            signal_worker=self.signal_worker,
        )

    def signal_worker(self, pid: int, sig: int) -> None:
        """Ask the zygote to signal its child ``pid``: it only signals unreaped children, so a
        recycled pid is never hit. Without a zygote the workers are dead already."""
        if not self._alive:
            return
        message = json.dumps({"op": "kill", "pid": pid, "signal": int(sig)}).encode()
        try:
            self._control.send(message)
        except BlockingIOError:  # the zygote is not reading: reach the worker directly
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        except OSError as exc:
            self._lose(f"control socket failed: {exc}")

    async def close(self, *, grace_s: float = CLOSE_GRACE_S) -> None:
        """SIGTERM the workers, SIGKILL those still running after ``grace_s``, stop the zygote."""
        if self._closing:
            await self._wait_tasks()
            return
        self._closing = True
        running = self._spawns.running()
        for pid in running:
            self.signal_worker(pid, signal.SIGTERM)
        if running and self._alive:
            await asyncio.wait(running.values(), timeout=grace_s)
        self._stop_reading()
        self._control.close()  # EOF: the zygote SIGKILLs what is left and exits
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await self._process.wait()
        except TimeoutError:
            logger.warning("python zygote %d ignored EOF; killing it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
        self._lose("was closed")
        await self._wait_tasks()

    # -- control socket

    async def _share_links(self, request: SpawnRequest) -> dict[str, Any] | None:
        """Name the request's service variables for the zygote, sending them first if it lacks
        them (a Service of the namespace changed, or this is its first spawn there). The caller
        holds the send lock, so the zygote reads them before the spawn that names them."""
        variables, namespace = request.service_links, request.namespace
        if not variables:
            return None
        sent = self._links.get(namespace)
        if sent is None or (sent.variables is not variables and sent.variables != variables):
            version = next(self._link_versions)
            message = {"op": "links", "namespace": namespace, "version": version}
            message["env"] = dict(variables)
            what = f"the service variables of namespace {namespace}"
            await self._send(_encoded(message, what))
            sent = self._links[namespace] = _SentLinks(variables=variables, version=version)
        return {"namespace": namespace, "version": sent.version}

    async def _send(self, payload: bytes, *, fds: tuple[int, ...] = ()) -> None:
        """Send one message; the caller holds the send lock."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        while True:
            if not self._alive:
                raise Unavailable(f"the Python zygote (pid {self.pid}) is not running")
            try:
                self._control.sendmsg([payload], ancillary)
                return
            except BlockingIOError:
                await self._writable()
            except OSError as exc:
                self._lose(f"control socket failed: {exc}")
                raise Unavailable(f"the Python zygote (pid {self.pid}) is gone: {exc}") from exc

    async def _writable(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        fd = self._control.fileno()
        self._loop.add_writer(fd, resolve, waiter)
        try:
            await waiter
        finally:
            self._loop.remove_writer(fd)

    def _on_readable(self) -> None:
        while self._alive:
            try:
                size, _, flags, _ = self._control.recvmsg_into([self._buffer])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._lose(f"control socket failed: {exc}")
                return
            if not size:
                self._lose("closed its control socket")
                return
            if flags & socket.MSG_TRUNC:
                logger.warning("python zygote %d sent an oversized message; dropped", self.pid)
                continue
            data = self._buffer[:size]
            try:
                message = json.loads(data)
            except ValueError:
                logger.warning("python zygote %d sent unreadable JSON: %.200r", self.pid, data)
                continue
            self._dispatch(message)

    def _dispatch(self, message: Any) -> None:
        match message:
            case {"op": "hello", "pid": int(), "python": str(version)}:
                if not self._hello.done():
                    self._hello.set_result(version)
            case {"op": "spawned", "pod": str(pod), "pid": int(pid)}:
                self._on_spawned(pod, pid)
            case {"op": "ready", "pod": str(pod)}:
                self._spawns.settle(pod, None)
            case {"op": "failed", "pod": str(pod), "error": str(error)}:
                self._spawns.settle(pod, WorkerLoadError(error))
            case {"op": "exited", "pod": str(pod), "returncode": int(returncode)}:
                self._spawns.exited(pod, returncode)
            case {"op": "error", "pod": str(pod), "error": str(error)}:
                self._spawns.fail(pod, f"the Python zygote could not start pod {pod}: {error}")
            case {"op": "error", "error": str(error)}:
                logger.warning("python zygote %d reports: %s", self.pid, error)
            case _:
                logger.warning(
                    "python zygote %d sent an unexpected message: %.200r", self.pid, message
                )

    def _on_spawned(self, pod: str, pid: int) -> None:
        spawn = self._spawns.forked(pod, pid)
        if spawn is None:  # nobody waits for it: do not let it run unaccounted for
            logger.warning("python zygote %d forked pid %d for unknown pod %s", self.pid, pid, pod)
            self.signal_worker(pid, signal.SIGKILL)
        elif spawn.abandoned:
            self.signal_worker(pid, signal.SIGKILL)

    # -- the zygote process

    async def _await_hello(self, timeout_s: float) -> None:
        reason = None
        try:
            async with asyncio.timeout(timeout_s):
                self.python_version = await self._hello
            return
        except TimeoutError:
            reason = f"did not start within {timeout_s:g} s"
        except Unavailable:
            with contextlib.suppress(TimeoutError):  # it is going away: let it finish
                async with asyncio.timeout(1.0):
                    await self._process.wait()
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        returncode = await self._process.wait()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await asyncio.shield(self._stderr_task)
        tail = "\n".join(self._stderr_tail) or "(no output)"
        reason = reason or f"exited with status {returncode} before it was ready"
        raise Unavailable(f"the Python zygote ({self._interpreter}) {reason}; its stderr:\n{tail}")

    async def _watch_process(self) -> None:
        returncode = await self._process.wait()
        self._lose(f"exited with status {returncode}")

    async def _read_stderr(self) -> None:
        stream = self._process.stderr
        if stream is None:
            return
        pending = b""
        while chunk := await stream.read(8192):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._note_stderr(line)
        if pending:
            self._note_stderr(pending)

    def _note_stderr(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip()
        self._stderr_tail.append(text)
        logger.warning("python zygote %d: %s", self.pid, text)

    def _lose(self, reason: str) -> None:
        """The zygote is gone (or going): fail everything still waiting on it."""
        if not self._alive:
            return
        self._alive = False
        self._stop_reading()
        if self._closing:
            reason = "was closed"
        else:
            logger.warning("python zygote %d %s", self.pid, reason)
        message = f"the Python zygote (pid {self.pid}) {reason}"
        if not self._hello.done():
            self._hello.set_exception(Unavailable(message))
        self._spawns.fail_all(message)

    def _stop_reading(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # ValueError: socket already closed
            self._loop.remove_reader(self._control.fileno())

    async def _wait_tasks(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                await asyncio.gather(self._watch_task, self._stderr_task, return_exceptions=True)
        for task in (self._watch_task, self._stderr_task):
            task.cancel()
        await asyncio.gather(self._watch_task, self._stderr_task, return_exceptions=True)


def _encoded(message: Mapping[str, Any], what: str) -> bytes:
    """``message`` as one packet; Invalid if it is more than the zygote reads."""
    payload = json.dumps(message).encode()
    if len(payload) > MAX_MESSAGE_BYTES:
        raise Invalid(
            f"{what} is {len(payload)} bytes, more than {MAX_MESSAGE_BYTES}: "
            "the environment is too large"
        )
    return payload
