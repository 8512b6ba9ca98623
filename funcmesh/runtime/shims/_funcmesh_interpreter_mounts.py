"""Funcmesh interpreter mounts: workers that drop to ``nobody`` can still read their interpreter.

A root daemon's Python workers switch to an unprivileged user (``nobody``) right after the fork
from the zygote. When the interpreter lives below a directory that user cannot pass (pyenv in
``/root``, mode 0700), a handler can import only what the zygote loaded already:
``import concurrent.futures`` answers ModuleNotFoundError, and so does every C extension of
lib-dynload that was not loaded yet.

The zygote calls :func:`make_reachable` once, at start, as root, after its own imports. It
moves the zygote into a private mount namespace (every worker it forks inherits it) in which
each blocking directory (one the worker user cannot pass, such as ``/root``) is covered by a
tiny read-only tmpfs that holds only the paths workers read: ``sys.base_prefix``,
``sys.prefix``, ``sys.exec_prefix``, the ``sys.path`` entries that exist and the shim
directory, each a read-only bind mount of the real one. So:

* nothing changes on the host: no permission, no file; other processes see nothing of it;
* the rest of a covered directory is hidden from functions, even from one running as root:
  they cannot list ``/root`` or read the daemon's state when ``FUNCMESH_HOME`` is there;
* it costs a few mounts once per zygote, nothing per worker. A worker that mounts its Secrets
  (``_funcmesh_secrets.py``) unshares again, from this namespace.

Where it cannot be done (no CAP_SYS_ADMIN, unshare forbidden) the zygote prints the warning
:func:`make_reachable` returns, and workers keep the host's view (and today's imports).

Must not: change anything outside its own mount namespace, cost anything per worker, import
anything outside the standard library (it runs in the user's interpreter, Python 3.8 or
newer), or import the daemon.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

    Step = Tuple[str, str]

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
MNT_DETACH = 2
O_PATH = getattr(os, "O_PATH", 0o10000000)
SAFE_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
KEPT_FLAGS = SAFE_FLAGS  # of the real directory: its bind mount keeps them (ST_* == MS_*)
COVER_OPTIONS = "mode=0755,size=64k"  # directories and empty mount points only
NOBODY_ID = 65534  # when the machine has no user "nobody" (funcmesh.app.host.worker_identity)

COVER = "cover"  # a tmpfs over a directory the workers cannot pass
EXPOSE = "expose"  # a read-only bind mount of a path they read, below a cover

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_libc.unshare.argtypes = (ctypes.c_int,)


def worker_identity() -> Tuple[int, int]:
    """The uid and gid a root daemon's workers run as: ``nobody``'s (as the daemon picks it)."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return NOBODY_ID, NOBODY_ID
    return entry.pw_uid, entry.pw_gid


def may_enter_as(uid: int, gid: int) -> Callable[[str], bool]:
    """Whether ``uid``:``gid`` (no supplementary groups: workers drop them) may pass a
    directory, by its owner, group and mode."""

    def may_enter(directory: str) -> bool:
        try:
            info = os.stat(directory)
        except OSError:
            return False
        if info.st_uid == uid:
            bit = stat.S_IXUSR
        elif info.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        return bool(info.st_mode & bit)

    return may_enter


def needed_paths(extra: Iterable[str] = ()) -> List[str]:
    """What workers read: the interpreter's prefixes, the ``sys.path`` entries that exist and
    ``extra``, as real absolute paths."""
    candidates = [
        sys.base_prefix,
        sys.prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        *sys.path,
        *extra,
    ]
    found = {
        os.path.realpath(path)
        for path in candidates
        if path and os.path.isabs(path) and os.path.exists(path)
    }
    return sorted(found)


def plan(paths: Iterable[str], may_enter: Callable[[str], bool]) -> List[Step]:
    """The mounts that make every path of ``paths`` (real, absolute) reachable by a user for
    whom ``may_enter`` says which directories it may pass: ``(COVER, directory)`` and
    ``(EXPOSE, path)`` steps, in the order to apply them. Empty when nothing blocks.

    A path gets a cover on its topmost blocking ancestor and is exposed below it; one that
    lies below a cover already is exposed there; one inside an exposed path is reached through
    it, unless a directory between them blocks too. A needed directory that holds others and
    blocks itself is not exposed (the user could not use it), and ``/`` is never covered.
    """
    steps: List[Step] = []
    wanted = sorted(set(paths), key=_shallow_first)
    for path in wanted:
        if _holds_another(path, wanted) and not may_enter(path):
            continue  # useless to the user itself; what it holds is exposed on its own
        above = _innermost(steps, path)
        if above is not None and above[1] == path:
            continue
        if above is not None and above[0] == COVER:
            steps.append((EXPOSE, path))  # hidden by a cover of ours: bring it back
            continue
        below = None if above is None else above[1]
        ancestors = _ancestors(path, below=below)
        blocking = next((d for d in ancestors if not may_enter(d)), None)
        if blocking is not None and blocking != os.sep:
            steps += [(COVER, blocking), (EXPOSE, path)]
    return steps


def apply(steps: Sequence[Step]) -> None:
    """Enter a private mount namespace and mount ``steps`` (see :func:`plan`) in it; OSError
    if any mount fails, and then nothing of them stays mounted."""
    if _libc.unshare(CLONE_NEWNS) != 0:
        _fail("cannot make a private mount namespace (unshare)")
    # Slave, not private: what the machine mounts later still reaches functions, as it did
    # before; nothing mounted here goes back.
    _mount(None, os.sep, None, MS_REC | MS_SLAVE, None, "/ as a slave")
    sources: Dict[str, int] = {}
    mounted: List[str] = []
    try:
        for kind, path in steps:
            if kind == EXPOSE:  # in this namespace (a bind's source must be), before the covers
                sources[path] = os.open(path, O_PATH | os.O_CLOEXEC)
        for kind, path in steps:
            if kind == COVER:
                _mount("tmpfs", path, "tmpfs", SAFE_FLAGS, COVER_OPTIONS, path)
            else:
                _expose(sources[path], path)
            mounted.append(path)
        for kind, path in steps:
            if kind == COVER:  # after the last mount point was made in it
                _read_only(path, SAFE_FLAGS)
    except OSError:
        for path in reversed(mounted):
            _libc.umount2(os.fsencode(path), MNT_DETACH)
        raise
    finally:
        for fd in sources.values():
            os.close(fd)


def make_reachable(extra: Iterable[str] = ()) -> Optional[str]:
    """As root: give this process (and its later children) a mount namespace in which the
    workers' user can read the interpreter, ``sys.path`` and ``extra`` (see the module).

    Returns None when that is done or not needed (not root, nothing blocks), else a warning
    that names the unreachable directory and the fix.
    """
    if os.geteuid() != 0:
        return None  # workers keep this process's user, who reads what it does
    uid, gid = worker_identity()
    steps = plan(needed_paths(extra), may_enter_as(uid, gid))
    if not steps:
        return None
    try:
        apply(steps)
    except OSError as exc:
        return _warning(steps, uid, exc)
    os.chdir(os.sep)  # not stay in a directory that is hidden now
    return None


def _warning(steps: Sequence[Step], uid: int, error: OSError) -> str:
    covers = ", ".join(path for kind, path in steps if kind == COVER)
    exposed = ", ".join(path for kind, path in steps if kind == EXPOSE)
    return (
        "funcmesh zygote: functions run as uid %d, which cannot pass %s to read %s, and the "
        "zygote cannot give them a view of it (%s): their imports of modules not preloaded "
        "in the zygote will fail. Install Python where every user can read it (for example "
        "below /usr/local or /opt; FUNCMESH_WORK_DIR does not help, the interpreter itself "
        "must be readable)" % (uid, covers, exposed, error)
    )


def _shallow_first(path: str) -> Tuple[int, str]:
    return path.rstrip(os.sep).count(os.sep), path


def _innermost(steps: Sequence[Step], path: str) -> Optional[Step]:
    """The deepest step at ``path`` or above it: what the view of ``path`` starts from."""
    found = None
    for step in steps:
        if _within(path, step[1]) and (found is None or len(step[1]) > len(found[1])):
            found = step
    return found


def _holds_another(directory: str, paths: Sequence[str]) -> bool:
    return any(path != directory and _within(path, directory) for path in paths)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def _ancestors(path: str, *, below: Optional[str]) -> List[str]:
    """The directories above ``path``, from the root down, or only those below ``below``."""
    if path == os.sep:
        return []
    parts = path.strip(os.sep).split(os.sep)[:-1]
    found = [os.sep] + [os.sep + os.sep.join(parts[: n + 1]) for n in range(len(parts))]
    if below is None:
        return found
    return [d for d in found if d != below and _within(d, below)]


def _expose(fd: int, path: str) -> None:
    """Bind-mount the path open as ``fd`` at ``path`` (in a cover of ours), read-only, with
    its own nosuid/nodev/noexec."""
    _make_mount_point(path, directory=stat.S_ISDIR(os.fstat(fd).st_mode))
    _mount("/proc/self/fd/%d" % fd, path, None, MS_BIND, None, path)
    _read_only(path, os.fstatvfs(fd).f_flag & KEPT_FLAGS)


def _make_mount_point(path: str, *, directory: bool) -> None:
    parent = os.path.dirname(path)
    missing = []
    while not os.path.lexists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    for name in reversed(missing):
        os.mkdir(name)
        os.chmod(name, 0o755)  # whatever the umask
    if directory and not os.path.isdir(path):
        os.mkdir(path)
    elif not directory and not os.path.lexists(path):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _read_only(target: str, flags: int) -> None:
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None, target)


def _mount(
    source: Optional[str],
    target: str,
    fstype: Optional[str],
    flags: int,
    options: Optional[str],
    what: str,
) -> None:
    if _libc.mount(_c(source), _c(target), _c(fstype), flags, _c(options)) != 0:
        _fail("cannot mount %s" % what)


def _c(text: Optional[str]) -> Optional[bytes]:
    return None if text is None else os.fsencode(text)


def _fail(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, "%s: %s" % (what, os.strerror(errno)))
