"""Workers that drop to nobody read their interpreter through the zygote's private mount
namespace (``shims/_funcmesh_interpreter_mounts.py``): real mounts, real zygotes, real workers.

Root only (mounting needs CAP_SYS_ADMIN, dropping to nobody needs root); the tests that need
an interpreter below a directory nobody cannot pass (pyenv in /root) skip elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import funcmesh.runtime
from funcmesh.runtime.workers import SpawnRequest
from funcmesh.runtime.zygote import Zygote

SHIMS = Path(funcmesh.runtime.__file__).parent / "shims"
ROOT = os.geteuid() == 0
NOBODY = pwd.getpwnam("nobody") if ROOT else None
NOBODY_UID, NOBODY_GID = (NOBODY.pw_uid, NOBODY.pw_gid) if NOBODY is not None else (-1, -1)
INTERPRETER = os.path.realpath(getattr(sys, "_base_executable", sys.executable))

pytestmark = pytest.mark.skipif(not ROOT, reason="mounting and dropping to nobody need root")

PROBE = """\
import os
import sys


def handler(event, context):
    import asyncio, concurrent.futures, fractions, sqlite3  # none of them preloaded
    seen = {"uid": os.getuid(), "sqlite": sqlite3.sqlite_version_info[0]}
    try:
        seen["home"] = sorted(os.listdir(os.path.dirname(sys.base_prefix.rstrip("/"))))
    except OSError as error:
        seen["home"] = type(error).__name__
    return seen


def preloaded(event, context):
    import json  # the zygote loaded it: found without reading the interpreter's files
    return json.dumps({"uid": os.getuid()})
"""

# Runs as root in a child interpreter: plan and apply the mounts for ``home/lib``, then fork a
# child that drops to nobody and reports what it sees.
MOUNT_AND_LOOK = """\
import json, os, sys
sys.path.insert(0, sys.argv[1])
import _funcmesh_interpreter_mounts as mounts
tree, uid, gid, fail = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "fail"
home = os.path.join(tree, "home")
lib = os.path.join(home, "lib")
steps = mounts.plan([lib], mounts.may_enter_as(uid, gid))
if fail:  # a step that cannot be mounted, after the others
    steps.append((mounts.COVER, os.path.join(tree, "missing")))
report = {"steps": steps}
try:
    mounts.apply(steps)
except OSError as error:
    report["error"] = str(error)
report["mounted"] = [line.split()[4] for line in open("/proc/self/mountinfo")
                     if line.split()[4].startswith(tree)]
try:
    open(os.path.join(lib, "new.txt"), "w").close()
    report["root writes"] = "yes"
except OSError as error:
    report["root writes"] = error.strerror
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    seen = {}
    try:
        sys.path.insert(0, lib)
        import tinymod
        seen["module"] = tinymod.VALUE
    except ImportError as error:
        seen["module"] = type(error).__name__
    seen["home"] = sorted(os.listdir(home)) if os.access(home, os.R_OK) else "closed"
    try:
        with open(os.path.join(home, "private.txt")) as private:
            seen["private"] = private.read()
    except OSError as error:
        seen["private"] = type(error).__name__
    os.write(write, json.dumps(seen).encode())
    os._exit(0)
os.close(write)
os.waitpid(pid, 0)
report["nobody"] = json.loads(os.read(read, 65536))
print(json.dumps(report))
"""


# Runs as root in a child interpreter that plays the machine in a mount namespace of its own
# (the test's stays clean), with a shared mount ``outer``: its child plays the zygote, and sees
# what the machine mounts there afterwards; the machine sees nothing of the zygote's mounts.
MACHINE_AND_ZYGOTE = """\
import json, os, sys
sys.path.insert(0, sys.argv[1])
import _funcmesh_interpreter_mounts as mounts
tree, uid, gid = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
home, outer = os.path.join(tree, "home"), os.path.join(tree, "outer")
late = os.path.join(outer, "late")
MS_PRIVATE, MS_SHARED = 1 << 18, 1 << 20
assert mounts._libc.unshare(mounts.CLONE_NEWNS) == 0
mounts._mount(None, "/", None, mounts.MS_REC | MS_PRIVATE, None, "/")
mounts._mount("tmpfs", outer, "tmpfs", 0, "size=64k", outer)
mounts._mount(None, outer, None, MS_SHARED, None, outer)
os.mkdir(late)
ready_read, ready_write = os.pipe()
mounted_read, mounted_write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        mounts.apply(mounts.plan([os.path.join(home, "lib")], mounts.may_enter_as(uid, gid)))
        os.write(ready_write, b"x")
        os.read(mounted_read, 1)
        with open(os.path.join(late, "file.txt")) as late_file:
            os.write(ready_write, late_file.read().encode())
    except OSError as error:
        os.write(ready_write, type(error).__name__.encode())
    finally:
        os._exit(0)
os.close(ready_write)
os.close(mounted_read)
os.read(ready_read, 1)
mounts._mount("tmpfs", late, "tmpfs", 0, "size=64k", late)
with open(os.path.join(late, "file.txt"), "w") as late_file:
    late_file.write("mounted later")
os.write(mounted_write, b"x")
os.waitpid(pid, 0)
print(json.dumps({"zygote saw": os.read(ready_read, 100).decode(),
                  "machine sees": sorted(os.listdir(home))}))
"""


def interpreter_is_hidden_from_nobody() -> bool:
    prefix = Path(os.path.realpath(sys.base_prefix))
    return any(not _may_pass(directory) for directory in [*reversed(prefix.parents), prefix])


def _may_pass(directory: Path) -> bool:
    info = directory.stat()
    if info.st_uid == NOBODY_UID:
        return bool(info.st_mode & 0o100)
    if info.st_gid == NOBODY_GID:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


needs_hidden_interpreter = pytest.mark.skipif(
    not ROOT or not interpreter_is_hidden_from_nobody(),
    reason="this machine's Python is readable by nobody already",
)


@pytest.fixture
def tree() -> Iterator[Path]:
    """``home`` (0700, like /root) holding ``lib/tinymod.py`` (readable by all) and
    ``private.txt`` (readable by all, but for home's mode); the base everybody may pass."""
    base = Path(tempfile.mkdtemp(prefix="funcmesh-mounts-"))
    base.chmod(0o755)
    lib = base / "home" / "lib"
    lib.mkdir(parents=True)
    lib.chmod(0o755)
    (lib / "tinymod.py").write_text("VALUE = 'from below a closed directory'\n")
    (base / "home" / "private.txt").write_text("root's own")
    (base / "home").chmod(0o700)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def mount_and_look(tree: Path, *, fail: bool = False) -> dict[str, Any]:
    args = [str(SHIMS), str(tree), str(NOBODY_UID), str(NOBODY_GID)]
    args.append("fail" if fail else "ok")
    shown = subprocess.run(
        [sys.executable, "-c", MOUNT_AND_LOOK, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    report: dict[str, Any] = json.loads(shown.stdout)
    return report


def test_nobody_reads_the_exposed_path_and_nothing_else_of_the_covered_directory(
    tree: Path,
) -> None:
    home, lib = str(tree / "home"), str(tree / "home" / "lib")

    report = mount_and_look(tree)

    assert report["steps"] == [["cover", home], ["expose", lib]]
    assert report["mounted"] == [home, lib]
    assert report["root writes"] == "Read-only file system"
    assert report["nobody"] == {
        "module": "from below a closed directory",
        "home": ["lib"],
        "private": "FileNotFoundError",
    }


def test_the_machine_sees_nothing_of_the_mounts(tree: Path) -> None:
    mount_and_look(tree)

    assert (tree / "home").stat().st_mode & 0o777 == 0o700
    assert sorted(os.listdir(tree / "home")) == ["lib", "private.txt"]
    assert not (tree / "home" / "lib" / "new.txt").exists()
    assert str(tree) not in Path("/proc/self/mountinfo").read_text()


def test_a_failed_mount_takes_back_the_others(tree: Path) -> None:
    report = mount_and_look(tree, fail=True)

    assert "cannot mount" in report["error"]
    assert report["mounted"] == []
    assert report["nobody"] == {
        "module": "ModuleNotFoundError",
        "home": "closed",
        "private": "PermissionError",
    }


def test_what_the_machine_mounts_later_reaches_the_namespace_and_nothing_goes_back(
    tree: Path,
) -> None:
    (tree / "outer").mkdir()
    args = [str(SHIMS), str(tree), str(NOBODY_UID), str(NOBODY_GID)]
    shown = subprocess.run(
        [sys.executable, "-c", MACHINE_AND_ZYGOTE, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )

    assert json.loads(shown.stdout) == {
        "zygote saw": "mounted later",
        "machine sees": ["lib", "private.txt"],
    }


# --------------------------------------------------------------------------- real zygotes


@pytest.fixture
def code_dir() -> Iterator[Path]:
    """Handlers where nobody may read them (pytest's temporary directories are root's)."""
    directory = Path(tempfile.mkdtemp(prefix="funcmesh-mounts-code-"))
    directory.chmod(0o755)
    (directory / "probe.py").write_text(PROBE)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


async def call_worker(zygote: Zygote, code_dir: Path, function: str) -> httpx.Response:
    """Spawn one worker as nobody, wait until it loaded, call it once, kill it."""
    request = SpawnRequest(
        pod_name=f"probe-{function}",
        module="probe",
        function=function,
        function_name="probe",
        code_dir=str(code_dir),
        sys_paths=(),
        env={},
        timeout_s=5,
        runtime="python3",
        memory_limit="0",
        uid=NOBODY_UID,
        gid=NOBODY_GID,
    )
    listener = socket.socket()
    listener.bind(("127.128.254.1", 0))
    listener.listen(16)
    log_read, log_write = os.pipe()
    try:
        worker = await zygote.spawn(request, listen_socket=listener, log_fd=log_write)
        os.close(log_write)
        log_write = -1
        try:
            await asyncio.wait_for(worker.ready, 10)
            host, port = listener.getsockname()
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                return await client.post(f"http://{host}:{port}/", json={})
        finally:
            worker.kill()
            await asyncio.wait_for(worker.exited, 10)
    finally:
        listener.close()
        os.close(log_read)
        if log_write >= 0:
            os.close(log_write)


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    started = await Zygote.start(INTERPRETER)
    try:
        yield started
    finally:
        await started.close()


@needs_hidden_interpreter
async def test_a_worker_as_nobody_imports_what_the_zygote_did_not_load(
    zygote: Zygote, code_dir: Path
) -> None:
    answer = await call_worker(zygote, code_dir, "handler")

    assert answer.status_code == 200, answer.text
    prefix = Path(os.path.realpath(sys.base_prefix))
    assert answer.json() == {"uid": NOBODY_UID, "sqlite": 3, "home": [prefix.name]}


@pytest.fixture
def without_sys_admin(tmp_path: Path) -> Path:
    """The interpreter, started without CAP_SYS_ADMIN (as in a container that lacks it)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv")
    wrapper = tmp_path / "python-without-sys-admin"
    wrapper.write_text(f'#!/bin/sh\nexec {setpriv} --bounding-set -sys_admin {INTERPRETER} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


@needs_hidden_interpreter
async def test_without_sys_admin_the_zygote_warns_once_and_serves_as_before(
    without_sys_admin: Path, code_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = Path(os.path.realpath(sys.base_prefix))
    hidden = next(str(d) for d in reversed(prefix.parents) if not _may_pass(d))
    with caplog.at_level(logging.WARNING, logger="funcmesh.runtime.zygote"):
        zygote = await Zygote.start(str(without_sys_admin))
        try:
            preloaded = await call_worker(zygote, code_dir, "preloaded")
            missing = await call_worker(zygote, code_dir, "handler")
        finally:
            await zygote.close()

    warnings = [r.getMessage() for r in caplog.records if "cannot pass" in r.getMessage()]
    assert len(warnings) == 1
    # every directory in the way is named (the checkout may be below another one, as in CI)
    named = warnings[0].split("cannot pass ", 1)[1].split(" to ", 1)[0].split(", ")
    assert hidden in named
    assert "Install Python where every user can read it" in warnings[0]
    assert preloaded.json() == {"uid": NOBODY_UID}
    assert missing.status_code == 500
    assert "ModuleNotFoundError" in missing.text
