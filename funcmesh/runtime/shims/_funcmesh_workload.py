"""Launcher of one workload process (a Deployment's container), run by the daemon.

The daemon starts this script (with its own interpreter, ``-I -S``) in a new session, with the
container's environment as this process's environment, and gives it the command to run. This
script then:

- sets its parent-death signal, so it learns when the daemon dies, even of SIGKILL, and becomes
  a child subreaper, so processes the command leaves behind are re-parented to it;
- with ``--etc DIR`` (a root daemon, cluster DNS), enters a mount namespace and a UTS namespace
  of its own, where DIR's ``resolv.conf`` and ``hosts`` are bind-mounted over ``/etc``'s and the
  host name is the pod's, as a container sees them; the mounts are private, so the machine never
  sees them, and they go away with the pod's last process. When that fails, the pod runs with
  the machine's files and its log says why;
- with ``--mesh-fd N --mesh-dir DIR`` (the pod has a mesh identity), writes Istio's files
  ``cert-chain.pem``, ``key.pem`` and ``root-cert.pem`` into DIR for the command, from the
  credentials in memfd N (JSON, ``funcmesh.runtime.mesh_credentials``; the command never gets
  the descriptor), and writes them again after each renewal (the daemon rewrites the memfd).
  As root DIR is a tmpfs mounted in the pod's private mount namespace, so other pods, which
  run as the same user, never see them; otherwise files 0600 in DIR (the pod's home);
- starts the command in its own process group (the session's), dropping to the worker identity
  first when one is given, with a parent-death signal of SIGKILL on the command itself;
- reports ``{"pid": N}`` or ``{"error": "..."}`` as one JSON line on the status descriptor;
- forwards SIGTERM and SIGINT to the process group (the daemon's graceful stop);
- when the command exits, kills whatever it left behind (as a container runtime kills a
  container's cgroup) and exits the same way the command did;
- when the daemon dies, kills the whole process tree at once.

Standard library only, Python 3.8 compatible: it runs in whatever interpreter runs the daemon.
Must not import the daemon, and must not outlive the daemon.
"""

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
ETC_FILES = ("resolv.conf", "hosts")
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MESH_PAYLOAD_BYTES = 1 << 16
MESH_REREAD_AFTER_S = 5.0  # after the payload's renewAt: the daemon renews at that time
MESH_RETRY_S = 30.0
START_ERROR_EXIT_CODE = 128  # what Kubernetes reports for a container that could not start

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option, value):
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _parse(argv):
    """``--status-fd N --parent PID [--uid U --gid G] [--cwd DIR] [--etc DIR --hostname NAME]
    [--mesh-fd N --mesh-dir DIR] -- COMMAND...``"""
    options = {"uid": None, "gid": None, "cwd": None, "etc": None, "hostname": None}
    options.update(mesh_fd=None, mesh_dir=None)
    words = list(argv)
    while words and words[0] != "--":
        key, value = words[0].lstrip("-").replace("-", "_"), words[1]
        options[key] = value
        words = words[2:]
    if not words or len(words) < 2:
        raise SystemExit("usage: _funcmesh_workload.py --status-fd N --parent PID -- COMMAND...")
    return options, words[1:]


def _report(fd, message):
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())
    os.close(fd)


_private_mounts = []  # [True] once this process has a private mount namespace


def _enter_private_mounts(namespaces=CLONE_NEWNS):
    """A mount namespace of this process's own (and ``namespaces``' others), every mount in it
    private. Private, recursively: on a systemd machine "/" is shared, and the mounts made
    here would otherwise show up in the machine's."""
    _check(_libc.unshare(namespaces), "unshare")
    flags = ctypes.c_ulong(MS_REC | MS_PRIVATE)
    _check(_libc.mount(b"none", b"/", None, flags, None), "making / private")
    _private_mounts.append(True)


def _enter_private_etc(etc_dir, hostname):
    """The pod's own /etc/resolv.conf, /etc/hosts and host name, for this process and all it
    starts. Whatever fails is said on stderr (the pod's log); the pod runs on regardless."""
    try:
        _enter_private_mounts(CLONE_NEWNS | CLONE_NEWUTS)
    except OSError as exc:
        _warn(f"no private /etc/resolv.conf, /etc/hosts or host name: {exc.strerror}")
        return
    for name in ETC_FILES:
        source = os.path.join(etc_dir, name)
        try:
            flags = ctypes.c_ulong(MS_BIND)
            _check(_libc.mount(source.encode(), f"/etc/{name}".encode(), None, flags, None), source)
        except OSError as exc:
            _warn(f"the pod keeps the machine's /etc/{name}: {exc.strerror}")
    if hostname:
        encoded = hostname.encode()
        try:
            _check(_libc.sethostname(encoded, ctypes.c_size_t(len(encoded))), "sethostname")
        except OSError as exc:
            _warn(f"the pod keeps the machine's host name: {exc.strerror}")


def _place_mesh_certs(fd, directory, uid, gid):
    """Istio's three files for the pod's mesh certificate in ``directory``; the renewal time
    they name (None when they could not be placed: said in the pod's log)."""
    try:
        payload = _read_mesh_payload(fd)
        if os.getuid() == 0:  # a tmpfs of the pod's own: its files are no other pod's business
            if not _private_mounts:
                _enter_private_mounts()
            os.makedirs(directory, mode=0o700, exist_ok=True)
            owner = f"uid={-1 if uid is None else uid},gid={-1 if gid is None else gid}"
            options = f"mode=0500,size=1m,{owner}" if uid is not None else "mode=0500,size=1m"
            flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC)
            mounted = _libc.mount(b"tmpfs", directory.encode(), b"tmpfs", flags, options.encode())
            _check(mounted, f"mounting a tmpfs on {directory}")
        else:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        _write_mesh_files(directory, payload, uid, gid)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _warn(f"no mesh certificate files in {directory}: {exc}")
        return None
    return float(payload["renewAt"])


def _read_mesh_payload(fd):
    for attempt in range(3):  # a read racing the daemon's rewrite does not parse
        try:
            payload = json.loads(os.pread(fd, MESH_PAYLOAD_BYTES, 0).decode("utf-8"))
            if isinstance(payload, dict) and "certChain" in payload:
                return payload
        except ValueError:
            pass
        time.sleep(0.01 * (attempt + 1))
    raise ValueError("the mesh credentials do not parse")


def _write_mesh_files(directory, payload, uid, gid):
    """cert-chain.pem and root-cert.pem 0444, key.pem 0400, owned by the pod's user, each
    replaced at once (a reader sees the old file or the new one)."""
    files = (
        ("cert-chain.pem", payload["certChain"], 0o444),
        ("key.pem", payload["key"], 0o400),
        ("root-cert.pem", payload["root"], 0o444),
    )
    for name, text, mode in files:
        staged = os.path.join(directory, f".{name}.new")
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
            if os.getuid() == 0 and uid is not None:
                os.fchown(fd, uid, -1 if gid is None else gid)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(staged, os.path.join(directory, name))


def _renew_mesh_certs(fd, directory, uid, gid, renew_at):
    """Forever (a daemon thread): after each renewal time, the files again from the memfd."""
    while True:
        time.sleep(max(renew_at + MESH_REREAD_AFTER_S - time.time(), 1.0))
        try:
            payload = _read_mesh_payload(fd)
            if float(payload["renewAt"]) > renew_at:
                _write_mesh_files(directory, payload, uid, gid)
                renew_at = float(payload["renewAt"])
                continue
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _warn(f"cannot renew the mesh certificate files: {exc}")
        renew_at = time.time() + MESH_RETRY_S - MESH_REREAD_AFTER_S


def _warn(message):
    with contextlib.suppress(OSError):
        os.write(2, f"funcmesh: {message}\n".encode())


def _enter_pod(uid, gid):
    """Runs in the child between fork and exec: the worker identity, then death with us."""
    if gid is not None:
        if os.getuid() == 0:
            os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    # After the identity change: the kernel clears the parent-death signal when it changes.
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _descendants():
    """Every process below this one (children list each task's direct children)."""
    found = []
    frontier = [os.getpid()]
    while frontier:
        pid = frontier.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    children = [int(word) for word in handle.read().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            frontier.extend(children)
    return found


def _kill_everything():
    """The daemon is gone: every process of the pod dies now, this one last."""
    for pid in _descendants():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)
    os._exit(1)


def _kill_leftovers():
    for pid in _descendants():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except OSError:  # ChildProcessError: none left
            return


def _exit_like(status):
    """Exit with the command's exit code, or die of the signal that killed it."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler
            signal.signal(number, signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def main(argv):
    options, command = _parse(argv)
    status_fd, parent = int(options["status_fd"]), int(options["parent"])
    os.set_inheritable(status_fd, False)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        _kill_everything()  # the daemon died before the death signal was set
    _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def on_terminate(number, _frame):
        if os.getppid() != parent:
            _kill_everything()
        # Pass the signal on to the whole group; ignored here meanwhile, so that the kernel
        # drops our own copy instead of calling this handler again.
        signal.signal(number, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.killpg(0, number)
        signal.signal(number, on_terminate)

    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGINT, on_terminate)
    if options["etc"] is not None:
        _enter_private_etc(options["etc"], options["hostname"])
    uid = None if options["uid"] is None else int(options["uid"])
    gid = None if options["gid"] is None else int(options["gid"])
    mesh_fd = None if options["mesh_fd"] is None else int(options["mesh_fd"])
    renew_at = None
    if mesh_fd is not None:
        os.set_inheritable(mesh_fd, False)
        renew_at = _place_mesh_certs(mesh_fd, options["mesh_dir"], uid, gid)
    try:
        child = subprocess.Popen(
            command,
            cwd=options["cwd"],
            stdin=subprocess.DEVNULL,
            close_fds=True,
            preexec_fn=lambda: _enter_pod(uid, gid),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        _report(status_fd, {"error": _start_error(command, options["cwd"], exc)})
        os._exit(START_ERROR_EXIT_CODE)
    _report(status_fd, {"pid": child.pid})
    if renew_at is not None:  # after the fork: a thread must not exist while preexec_fn runs
        renewer = threading.Thread(
            target=_renew_mesh_certs,
            args=(mesh_fd, options["mesh_dir"], uid, gid, renew_at),
            daemon=True,
        )
        renewer.start()
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child.pid:
            break
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_leftovers()
    _exit_like(status)


def _start_error(command, cwd, exc):
    """The reason a command did not start, in the words of a container runtime."""
    if isinstance(exc, FileNotFoundError) and exc.filename == cwd and cwd:
        return f'chdir to cwd ("{cwd}") set in config.json failed: no such file or directory'
    if isinstance(exc, FileNotFoundError):
        return f'exec: "{command[0]}": executable file not found in $PATH'
    if isinstance(exc, PermissionError):
        return f'exec: "{command[0]}": permission denied'
    reason = exc.strerror if isinstance(exc, OSError) else exc
    return f'exec: "{command[0]}": {reason}'


if __name__ == "__main__":
    main(sys.argv[1:])
