"""Where a function's Secrets become files, and how their bytes reach its workers.

Every function with secret volumes gets ``FUNCMESH_SECRETS_DIR`` in its environment, and under it
one directory per Secret with one file per key. Two ways, by whether the daemon can give workers a
private mount namespace (it runs as root; workers drop to ``nobody``):

* private mounts: nothing is written to disk. The bytes reach the worker in a sealed memfd passed
  with its spawn (never through the zygote's memory, which every later worker inherits); as root,
  the worker unshares its mount namespace, mounts a tmpfs on ``FUNCMESH_SECRETS_DIR`` (a fixed
  empty directory, ``<root>/_mounted``), writes the files and bind-mounts each Secret at its
  ``mountPath`` (``shims/_funcmesh_secrets.py``). Missing mount points are created here, recorded
  in ``<root>/_mountpoints`` and removed once nothing uses them; a mountPath that exists and is
  not an empty directory is refused rather than hidden.
* no private mounts: the files are written under ``<root>/<namespace>/<function>/<template
  hash>/`` (directories 0700, files 0400) and ``FUNCMESH_SECRETS_DIR`` points there; mountPaths
  cannot be honoured. Directories are removed once their revision's instances are gone.

Must not: log a secret value or put one in an exception (Secret names, keys and paths only), or
read the store (the function controller resolves Secrets and hands their bytes in).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from funcmesh.errors import FuncmeshError

logger = logging.getLogger(__name__)

SECRETS_DIR_ENV: Final = "FUNCMESH_SECRETS_DIR"
SECRETS_SHIM: Final = Path(__file__).parent / "shims" / "_funcmesh_secrets.py"
MOUNT_DIR_NAME: Final = "_mounted"  # "_" is in no namespace name: no clash with <namespace>/
RECORD_NAME: Final = "_mountpoints"

FunctionKey = tuple[str, str]


class SecretMountRefused(FuncmeshError):
    """A mountPath where funcmesh will not mount a Secret (it would hide what is there)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretVolume:
    """One Secret's files: relative path -> bytes; ``mount_path`` None when not mounted."""

    secret: str
    mount_path: str | None
    files: Mapping[str, bytes] = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretPlacement:
    """Where one revision's Secrets are: ``directory`` is ``FUNCMESH_SECRETS_DIR``; ``volumes``
    are what each worker mounts itself (private mounts), empty when the files are on disk."""

    directory: str
    volumes: tuple[SecretVolume, ...] = field(repr=False)


class SecretFiles:
    """Places the Secret files of the daemon's functions; methods block (call in a thread)."""

    def __init__(self, *, root: Path, private_mounts: bool) -> None:
        self._root = root
        self._private = private_mounts
        self._key = secrets.token_bytes(32)  # digests reveal nothing, even of short values
        self._lock = threading.Lock()
        self._created: list[str] = []  # host mount points made here, parents first
        # per placed revision (function, template hash): how many placed it, its mount paths
        self._placed: dict[tuple[FunctionKey, str], tuple[int, frozenset[str]]] = {}

    @property
    def private_mounts(self) -> bool:
        return self._private

    @property
    def mount_dir(self) -> Path:
        return self._root / MOUNT_DIR_NAME

    def start(self) -> None:
        """Make the directories; remove what a previous daemon left (its workers are gone)."""
        self._root.mkdir(parents=True, exist_ok=True)
        self._root.chmod(0o711 if self._private else 0o700)
        for entry in self._root.iterdir():
            if entry.name not in (MOUNT_DIR_NAME, RECORD_NAME):
                _remove(entry)
        if self._private:
            self.mount_dir.mkdir(exist_ok=True)
            self.mount_dir.chmod(0o755)
        with self._lock:
            self._created = self._read_record()
            self._sweep()

    def close(self) -> None:
        """Remove the mount points made here that nothing uses (after every pool closed)."""
        with self._lock:
            self._placed.clear()
            self._sweep()

    def digest(self, volumes: Iterable[SecretVolume], env: Iterable[tuple[str, str]]) -> str:
        """A keyed digest of the values, for template hashes: changes when any value does."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for volume in volumes:
            mac.update(f"volume\0{volume.secret}\0{volume.mount_path}\0".encode())
            for path, data in sorted(volume.files.items()):
                mac.update(f"{path}\0{len(data)}\0".encode() + data)
        for name, value in env:
            mac.update(f"env\0{name}\0{len(value)}\0{value}".encode())
        return mac.hexdigest()

    def place(
        self, key: FunctionKey, template_hash: str, volumes: Sequence[SecretVolume]
    ) -> SecretPlacement:
        """Where the worker finds ``volumes``; raises SecretMountRefused for a bad mountPath.
        Each placement is given back with ``release`` once its instances are gone."""
        with self._lock:
            count, _ = self._placed.get((key, template_hash), (0, frozenset()))
            if self._private:
                paths = frozenset(v.mount_path for v in volumes if v.mount_path)
                for path in sorted(paths):
                    self._ensure_mount_point(path)
                placement = SecretPlacement(directory=str(self.mount_dir), volumes=tuple(volumes))
            else:
                paths = frozenset()
                directory = self._write_files(key, template_hash, volumes)
                placement = SecretPlacement(directory=str(directory), volumes=())
            self._placed[key, template_hash] = (count + 1, paths)
        return placement

    def release(self, key: FunctionKey, template_hash: str | None = None) -> None:
        """Give back one placement of ``key``'s revision ``template_hash`` (every one of
        ``key`` when None); what no placement uses any more is removed."""
        with self._lock:
            if template_hash is None:
                for placed in [k for k in self._placed if k[0] == key]:
                    del self._placed[placed]
                self._remove_files(key, None)
            else:
                count, paths = self._placed.pop((key, template_hash), (0, frozenset()))
                if count > 1:
                    self._placed[key, template_hash] = (count - 1, paths)
                else:
                    self._remove_files(key, template_hash)
            self._sweep()

    # -- files on disk (no private mounts)

    def _remove_files(self, key: FunctionKey, template_hash: str | None) -> None:
        function_dir = self._root / key[0] / key[1]
        _remove(function_dir if template_hash is None else function_dir / template_hash)
        for directory in (function_dir, function_dir.parent):  # once empty
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _write_files(
        self, key: FunctionKey, template_hash: str, volumes: Sequence[SecretVolume]
    ) -> Path:
        parent = self._root / key[0] / key[1]
        target = parent / template_hash
        if target.is_dir():
            return target  # the same hash: the same values, written already
        for directory in (parent.parent, parent):
            directory.mkdir(mode=0o700, exist_ok=True)
        staging = parent / f".{template_hash}.{secrets.token_hex(4)}"
        staging.mkdir(mode=0o700)
        try:
            for volume in volumes:
                _write_volume(staging / volume.secret, volume.files)
            staging.rename(target)
        except BaseException:
            _remove(staging)
            raise
        return target

    # -- mount points (private mounts)

    def _ensure_mount_point(self, path: str) -> None:
        """An empty directory at ``path``: made (and recorded) when missing, else checked."""
        if Path(path) == self._root or self._root in Path(path).parents:
            raise SecretMountRefused(f"mountPath {path} is inside funcmesh's own directory")
        try:
            status = os.lstat(path)
        except FileNotFoundError:
            self._make_mount_point(path)
            return
        except OSError as exc:
            raise SecretMountRefused(f"mountPath {path}: {exc.strerror}") from exc
        problem = _mount_point_problem(path, status.st_mode)
        if problem is not None:
            raise SecretMountRefused(
                f"mountPath {path} {problem}: funcmesh mounts a Secret only on a missing or "
                "empty directory, rather than hide what is there"
            )

    def _make_mount_point(self, path: str) -> None:
        missing = [path]
        while not os.path.lexists(os.path.dirname(missing[-1])):
            missing.append(os.path.dirname(missing[-1]))
        try:
            for directory in reversed(missing):
                os.mkdir(directory, 0o755)
                self._created.append(directory)
        except OSError as exc:
            raise SecretMountRefused(f"cannot create the mountPath {path}: {exc.strerror}") from exc
        finally:
            self._write_record()
        logger.info("created the mount point %s for Secrets", path)

    def _sweep(self) -> None:
        """Remove the mount points made here that no current revision uses and no process has
        a mount on (a draining instance still may), deepest first; under the lock."""
        used: set[str] = set().union(*(paths for _, paths in self._placed.values()))
        kept: list[str] = []
        for path in reversed(self._created):
            if any(p == path or p.startswith(path + "/") for p in used) or _mounted(path):
                kept.append(path)
                continue
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # someone put something there: it is theirs now
                logger.warning("leaving the mount point %s: %s", path, exc.strerror)
            else:
                logger.info("removed the mount point %s", path)
        if len(kept) != len(self._created):
            self._created = list(reversed(kept))
            self._write_record()

    def _read_record(self) -> list[str]:
        try:
            value = json.loads((self._root / RECORD_NAME).read_text())
        except (OSError, ValueError):
            return []
        return [p for p in value if isinstance(p, str)] if isinstance(value, list) else []

    def _write_record(self) -> None:
        record = self._root / RECORD_NAME
        staged = record.with_name(f".{RECORD_NAME}.{os.getpid()}")
        staged.write_text(json.dumps(self._created))
        staged.replace(record)


def secrets_payload(
    *,
    env: Iterable[tuple[str, str]],
    directory: str | None,
    volumes: Sequence[SecretVolume],
    uid: int | None,
    gid: int | None,
) -> bytes | None:
    """What a worker reads from its secrets memfd (``shims/_funcmesh_secrets.py``), or None
    when it needs nothing: env values from Secrets, and the volumes to mount as root."""
    env_map = dict(env)
    mounts = None
    if volumes and directory is not None:
        mounts = {
            "dir": directory,
            "uid": uid if uid is not None else os.getuid(),
            "gid": gid if gid is not None else os.getgid(),
            "volumes": [
                {
                    "secret": volume.secret,
                    "mount_path": volume.mount_path,
                    "files": {
                        path: base64.b64encode(data).decode("ascii")
                        for path, data in volume.files.items()
                    },
                }
                for volume in volumes
            ],
        }
    if not env_map and mounts is None:
        return None
    return json.dumps({"env": env_map, "mounts": mounts}).encode()


def payload_fd(payload: bytes) -> int:
    """A sealed memfd holding ``payload``, read from the start: anonymous memory, not a file
    on disk. The caller passes it on and closes it."""
    fd = os.memfd_create("funcmesh-secrets", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_volume(directory: Path, files: Mapping[str, bytes]) -> None:
    directory.mkdir(mode=0o700)
    for relative, data in files.items():
        path = directory / relative
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)


def _mount_point_problem(path: str, mode: int) -> str | None:
    if stat.S_ISLNK(mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(mode):
        return "exists and is not a directory"
    try:
        with os.scandir(path) as entries:
            if next(entries, None) is not None:
                return "is a directory that is not empty"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    return None


def _mounted(path: str) -> bool:
    """Whether any mount namespace of the machine has a mount on ``path`` (read as root from
    /proc/PID/mountinfo, once per namespace): removing the directory would detach it there."""
    targets = {path, os.path.realpath(path)}
    seen: set[int] = set()
    for pid in [name for name in os.listdir("/proc") if name.isdigit()]:
        try:
            namespace = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if namespace in seen:
                continue
            seen.add(namespace)
            with open(f"/proc/{pid}/mountinfo", "rb") as mountinfo:
                text = mountinfo.read().decode("utf-8", "replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split(" ")
            if len(fields) > 4 and _unescape(fields[4]) in targets:
                return True
    return False


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    for escaped, plain in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(escaped, plain)
    return text


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
