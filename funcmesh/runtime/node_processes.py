"""Starting one ``node`` process of the Node.js runtime, and following it until it exits.

A :class:`NodeLauncher` starts ``shims/kubeless_runtime.js --spare`` with a listening socket and
one end of a Unix stream socket (the control socket) inherited, stdout and stderr on a pipe, and
``setpriv`` in front: as root it drops to the worker identity and then sets the parent-death
signal, which the kernel clears when credentials change, so the order matters. A process that
mounts Secrets starts one step earlier: ``python -I -S shims/_funcmesh_secrets.py`` reads them
from an inherited memfd, mounts them in a private mount namespace as root, then executes the
``setpriv ... node`` command line. A :class:`NodeProcess` reads the process's reports on the
control socket (``hello`` once warm, then ``ready`` or ``failed`` once specialised, and
``certificate`` when its code first calls a mesh VIP: it is answered with the mesh credentials
of its identity) and awaits its exit through a pidfd.

Must not: decide which process serves what (``funcmesh.runtime.node`` does), speak HTTP, read
os.environ, or block the event loop (processes start with vfork; under uvloop, asyncio's own
subprocess support forks the whole daemon, which stalls the loop for milliseconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from funcmesh.errors import Unavailable
from funcmesh.runtime.mesh_credentials import MeshCredential
from funcmesh.runtime.secret_files import SECRETS_SHIM, payload_fd
from funcmesh.runtime.workers import WorkerLoadError, resolve, retrieve_exception

logger = logging.getLogger(__name__)

SHIM_PATH: Final = Path(__file__).parent / "shims" / "kubeless_runtime.js"
# Modules the runtime shim requires from its own directory: copied beside it.
SHIM_MODULES: Final = (
    SHIM_PATH.with_name("funcmesh_names.js"),
    SHIM_PATH.with_name("funcmesh_mtls.js"),
)
DAEMON_PID_ENV: Final = "FUNCMESH_DAEMON_PID"
EXIT_REPORT_WAIT_S: Final = 0.2  # for the last control line of a process that has exited
LOG_TAIL_BYTES: Final = 2048
MAX_CONTROL_LINE_BYTES: Final = 64 * 1024
_SPARE_ENV: Final = {"PATH": os.defpath + ":/usr/local/bin", "LANG": "C.UTF-8", "HOME": "/tmp"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Launch:
    """What a process needs at start beyond a spare's defaults (then it cannot be a spare)."""

    node_args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    secrets: bytes | None = field(default=None, repr=False)  # payload of _funcmesh_secrets.py


def install_shim(directory: Path) -> Path:
    """A copy of the runtime shim (and the modules it requires) where workers running as
    another user can read it (the package may live in a private directory); each file is
    rewritten only when it changed. Blocks."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    for module in SHIM_MODULES:
        _copy_if_changed(module, directory / module.name)
    return _copy_if_changed(SHIM_PATH, directory / SHIM_PATH.name)


def _copy_if_changed(source_path: Path, target: Path) -> Path:
    source = source_path.read_bytes()
    if not target.is_file() or target.read_bytes() != source:
        staged = target.with_name(f".{target.name}.{os.getpid()}")
        staged.write_bytes(source)
        staged.chmod(0o644)
        staged.replace(target)
    return target


class NodeProcess:
    """One ``node`` the daemon started: a spare until specialised, then an instance."""

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        pidfd: int,
        executable: str,
        ip: str,
        control: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        log_read_fd: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.pid = process.pid
        self.executable = executable
        self.ip = ip
        self.specialised = False
        self.credential: MeshCredential | None = None  # its identity's, once specialised
        self.hello: asyncio.Future[None] = loop.create_future()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.exited: asyncio.Future[int] = loop.create_future()
        for future in (self.hello, self.ready, self.exited):
            future.add_done_callback(retrieve_exception)
        self._process = process
        self._pidfd = pidfd
        self._reader, self._writer = control
        self._log_read_fd: int | None = log_read_fd
        self.followed = asyncio.create_task(self._follow(), name=f"node-{self.pid}")

    def __repr__(self) -> str:
        role = "instance" if self.specialised else "spare"
        return f"<NodeProcess {role} pid={self.pid} ip={self.ip}>"

    @property
    def alive(self) -> bool:
        return not self.exited.done() and self._process.returncode is None

    def signal(self, sig: int) -> None:
        """Send ``sig``; nothing happens once the process has been reaped."""
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)

    async def send(self, message: Mapping[str, Any]) -> None:
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()

    def take_log_fd(self) -> int:
        """The read end of the process's output pipe; the caller closes it from now on."""
        fd, self._log_read_fd = self._log_read_fd, None
        if fd is None:
            raise Unavailable(f"the output of Node.js process {self.pid} was taken already")
        return fd

    def log_tail(self) -> str:
        """What a process that is not an instance has printed (why a spare failed)."""
        fd = self._log_read_fd
        if fd is None:
            return ""
        os.set_blocking(fd, False)
        try:
            data = os.read(fd, LOG_TAIL_BYTES)
        except (BlockingIOError, OSError):
            return ""
        return data.decode("utf-8", "replace").strip()

    def close_log(self) -> None:
        fd, self._log_read_fd = self._log_read_fd, None
        if fd is not None:
            os.close(fd)

    async def _follow(self) -> None:
        reading = asyncio.create_task(self._read_control(), name=f"node-{self.pid}-control")
        try:
            returncode = await _exit_status(self._process, self._pidfd)
            with contextlib.suppress(TimeoutError):  # a child may hold the socket open
                async with asyncio.timeout(EXIT_REPORT_WAIT_S):
                    await asyncio.shield(reading)
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            self._writer.close()
        self._settle_exit(returncode)

    async def _read_control(self) -> None:
        """Dispatch the process's reports until it closes the socket (or breaks it, by dying
        with our message unread, or by a line over the limit)."""
        try:
            while line := await self._reader.readline():
                try:
                    message = json.loads(line)
                except ValueError:
                    logger.warning("node process %d sent unreadable JSON: %.200r", self.pid, line)
                    continue
                self._dispatch(message)
        except (OSError, ValueError) as exc:  # ConnectionResetError; LimitOverrunError
            logger.debug("control socket of node process %d: %s", self.pid, exc)

    def _dispatch(self, message: Any) -> None:
        match message:
            case {"op": "hello"}:
                resolve(self.hello)
            case {"op": "ready"}:
                resolve(self.ready)
            case {"op": "failed", "error": str(error)}:
                if not self.ready.done():
                    self.ready.set_exception(WorkerLoadError(error))
            case {"op": "certificate"}:
                self._send_credentials()
            case _:
                logger.warning(
                    "node process %d sent an unexpected message: %.200r", self.pid, message
                )

    def _send_credentials(self) -> None:
        """Answer an instance's question for its mesh credentials: its own identity's, as they
        are now (the payload is JSON already), never another's."""
        credential = self.credential
        if credential is None or not self.specialised:
            answer = b'{"op": "certificate", "error": "this instance has no mesh identity"}'
        else:
            answer = b'{"op": "certificate", "credentials": ' + credential.payload + b"}"
        with contextlib.suppress(OSError):  # it is gone: its reader sees the end
            self._writer.write(answer + b"\n")

    def _settle_exit(self, returncode: int) -> None:
        reason = f"exited with status {returncode} before it was ready"
        if not self.hello.done():
            self.hello.set_exception(Unavailable(f"the Node.js process {self.pid} {reason}"))
        if not self.ready.done():
            self.ready.set_exception(WorkerLoadError(f"the worker {reason}"))
        if not self.exited.done():
            self.exited.set_result(returncode)


class NodeLauncher:
    """Starts ``node`` processes of the runtime shim, as the worker identity if one is given."""

    def __init__(
        self,
        *,
        shim: Path = SHIM_PATH,
        uid: int | None = None,
        gid: int | None = None,
        setpriv: str | None = None,
        python: str = sys.executable,
    ) -> None:
        self._shim = shim
        self._uid = uid
        self._gid = gid
        self._setpriv = setpriv
        self._python = python  # runs the Secrets step (stdlib only, as root)

    async def launch(
        self, executable: str, *, ip: str, listener: socket.socket, launch: Launch
    ) -> NodeProcess:
        """Start ``node`` with the runtime serving on ``listener`` (closed here); raises
        Unavailable."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_read, log_write = os.pipe()
        fds: tuple[int, ...] = (listener.fileno(), theirs.fileno())
        secrets_fd = -1
        try:
            argv = [
                *self._wrapper(),
                executable,
                *launch.node_args,
                str(self._shim),
                *("--spare", "--listen-fd", str(fds[0]), "--control-fd", str(fds[1])),
            ]
            if launch.secrets is not None:
                secrets_fd = payload_fd(launch.secrets)
                fds += (secrets_fd,)
                argv = [*self._secrets_step(secrets_fd), *argv]
            env = {**_SPARE_ENV, DAEMON_PID_ENV: str(os.getpid()), **launch.env}
            process = _exec(argv, env=env, fds=fds, log=log_write)
        except BaseException:
            ours.close()
            os.close(log_read)
            raise
        finally:
            theirs.close()
            os.close(log_write)
            if secrets_fd >= 0:
                os.close(secrets_fd)
            listener.close()  # the process has it; a dead one's connections are refused at once
        pidfd = -1
        try:
            pidfd = _pidfd(process)
            control = await asyncio.open_unix_connection(sock=ours, limit=MAX_CONTROL_LINE_BYTES)
        except BaseException:
            _kill_now(process)
            for fd in (pidfd, log_read):
                if fd >= 0:
                    os.close(fd)
            ours.close()
            raise
        return NodeProcess(
            process=process,
            pidfd=pidfd,
            executable=executable,
            ip=ip,
            control=control,
            log_read_fd=log_read,
        )

    def _secrets_step(self, payload_fd: int) -> list[str]:
        """Mounts the Secrets in a private mount namespace as root, then executes the rest."""
        return [self._python, "-I", "-S", str(SECRETS_SHIM), "--payload-fd", str(payload_fd), "--"]

    def _wrapper(self) -> list[str]:
        """``setpriv`` (util-linux) drops to the worker identity, and then sets the parent-death
        signal: the kernel would clear one set before the identity change."""
        if self._setpriv is None:
            if self._uid is not None or self._gid is not None:
                raise Unavailable(
                    "Node.js functions run as an unprivileged user, which needs setpriv "
                    "(util-linux) on PATH; install util-linux"
                )
            return []
        identity = [] if self._gid is None else [f"--regid={self._gid}"]
        if self._uid is not None:
            identity += [f"--reuid={self._uid}", "--clear-groups"]
        return [self._setpriv, *identity, "--pdeathsig", "SIGKILL", "--"]


def _exec(
    argv: list[str], *, env: Mapping[str, str], fds: tuple[int, ...], log: int
) -> subprocess.Popen[bytes]:
    """Start ``argv``. Popen uses vfork: under uvloop, asyncio's fork of the whole daemon
    would stall the event loop for milliseconds per process. Call it on the event loop's
    thread: the parent-death signal fires when the thread that started a process ends."""
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=fds,
            env=env,
            cwd="/",
            start_new_session=True,  # Ctrl-C in the daemon's terminal must not hit instances
        )
    except OSError as exc:
        raise Unavailable(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc


def _pidfd(process: subprocess.Popen[bytes]) -> int:
    """A pidfd for ``process``: readable once it exits."""
    try:
        return os.pidfd_open(process.pid)
    except OSError as exc:
        raise Unavailable(f"Node.js instances need Linux 5.3 or newer (pidfd_open): {exc}") from exc


def _kill_now(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap a process nobody will follow (blocks only while the kernel kills it)."""
    process.kill()
    process.wait()


async def _exit_status(process: subprocess.Popen[bytes], pidfd: int) -> int:
    """The exit status (-N: killed by signal N), awaited through the pidfd (closed here): no
    thread, and no SIGCHLD handler that could reap another part's children."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, resolve, exited)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()  # it has exited: this reaps it at once
