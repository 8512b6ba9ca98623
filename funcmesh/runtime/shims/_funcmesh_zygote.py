"""Funcmesh Python zygote: a warmed-up interpreter that forks one worker per request of the daemon.

Started by the daemon as ``python -s _funcmesh_zygote.py`` with an AF_UNIX SOCK_SEQPACKET
control socket (fd ``$FUNCMESH_CONTROL_FD``, default 3). One JSON object per packet; the fds of
a spawn (listening socket, log pipe) ride along as SCM_RIGHTS. Messages:

  zygote -> daemon  {"op": "hello", "pid", "python"}
  daemon -> zygote  {"op": "links", "namespace", "version", "env"}   (no answer)
  daemon -> zygote  {"op": "spawn", <SpawnRequest fields>, "links"?, "secrets"?, "mesh"?} +
                    [listen fd, log fd, with "secrets": true a memfd of the function's Secrets,
                    with "mesh": {"cidr"} a read-only memfd of its mesh credentials, last]
  zygote -> daemon  {"op": "spawned", "pod", "pid"}  or  {"op": "error", "pod", "error"}
  zygote -> daemon  {"op": "ready", "pod", "pid"}  or  {"op": "failed", "pod", "pid", "error"}
  daemon -> zygote  {"op": "kill", "pid", "signal"}
  zygote -> daemon  {"op": "exited", "pod", "pid", "returncode"}   (-N: killed by signal N)

A namespace's Kubernetes service variables (thousands with a few hundred Services) come once,
in a "links" message, and again only when they change; a spawn names them with
``"links": {"namespace", "version"}`` and carries only the instance's own variables, which win.
The zygote prepares them for the C ``environ`` and ``os.environ`` as they arrive, so a worker
forked afterwards installs them without a step per variable (``install_environment``).

The zygote keeps one spare child forked ahead of need: it has shed the zygote's state and
rehearsed serving a request (so the memory pages serving touches are copied already), and waits
for its spawn request on a private socket. A spawn hands the request to the spare and answers
"spawned" at once; the next spare is forked once the zygote has been idle for a moment. The
child closes its copy of the control socket at once (the handler's import is user code, which
must not be able to forge messages or shut the socket down for every worker) and reports
"loaded" or the load error through a pipe of its own, which the zygote relays as "ready" or
"failed". On EOF of the control socket the zygote SIGKILLs its children and exits 0.

Secret values reach a worker only through the memfd, which the zygote passes on unread: what
the zygote reads stays in its memory, and every later worker inherits that. The same goes for
the mesh credentials (certificate and key of the instance's identity): the worker reads them
itself, when its code first calls a mesh VIP (``_funcmesh_mtls.py``). As root, the worker
mounts them in a private mount namespace (``_funcmesh_secrets.py``) before dropping privileges.

As root, once at start and after its own imports, the zygote moves into a mount namespace of
its own that every worker inherits, where the interpreter is readable for the user workers drop
to, even when it lives below /root (``_funcmesh_interpreter_mounts.py``); the rest of such a
directory is hidden there. Where that is impossible it prints one warning, which the daemon logs.

Must not: import anything outside the standard library (it runs in the user's interpreter,
Python 3.8 or newer), import the daemon, or let a forked child return into the zygote loop.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import gc
import json
import os
import platform
import select
import signal
import site
import socket
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

CONTROL_FD_ENV = "FUNCMESH_CONTROL_FD"
DAEMON_PID_ENV = "FUNCMESH_DAEMON_PID"
MAX_MESSAGE_BYTES = 256 * 1024
SPARE_DELAY_S = 0.01  # after a spawn: the new worker loads and serves first, then we fork
SPARE_RETRY_S = 1.0  # after a spare died or could not be forked
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RLIMIT_THREAD_STACK_BYTES = 2 * 1024 * 1024
MAX_ERROR_CHARS = 900  # a load report stays below PIPE_BUF (4 KiB), so it arrives whole
FD_BYTES = array.array("i").itemsize
PR_SET_PDEATHSIG = 1
OWN_VARIABLES_ROOM = 64  # a worker's own variables beyond the shared ones, in ready-made blocks

# What handlers typically import, loaded once here so forked workers start warm.
WARM_MODULES = (
    "base64",
    "binascii",
    "calendar",
    "collections",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "email.message",
    "email.parser",
    "email.policy",
    "email.utils",
    "encodings.idna",  # every getaddrinfo of a host name needs it; nobody may not read it later
    "enum",
    "functools",
    "gzip",
    "hashlib",
    "hmac",
    "html",
    "http",
    "http.client",
    "http.cookies",
    "importlib",
    "io",
    "itertools",
    "json",
    "logging",
    "math",
    "mimetypes",
    "pathlib",
    "random",
    "re",
    "resource",
    "secrets",
    "shutil",
    "socket",
    "ssl",
    "string",
    "struct",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "traceback",
    "typing",
    "unicodedata",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "zlib",
)

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = getattr(_libc, "prctl", None)
_secrets: ModuleType | None = None  # _funcmesh_secrets, imported by main() with the worker
_names: ModuleType | None = None  # _funcmesh_names: cluster names for the handler's code
_mtls: ModuleType | None = None  # _funcmesh_mtls: its identity on calls to mesh VIPs
_interpreter_mounts: ModuleType | None = None  # _funcmesh_interpreter_mounts, used at start
_environ_block: Any = None  # the worker's C environment (install_environment)


def _environ_pointer() -> Any:
    """glibc's ``environ`` variable as a ctypes pointer (None without the symbol); looked up
    here once, so that workers inherit it."""
    try:
        return ctypes.c_void_p.in_dll(_libc, "environ")
    except ValueError:
        return None


_environ = _environ_pointer()
# Every array length is a class of its own, and making one costs more than filling it: the
# zygote makes the blocks' classes ahead, workers only instantiate them.
_OWN_BLOCK = ctypes.c_char_p * (OWN_VARIABLES_ROOM + 1)


def set_parent_death_signal() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux only)."""
    if _prctl is not None and _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")


def returncode(status: int) -> int:
    """A wait status as subprocess reports it: exit status, or minus the signal number."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def receive_fds(ancdata: list[Any]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % FD_BYTES])
    return list(fds)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class Spare:
    """A forked child waiting for its assignment: fork and warm-up are off the critical path."""

    __slots__ = ("channel", "generation", "pid", "status_read")

    def __init__(self, pid: int, channel: socket.socket, status_read: int, generation: int) -> None:
        self.pid = pid
        self.channel = channel  # the spawn request and its 2 fds arrive here, once
        self.status_read = status_read  # the worker's one load report comes back here
        self.generation = generation  # "links" messages before its fork: it lacks later ones


class SharedEnvironment:
    """A namespace's service variables, prepared once: the ``K=V`` strings and an array of
    pointers to them for the C ``environ``, and the encoded pairs for ``os.environ``.

    A worker forked after they came copies the pointer array as a whole and takes the encoded
    pairs over, handling only its own few variables one by one; ``message`` (as received) goes
    to a spare that was forked before they came.
    """

    __slots__ = (
        "block_type",
        "data",
        "entries",
        "generation",
        "index",
        "message",
        "pointers",
        "version",
    )

    def __init__(self, env: dict[str, str], *, version: int, generation: int, message: bytes):
        self.version = version
        self.generation = generation
        self.message = message
        self.entries = [f"{key}={value}".encode() for key, value in env.items()]
        self.pointers = (ctypes.c_char_p * len(self.entries))(*self.entries)
        self.block_type = ctypes.c_char_p * (len(self.entries) + OWN_VARIABLES_ROOM + 1)
        self.index = {key: at for at, key in enumerate(env)}  # where a worker's own one goes
        encode_key = getattr(os.environ, "encodekey", None)
        encode_value = getattr(os.environ, "encodevalue", None)
        self.data: dict[bytes, bytes] | None = None  # None: workers take the slow way
        if encode_key is not None and encode_value is not None:
            self.data = {encode_key(key): encode_value(value) for key, value in env.items()}

    @classmethod
    def from_message(
        cls, message: dict[str, Any], *, generation: int, raw: bytes
    ) -> tuple[str, SharedEnvironment]:
        """The namespace and its variables from a "links" message; ValueError if malformed."""
        namespace, version, env = (
            message.get("namespace"),
            message.get("version"),
            message.get("env"),
        )
        if (
            not isinstance(namespace, str)
            or not isinstance(version, int)
            or not isinstance(env, dict)
        ):
            raise ValueError("a links message needs a namespace, a version and an env")
        if not all(isinstance(value, str) for value in env.values()):
            raise ValueError(f"the service variables of namespace {namespace} must be strings")
        return namespace, cls(env, version=version, generation=generation, message=raw)


class Zygote:
    """The fork loop: spawn requests in, lifecycle reports out.

    One spare child is kept forked ahead: a spawn hands the request to it and answers
    "spawned" at once; the next spare is forked once the zygote has been idle for a moment,
    so the fork does not compete with the worker that is loading.
    """

    def __init__(self, control: socket.socket, worker: ModuleType) -> None:
        self.control = control
        self.worker = worker
        self.pid = os.getpid()
        self.children: dict[int, str | None] = {}  # pid -> pod (None: the spare)
        self.status_pipes: dict[int, int] = {}  # read fd -> pid, until it reported
        self.spare: Spare | None = None
        self.links: dict[str, SharedEnvironment] = {}  # by namespace, the latest version
        self.links_generation = 0  # how many "links" messages came
        self.spare_due = time.monotonic()  # when to fork the next spare, if there is none
        self.poller = select.poll()
        self.buffer = bytearray(MAX_MESSAGE_BYTES)  # allocating one per message costs more
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, _ignore_signal)  # a Python handler makes wakeups happen
        self.send({"op": "hello", "pid": self.pid, "python": platform.python_version()})
        self.poller.register(self.control, select.POLLIN)
        self.poller.register(self.wake_read, select.POLLIN)
        while True:
            for fd, _ in self.poller.poll(self.poll_timeout_ms()):
                if fd == self.wake_read:
                    self.drain_wakeups()
                    self.reap()
                elif fd in self.status_pipes:
                    self.relay_status(fd)
                elif fd == self.control.fileno() and not self.receive():
                    self.kill_children()
                    return 0
            if self.spare is None and time.monotonic() >= self.spare_due:
                self.spare = self.fork_spare_or_none()

    def poll_timeout_ms(self) -> int | None:
        if self.spare is not None:
            return None
        return max(0, int((self.spare_due - time.monotonic()) * 1000) + 1)

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the daemon is gone: the next receive sees EOF
            self.control.send(json.dumps(message).encode("utf-8"))

    def receive(self) -> bool:
        """Handle one message; False once the daemon has closed the control socket."""
        try:
            size, ancdata, flags, _ = self.control.recvmsg_into(
                [self.buffer], socket.CMSG_SPACE(4 * FD_BYTES)
            )
        except OSError:
            return False
        fds = receive_fds(ancdata)
        data = bytes(self.buffer[:size])
        if not data:
            close_fds(fds)
            return False
        try:
            message = json.loads(data)
            op, pod = message.get("op"), message.get("pod_name")
        except (ValueError, AttributeError) as exc:
            close_fds(fds)
            self.send({"op": "error", "pod": None, "error": f"unreadable message: {exc}"})
            return True
        wanted = (
            2 + bool(message.get("secrets")) + bool(message.get("mesh")) if op == "spawn" else 2
        )
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            self.send({"op": "error", "pod": pod, "error": "message truncated"})
        elif op == "links":
            self.keep_links(message, data)
        elif op == "spawn" and len(fds) == wanted:
            self.spawn(pod, data, message.get("links"), fds)
        elif op == "spawn":
            error = f"spawn needs {wanted} fds, got {len(fds)}"
            self.send({"op": "error", "pod": pod, "error": error})
        elif op == "kill":
            self.kill(message)
        else:
            self.send({"op": "error", "pod": pod, "error": f"unknown op {op!r}"})
        close_fds(fds)  # the worker has its own copies now
        return True

    def keep_links(self, message: dict[str, Any], raw: bytes) -> None:
        """A namespace's service variables, new or changed: prepare them for the next workers."""
        try:
            namespace, shared = SharedEnvironment.from_message(
                message, generation=self.links_generation + 1, raw=raw
            )
        except (ValueError, TypeError) as exc:
            self.send({"op": "error", "pod": None, "error": f"unusable service variables: {exc}"})
            return
        self.links_generation += 1
        self.links[namespace] = shared
        gc.freeze()  # like the warmed heap: workers' collections need not visit (and copy) them

    def linked(self, ref: Any) -> SharedEnvironment | None:
        """The service variables a spawn request names (None: it names none); ValueError if
        this zygote does not have that version."""
        if ref is None:
            return None
        namespace, version = ref.get("namespace"), ref.get("version")
        shared = self.links.get(namespace)
        if shared is None or shared.version != version:
            raise ValueError(
                f"the zygote lacks version {version} of the service variables of {namespace}"
            )
        return shared

    def spawn(self, pod: str, request: bytes, links: Any, fds: list[int]) -> None:
        """Hand the request to the spare (a fresh child if there is none or it died)."""
        try:
            shared = self.linked(links)
        except (ValueError, AttributeError) as exc:
            self.send({"op": "error", "pod": pod, "error": str(exc)})
            return
        spare, self.spare = self.spare, None
        if spare is None or not self.assign(spare, pod, request, fds, shared):
            try:
                spare = self.fork_spare()
            except OSError as exc:
                self.send({"op": "error", "pod": pod, "error": f"fork failed: {exc}"})
                return
            if not self.assign(spare, pod, request, fds, shared):
                self.send({"op": "error", "pod": pod, "error": "the new worker died at once"})
                return
        self.send({"op": "spawned", "pod": pod, "pid": spare.pid})
        self.spare_due = time.monotonic() + SPARE_DELAY_S

    def assign(
        self,
        spare: Spare,
        pod: str,
        request: bytes,
        fds: list[int],
        shared: SharedEnvironment | None,
    ) -> bool:
        try:
            if shared is not None and shared.generation > spare.generation:
                spare.channel.send(shared.message)  # it was forked before they came
            spare.channel.sendmsg(
                [request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        except OSError:
            close_fds([spare.status_read])
            return False  # it died; reap() forgets it
        finally:
            spare.channel.close()
        self.children[spare.pid] = pod
        self.status_pipes[spare.status_read] = spare.pid
        self.poller.register(spare.status_read, select.POLLIN)
        return True

    def fork_spare(self) -> Spare:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would write the zygote's buffered text again
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        status_read, status_write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            close_fds([status_read, status_write])
            raise
        if pid == 0:
            exit_status = 70  # EX_SOFTWARE: the child's own code broke
            try:
                ours.close()
                os.close(status_read)
                exit_status = self.run_spare(theirs, status_write)
            except BaseException:  # noqa: BLE001 -- report, then exit: never back into the loop
                traceback.print_exc()
            finally:
                os._exit(exit_status)
        theirs.close()
        os.close(status_write)
        self.children[pid] = None
        return Spare(pid, ours, status_read, self.links_generation)

    def fork_spare_or_none(self) -> Spare | None:
        try:
            return self.fork_spare()
        except OSError as exc:
            print(f"funcmesh zygote: cannot fork a spare: {exc}", file=sys.stderr)
            self.spare_due = time.monotonic() + SPARE_RETRY_S
            return None

    def relay_status(self, fd: int) -> None:
        """Pass a worker's one report (loaded or not) on to the daemon, naming it ourselves."""
        pid = self.status_pipes.pop(fd)
        self.poller.unregister(fd)
        try:
            data = os.read(fd, MAX_MESSAGE_BYTES)
        finally:
            os.close(fd)
        if not data:
            return  # it died before reporting: "exited" tells the daemon
        try:
            error = json.loads(data).get("error")
        except (ValueError, AttributeError):
            error = "the worker sent an unreadable load report"
        message = {"op": "ready", "pod": self.children.get(pid), "pid": pid}
        if error is not None:
            message.update(op="failed", error=str(error))
        self.send(message)

    def kill(self, message: dict[str, Any]) -> None:
        pid = message.get("pid")
        # only our unreaped workers: a recycled pid is never hit
        if isinstance(pid, int) and self.children.get(pid) is not None:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(pid, int(message.get("signal", signal.SIGKILL)))

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for fd, owner in list(self.status_pipes.items()):
                if owner == pid:
                    self.relay_status(fd)  # its report, if any, goes out before "exited"
            pod = self.children.pop(pid, None)
            if pod is not None:
                self.send(
                    {"op": "exited", "pod": pod, "pid": pid, "returncode": returncode(status)}
                )
            elif self.spare is not None and self.spare.pid == pid:
                print(
                    f"funcmesh zygote: spare {pid} died: {returncode(status)}",
                    file=sys.stderr,
                )
                self.spare.channel.close()
                close_fds([self.spare.status_read])
                self.spare = None
                self.spare_due = time.monotonic() + SPARE_RETRY_S

    def kill_children(self) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self.children.clear()

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 512):
                pass
        except BlockingIOError:
            pass

    # -- in the forked child from here on: never return into the loop above

    def run_spare(self, channel: socket.socket, status_fd: int) -> int:
        """Shed the zygote's state, rehearse, wait for the assignment, become the worker."""
        set_parent_death_signal()
        if os.getppid() != self.pid:
            return 1  # the zygote died between fork and prctl
        # User code never sees the control socket: a handler could forge messages or shut it
        # down for every worker. Its one report goes through its own pipe, relayed by the zygote.
        self.control.close()
        close_fds([self.wake_read, self.wake_write, *list(self.status_pipes)])
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the worker sets SIGTERM/SIGINT itself
        if not _has_data(channel):
            self.worker.rehearse()  # pages the serving path touches get copied now, not later
        while True:
            size, ancdata, _, _ = channel.recvmsg_into(
                [self.buffer], socket.CMSG_SPACE(4 * FD_BYTES)
            )
            fds = receive_fds(ancdata)
            if not size:
                break
            request = json.loads(self.buffer[:size])
            if request.get("op") != "links":
                break
            self.keep_links(request, b"")  # they came after this spare was forked
        channel.close()
        if not size or len(fds) != 2 + bool(request.get("secrets")) + bool(request.get("mesh")):
            close_fds(fds)
            return 0  # the zygote is closing
        request["zygote_pid"] = self.pid
        shared = self.linked(request.get("links"))
        secrets_fd = fds[2] if request.get("secrets") else None
        mesh_fd = fds[-1] if request.get("mesh") else None
        return become_worker(
            self.worker,
            request,
            fds[0],
            fds[1],
            status_fd,
            secrets_fd,
            shared=shared,
            mesh_fd=mesh_fd,
        )


def become_worker(
    worker: ModuleType,
    request: dict[str, Any],
    listen_fd: int,
    log_fd: int,
    status_fd: int,
    secrets_fd: int | None = None,
    *,
    shared: SharedEnvironment | None = None,
    mesh_fd: int | None = None,
) -> int:
    """Join the cgroup, take the log, load the function, report, and serve."""
    # A SIGTERM that comes before the server can drain waits for it (default: instant death).
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    load_error = None
    procs = request.get("cgroup_procs")
    if procs:  # first: what the worker allocates from here on counts against the cgroup
        try:
            _join_cgroup(procs, os.getpid())
        except OSError as exc:
            load_error = f"cannot join cgroup {procs}: {exc}"
    # The line-buffered sys.stdout/sys.stderr made at start-up write to fds 1 and 2.
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    if log_fd > 2:
        os.close(log_fd)
    handler = None
    if load_error is None:
        try:
            handler = load(worker, request, secrets_fd, shared=shared, mesh_fd=mesh_fd)
        except BaseException as exc:  # noqa: BLE001 -- any failure is reported, then served
            load_error = worker.describe_exception(exc)
            traceback.print_exc()
    elif secrets_fd is not None:
        os.close(secrets_fd)
    report_load(status_fd, load_error)
    context = worker.make_context(
        request.get("function_name", ""),
        request.get("timeout_s", 180.0),
        request.get("runtime", ""),
        request.get("memory_limit", "0"),
    )
    listener = socket.socket(fileno=listen_fd)
    app = worker.FunctionApp(handler, context, load_error)
    return worker.Server(listener, app).serve_forever()  # type: ignore[no-any-return]


def report_load(status_fd: int, load_error: str | None) -> None:
    if load_error is not None:
        print(f"funcmesh: function failed to load: {load_error}", file=sys.stderr)
    try:
        if load_error is None:
            os.write(status_fd, b'{"error": null}')
        else:
            report = json.dumps({"error": load_error[:MAX_ERROR_CHARS]}, ensure_ascii=False)
            os.write(status_fd, report.encode("utf-8", "backslashreplace"))
    finally:
        os.close(status_fd)


def load(
    worker: ModuleType,
    request: dict[str, Any],
    secrets_fd: int | None = None,
    *,
    shared: SharedEnvironment | None = None,
    mesh_fd: int | None = None,
) -> Any:
    """Apply Secrets, limits, identity, environment and paths, then import the handler."""
    import resource

    if mesh_fd is not None:  # the handler's own children must not get its credentials
        os.set_inheritable(mesh_fd, False)
    secret_env = {}
    if secrets_fd is not None:  # first: mounting needs root (and memory a limit may deny)
        if _secrets is None:
            os.close(secrets_fd)
            raise RuntimeError("the zygote did not load _funcmesh_secrets")
        payload = _secrets.read_payload(secrets_fd)
        if payload.get("mounts"):
            _secrets.mount_secrets(payload["mounts"])
        secret_env = payload.get("env") or {}
    limit = request.get("memory_limit_bytes")
    if request.get("use_rlimit") and limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # Address space, not memory, is limited: 8 MiB default stacks would cap connections.
        threading.stack_size(RLIMIT_THREAD_STACK_BYTES)
    uid, gid = request.get("uid"), request.get("gid")
    if gid is not None:
        if os.getuid() == 0:
            os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    if uid is not None or gid is not None:
        # The kernel clears the parent-death signal when credentials change: set it again,
        # or a worker running as nobody would outlive a daemon killed with SIGKILL.
        set_parent_death_signal()
        if os.getppid() != request.get("zygote_pid", os.getppid()):
            os._exit(1)  # the zygote died before the signal was set again
    # empty before: the zygote cleared its own. Env values from Secrets win over the service
    # variables, Kubeless's variables (in the request) over both.
    install_environment({**secret_env, **(request.get("env") or {})}, shared)
    resolver = None if _names is None else _names.install(os.environ)  # needs the DNS server
    if mesh_fd is not None and _mtls is not None:  # read at its first call to a mesh VIP
        _mtls.install(mesh_fd, request["mesh"]["cidr"], resolver)
    worker.propagate_trace_context()  # calls the handler makes carry the call's trace headers
    code_dir = request["code_dir"]
    os.chdir(code_dir)
    sys_paths = list(request.get("sys_paths") or ())
    sys.path[:] = [code_dir, *sys_paths, *sys.path]
    for path in sys_paths:
        site.addsitedir(path)  # their .pth files: editable installs, namespace packages
    return worker.load_function(request["module"], request["function"])


def install_environment(env: dict[str, str], shared: SharedEnvironment | None = None) -> None:
    """Make ``shared``'s variables and then ``env``'s (which win) the (empty until now) process
    environment, in one step.

    ``os.environ.update`` calls setenv once per variable, and glibc's setenv scans the whole
    environment each time: with the service variables of a few hundred Services (eight per
    Service, as the kubelet writes them) that costs milliseconds per cold start. Here the C
    ``environ`` array is built at once, from the pointers ``shared`` prepared in the zygote,
    and ``os.environ``'s mapping is ``shared``'s encoded pairs, taken over as they are (this
    process is a fork: its copy is its own) and completed with ``env``'s. Where that is not
    possible (no glibc symbol, another Python), the slow way.
    """
    global _environ_block
    try:
        if _environ is None or (shared is not None and shared.data is None):
            raise AttributeError("no C environ, or no encoded os.environ mapping")
        block = _environ_array(env, shared)
        encode_key = os.environ.encodekey  # type: ignore[attr-defined]
        encode_value = os.environ.encodevalue  # type: ignore[attr-defined]
        pairs = [(encode_key(key), encode_value(value)) for key, value in env.items()]
        _environ.value = ctypes.addressof(block)
        data = os.environ._data  # type: ignore[attr-defined]
        if shared is None or shared.data is None:
            data.clear()
        elif _adopt_mapping(shared.data):
            data = shared.data  # copying thousands of pairs costs more than all the rest
        else:
            data.clear()
            data.update(shared.data)
        data.update(pairs)
        _environ_block = (block, shared)  # the C array points into these: keep them alive
    except (AttributeError, ValueError, TypeError):
        if shared is not None:
            os.environ.update(entry.decode().split("=", 1) for entry in shared.entries)
        os.environ.update(env)


def _environ_array(env: dict[str, str], shared: SharedEnvironment | None) -> Any:
    """The NULL-terminated ``K=V`` pointer array: ``shared``'s, copied as a whole, with
    ``env``'s in place of theirs or after them."""
    size = 0 if shared is None else len(shared.entries)
    block = _block_type(size, len(env), shared)()  # zeroed: NULL-terminated
    if shared is not None:
        ctypes.memmove(block, shared.pointers, ctypes.sizeof(shared.pointers))
    end = size
    for key, value in env.items():
        at = None if shared is None else shared.index.get(key)
        if at is None:
            at, end = end, end + 1
        block[at] = f"{key}={value}".encode()  # the array keeps the bytes alive
    return block


def _adopt_mapping(data: dict[bytes, bytes]) -> bool:
    """Make ``data`` the mapping behind ``os.environ`` and ``os.environb``, if they share one
    (as CPython's do on POSIX); False if they do not."""
    environb = getattr(os, "environb", None)
    if environb is not None and getattr(environb, "_data", None) is not os.environ._data:  # type: ignore[attr-defined]
        return False
    os.environ._data = data  # type: ignore[attr-defined]
    if environb is not None:
        environb._data = data
    return True


def _block_type(size: int, own: int, shared: SharedEnvironment | None) -> Any:
    """The class of an ``environ`` array for ``size`` shared and ``own`` own variables and the
    closing NULL: one the zygote made, unless the worker has more variables of its own."""
    if own > OWN_VARIABLES_ROOM:
        return ctypes.c_char_p * (size + own + 1)
    return _OWN_BLOCK if shared is None else shared.block_type


def _has_data(channel: socket.socket) -> bool:
    poller = select.poll()
    poller.register(channel, select.POLLIN)
    return bool(poller.poll(0))


def _ignore_signal(signum: int, frame: Any) -> None:
    pass


def _line_buffered(fd: int) -> Any:
    return open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)


def _join_cgroup(procs: str, pid: int) -> None:
    fd = os.open(procs, os.O_WRONLY)
    try:
        os.write(fd, b"%d" % pid)
    finally:
        os.close(fd)


def import_worker(shim_dir: str) -> ModuleType:
    """Import the worker, secrets, names and mTLS shims and warm the stdlib, with the shim dir
    on sys.path only meanwhile (a handler's module of the same name must not shadow them)."""
    import importlib

    global _secrets, _names, _mtls, _interpreter_mounts
    sys.path.insert(0, shim_dir)
    try:
        worker = importlib.import_module("_funcmesh_worker")
        _secrets = importlib.import_module("_funcmesh_secrets")
        _names = importlib.import_module("_funcmesh_names")
        _mtls = importlib.import_module("_funcmesh_mtls")
        _interpreter_mounts = importlib.import_module("_funcmesh_interpreter_mounts")
        for name in WARM_MODULES:
            # an interpreter built without one (ssl, say) serves without it
            with contextlib.suppress(ImportError):
                importlib.import_module(name)
    finally:
        here = os.path.realpath(shim_dir)
        sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != here]
    return worker


def reach_interpreter(shim_dir: str) -> None:
    """As root, once: a mount namespace in which workers, once they have dropped to nobody,
    can still read the interpreter (``_funcmesh_interpreter_mounts``); one warning on stderr
    (the daemon logs it) where that is needed and impossible."""
    if _interpreter_mounts is None:
        return
    warning = _interpreter_mounts.make_reachable([shim_dir])
    if warning is not None:
        print(warning, file=sys.stderr)


def main() -> int:
    set_parent_death_signal()
    daemon_pid = os.environ.get(DAEMON_PID_ENV)
    if daemon_pid and os.getppid() != int(daemon_pid):
        return 1  # the daemon died before prctl took effect
    control = socket.socket(fileno=int(os.environ.get(CONTROL_FD_ENV, "3")))
    shim_dir = os.path.dirname(os.path.abspath(__file__))
    worker = import_worker(shim_dir)
    reach_interpreter(shim_dir)  # after the imports, which read the host as it is
    os.environ.clear()  # workers get theirs from the spawn request; nothing to clear after fork
    sys.stdout = sys.__stdout__ = _line_buffered(1)  # type: ignore[misc] # used by every worker
    sys.stderr = sys.__stderr__ = _line_buffered(2)  # type: ignore[misc]
    gc.collect()
    gc.freeze()  # keep the warmed heap shared between workers (no GC writes to its pages)
    return Zygote(control, worker).run()


if __name__ == "__main__":
    sys.exit(main())
