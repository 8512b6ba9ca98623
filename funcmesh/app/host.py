"""The machine side of starting the daemon: its directories, lock, limits and worker user.

Blocking file-system work, done once at start before anything serves.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import pwd
import resource
from pathlib import Path
from typing import IO, Any

from funcmesh.errors import Unavailable
from funcmesh.settings import DaemonSettings


def worker_identity() -> tuple[int | None, int | None]:
    """As root, workers run as ``nobody`` so they cannot read the daemon's state."""
    if os.geteuid() != 0:
        return None, None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return nobody.pw_uid, nobody.pw_gid


def prepare_home(home: Path) -> Path:
    """The state directory; its secrets (kubeconfig, pki, state.db) stay 0600/0700."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)
    return home


def prepare_work_dir(settings: DaemonSettings) -> Path:
    """Where prepared code and dependency environments live, readable by the workers.

    Workers of a root daemon run as nobody, who must be able to reach this directory: under
    ``$FUNCMESH_HOME`` when every directory above it lets others through (/root does not),
    else ``/var/lib/funcmesh/<hash of the home>``. ``FUNCMESH_WORK_DIR`` overrides both.
    """
    work_dir = settings.work_dir or settings.home
    if settings.work_dir is None and os.geteuid() == 0 and not traversable(settings.home):
        digest = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:16]
        work_dir = Path("/var/lib/funcmesh") / digest
    for public in (work_dir, work_dir / "code", work_dir / "deps"):
        public.mkdir(parents=True, exist_ok=True)
        public.chmod(0o711 if public == work_dir else 0o755)
    return work_dir


def traversable(path: Path) -> bool:
    """Whether any user may pass through every directory down to ``path``."""
    return all(p.stat().st_mode & 0o001 for p in [path.resolve(), *path.resolve().parents])


def raise_open_file_limit(wanted: int = 1 << 16) -> None:
    """Lift the soft limit on open files towards ``wanted`` (within the hard limit): every
    function's Service VIP is a listening socket, and the usual soft limit of 1024 would run
    out at about a thousand functions. Not higher: some programs close every descriptor up to
    the limit, and workers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def private_database(db_path: Path) -> None:
    """SQLite gives the WAL and shared-memory files the database's mode: make it 0600 first."""
    db_path.touch(mode=0o600)
    for path in (
        db_path,
        db_path.with_name(db_path.name + "-wal"),
        db_path.with_name(db_path.name + "-shm"),
    ):
        if path.exists():
            path.chmod(0o600)


@contextlib.contextmanager
def exclusive_lock(home: Path) -> Any:
    lock_path = home / "daemon.lock"
    handle: IO[str] = open(lock_path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise Unavailable(
                f"another funcmesh daemon (pid {handle.read().strip() or '?'}) is running "
                f"with FUNCMESH_HOME={home}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
