"""Starting one workload process through the launcher shim, and following it until it exits.

A workload's command runs below ``shims/_funcmesh_workload.py``, which the daemon starts in a
new session with the pod's environment: the shim gives the pod its own ``/etc/resolv.conf``,
``/etc/hosts`` and host name when asked to (cluster DNS: ``funcmesh.runtime.workload_dns``) and
the files of its mesh certificate when it has one (``funcmesh.runtime.mesh_credentials``),
drops to the worker identity, ties the process tree's life to the daemon's (even a SIGKILL of
the daemon ends every process of the pod), and reports on a pipe whether the command started
(``{"pid": N}``) or why not (``{"error": ...}``: the "executable file not found" a user must
see). A graceful stop is SIGTERM to the shim, which passes it on to the process group; ``kill``
is SIGKILL to the whole group.

Must not: decide what runs or when (``funcmesh.runtime.workloads`` does), read os.environ, or
block the event loop (processes start with vfork: see ``node_processes._exec``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from funcmesh.errors import FuncmeshError
from funcmesh.runtime.logs import LineSplitter

SHIM_PATH: Final = Path(__file__).parent / "shims" / "_funcmesh_workload.py"
STATUS_LIMIT_BYTES: Final = 64 * 1024
OUTPUT_DRAIN_S: Final = 0.5  # after an exit, for output still in the pipe


class StartFailed(FuncmeshError):
    """The command could not be started (not found, not executable, bad working directory)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchSpec:
    """One process to start: its argv, complete environment and working directory."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    uid: int | None = None  # the worker identity (a root daemon's workers run as nobody)
    gid: int | None = None
    # The pod's own resolv.conf and hosts (a directory with both), bind-mounted over /etc's in
    # a private mount namespace, and its host name (a UTS namespace): root only.
    etc_dir: str | None = None
    hostname: str | None = None
    # The pod's mesh credentials (a read-only memfd, ``funcmesh.runtime.mesh_credentials``): the
    # launcher writes Istio's cert-chain.pem, key.pem and root-cert.pem for the command into
    # ``mesh_dir`` (a tmpfs in its private mount namespace as root) and rewrites them after
    # each renewal.
    mesh_fd: int | None = None
    mesh_dir: str | None = None


class WorkloadProcess:
    """A started command (its launcher's pid) and its exit status (-N: killed by signal N)."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        pidfd: int,
        command_pid: int,
        output_closed: asyncio.Future[None] | None = None,
    ) -> None:
        self.pid = process.pid  # the launcher's, leader of the pod's process group
        self.command_pid = command_pid
        self._process = process
        self.exited: asyncio.Task[int] = asyncio.create_task(
            _exit_status(process, pidfd, output_closed), name=f"workload-{process.pid}"
        )

    def signal(self, sig: int) -> None:
        """``sig`` to the launcher, which passes SIGTERM/SIGINT on to the command."""
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL to every process of the group at once."""
        if not self.exited.done():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def stop(self, grace_s: float) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.exited), grace_s)
        except TimeoutError:
            self.kill()
            return await self.exited


async def launch(
    spec: LaunchSpec, *, output: Callable[[str], None] | None, python: str = sys.executable
) -> WorkloadProcess:
    """Start ``spec``; its output lines go to ``output`` (None: discarded). Raises
    StartFailed when the command cannot start."""
    status_read, status_write = os.pipe()
    log_read, log_write = os.pipe() if output is not None else (-1, subprocess.DEVNULL)
    try:
        process = _exec(python, spec, status_fd=status_write, log=log_write)
    except BaseException:
        for fd in (status_read, log_read):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        os.close(status_write)
        if log_write >= 0:
            os.close(log_write)
    output_closed: asyncio.Future[None] | None = None
    if output is not None:
        loop = asyncio.get_running_loop()
        output_closed = loop.create_future()
        pipe = os.fdopen(log_read, "rb", buffering=0)
        await loop.connect_read_pipe(lambda: _Output(output, output_closed), pipe)
    pidfd = os.pidfd_open(process.pid)
    try:
        report = await _read_status(status_read)
    except BaseException:  # cancelled: the daemon is stopping
        os.close(pidfd)
        _kill_now(process)
        raise
    if "pid" not in report:
        os.close(pidfd)
        _kill_now(process)
        raise StartFailed(str(report.get("error") or "the launcher exited before the start"))
    return WorkloadProcess(process, pidfd, int(str(report["pid"])), output_closed)


def _kill_now(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the group and reap the launcher (it is dying or dead: this does not block long)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _exec(python: str, spec: LaunchSpec, *, status_fd: int, log: int) -> subprocess.Popen[bytes]:
    """Start the launcher. On the event loop's thread: the parent-death signal it sets fires
    when the thread that started it ends."""
    argv = [python, "-I", "-S", str(SHIM_PATH), "--status-fd", str(status_fd)]
    argv += ["--parent", str(os.getpid()), "--cwd", spec.cwd]
    if spec.uid is not None:
        argv += ["--uid", str(spec.uid)]
    if spec.gid is not None:
        argv += ["--gid", str(spec.gid)]
    if spec.etc_dir is not None:
        argv += ["--etc", spec.etc_dir, "--hostname", spec.hostname or ""]
    fds: tuple[int, ...] = (status_fd,)
    if spec.mesh_fd is not None and spec.mesh_dir is not None:
        argv += ["--mesh-fd", str(spec.mesh_fd), "--mesh-dir", spec.mesh_dir]
        fds += (spec.mesh_fd,)
    try:
        return subprocess.Popen(
            [*argv, "--", *spec.argv],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=fds,
            env=dict(spec.env),
            cwd="/",
            start_new_session=True,  # one process group per pod; Ctrl-C of the daemon spares it
        )
    except OSError as exc:
        raise StartFailed(f"cannot start the launcher {python}: {exc.strerror or exc}") from exc


async def _read_status(fd: int) -> dict[str, object]:
    """The launcher's one-line report; empty when it ended without one."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STATUS_LIMIT_BYTES)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        line = await reader.readline()
    except ValueError:  # longer than the limit
        line = b""
    finally:
        transport.close()
    try:
        report = json.loads(line) if line.strip() else {}
    except ValueError:
        report = {}
    return report if isinstance(report, dict) else {}


class _Output(LineSplitter):
    """Output lines to a sink, and a future that resolves when the pipe closes."""

    def __init__(self, sink: Callable[[str], None], closed: asyncio.Future[None]) -> None:
        super().__init__(sink)
        self._closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        _resolve(self._closed)


async def _exit_status(
    process: subprocess.Popen[bytes], pidfd: int, output_closed: asyncio.Future[None] | None = None
) -> int:
    """The exit status, awaited through the pidfd (closed here): no thread, no SIGCHLD. With
    ``output_closed``, after the last output line was read too (or a short wait), so that the
    log of a process that crashed ends with what it printed last."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(pidfd, _resolve, exited)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    if output_closed is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(output_closed), OUTPUT_DRAIN_S)
    return process.wait()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
