"""Funcmesh Secret files: a private mount namespace holding one function's Secrets as files.

Runs as root, in the process that becomes the worker, before it drops to the worker identity:

  * the Python zygote imports it; a forked worker calls ``read_payload`` and ``mount_secrets``
    in ``load()``, before setuid;
  * for Node.js it is a program: ``python -I -S _funcmesh_secrets.py --payload-fd N -- ARGV``
    mounts, then executes ARGV (``setpriv ... node kubeless_runtime.js ...``).

The payload is JSON read from a memfd (anonymous memory: the bytes are never on disk and never
pass through the zygote, whose memory every later worker inherits):

  {"env": {NAME: value},
   "mounts": {"dir": D, "uid": U, "gid": G,
              "volumes": [{"secret": S, "mount_path": P or null, "files": {path: base64}}]}}

``mount_secrets`` unshares the mount namespace (CLONE_NEWNS), makes every mount private (so
nothing mounted here propagates back to the machine), mounts a tmpfs at D (nosuid, nodev,
noexec), writes one directory per Secret (0500) with one file per key (0400), all owned by
U:G, makes it read-only, and bind-mounts each Secret's directory at its mount_path, read-only.
The mount points must exist already (the daemon creates missing ones). Other processes,
including the workers of other functions, never see these files.

Must not: print, log or put in an exception a secret value (names and paths only), import
anything outside the standard library (it runs in users' interpreters, Python 3.8 or newer), or
import the daemon.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
SAFE_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC
TMPFS_SLACK_BYTES = 1 << 20  # inodes and page rounding of many small files
MAX_PAYLOAD_BYTES = 64 << 20
DAEMON_PID_ENV = "FUNCMESH_DAEMON_PID"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
)
_libc.unshare.argtypes = (ctypes.c_int,)


def read_payload(fd: int) -> dict[str, Any]:
    """The payload in memfd ``fd`` (closed here)."""
    chunks = []
    total = 0
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_PAYLOAD_BYTES:
                raise ValueError("the Secrets payload is too large")
            chunks.append(chunk)
    finally:
        os.close(fd)
    payload = json.loads(b"".join(chunks))
    if not isinstance(payload, dict):
        raise ValueError("the Secrets payload is not an object")
    return payload


def mount_secrets(mounts: dict[str, Any]) -> None:
    """Give this process its own mount namespace with the Secrets as files (see the module)."""
    directory = mounts["dir"]
    uid, gid = int(mounts["uid"]), int(mounts["gid"])
    volumes = mounts.get("volumes") or []
    if _libc.unshare(CLONE_NEWNS) != 0:
        _fail("cannot make a private mount namespace (unshare)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "/")
    size = sum(len(data) for volume in volumes for data in volume["files"].values())
    options = "mode=0500,uid=%d,gid=%d,size=%d" % (uid, gid, size + TMPFS_SLACK_BYTES)
    _mount("tmpfs", directory, "tmpfs", SAFE_FLAGS, options, directory)
    for volume in volumes:
        _write_volume(directory, volume, uid, gid)
    _read_only(directory)
    for volume in volumes:
        target = volume.get("mount_path")
        if target:
            source = os.path.join(directory, _safe_name(volume["secret"]))
            _mount(source, target, None, MS_BIND, None, target)
            _read_only(target)


def _write_volume(directory: str, volume: dict[str, Any], uid: int, gid: int) -> None:
    root = os.path.join(directory, _safe_name(volume["secret"]))
    made = [root]
    os.mkdir(root, 0o700)
    for relative, encoded in sorted(volume["files"].items()):
        parts = _safe_parts(relative)
        parent = root
        for part in parts[:-1]:
            parent = os.path.join(parent, part)
            if not os.path.isdir(parent):
                os.mkdir(parent, 0o700)
                made.append(parent)
        path = os.path.join(parent, parts[-1])
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        try:
            view = memoryview(base64.b64decode(encoded))
            while view:
                view = view[os.write(fd, view) :]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o400)
        finally:
            os.close(fd)
    for path in made:
        os.chown(path, uid, gid)
        os.chmod(path, 0o500)


def _safe_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError("a Secret name must be one path component")
    return name


def _safe_parts(relative: str) -> list[str]:
    parts = relative.split("/")
    if relative.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise ValueError("a Secret file path must be relative, without . or ..")
    return parts


def _read_only(target: str) -> None:
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | SAFE_FLAGS
    _mount(None, target, None, flags, None, target)


def _mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    options: str | None,
    what: str,
) -> None:
    if _libc.mount(_c(source), _c(target), _c(fstype), flags, _c(options)) != 0:
        _fail("cannot mount %s" % what)


def _c(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _fail(what: str) -> None:
    errno = ctypes.get_errno()
    raise OSError(errno, "%s: %s" % (what, os.strerror(errno)))


def main(argv: list[str]) -> int:
    """``--payload-fd N -- ARGV``: mount the payload's Secrets, then execute ARGV."""
    if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        _fail("prctl(PR_SET_PDEATHSIG)")
    daemon = os.environ.get(DAEMON_PID_ENV)
    if daemon and os.getppid() != int(daemon):
        return 1  # the daemon died before the parent-death signal was set
    try:
        separator = argv.index("--")
        fd = int(argv[argv.index("--payload-fd") + 1])
    except (ValueError, IndexError):
        print("usage: _funcmesh_secrets.py --payload-fd N -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    program = argv[separator + 1 :]
    if not program:
        print("_funcmesh_secrets.py: no program to run after --", file=sys.stderr)
        return 2
    try:
        mounts = read_payload(fd).get("mounts")
        if mounts:
            mount_secrets(mounts)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print("funcmesh: cannot give the function its Secrets: %s" % exc, file=sys.stderr)
        return 1
    os.execv(program[0], program)
    return 127  # pragma: no cover - execv does not return


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
