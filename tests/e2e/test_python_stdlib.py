"""A root daemon's Python functions, which run as nobody, import any module of their
interpreter, even one below /root (mode 0700) that the zygote did not preload; and they see
only that interpreter there, nothing else of /root, through a real ``funcmesh up``.

The zygote gives itself a private mount namespace where the interpreter's directories are
bind-mounted over a tiny tmpfs on /root (``shims/_funcmesh_interpreter_mounts.py``); nothing
changes on the machine.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
HOME = Path("/root")
NOBODY = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else 65534

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="only a root daemon's workers drop to nobody"
)

# concurrent, asyncio, fractions and sqlite3 (and its C extension) are not in WARM_MODULES.
IMPORTS = """\
import os


def handler(event, context):
    import asyncio
    import concurrent.futures
    import fractions
    import sqlite3

    async def half():
        return fractions.Fraction(1, 2)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        thread = pool.submit(lambda: "in a thread").result()
    with sqlite3.connect(":memory:") as db:
        total = db.execute("select 20 + 22").fetchone()[0]
    return {"uid": os.getuid(), "fraction": str(asyncio.run(half())), "thread": thread,
            "sqlite": total}
"""
ROOT_READER = """\
import os


def handler(event, context):
    seen = {"uid": os.getuid()}
    try:
        seen["listing"] = sorted(os.listdir("/root"))
    except OSError as error:
        seen["listing"] = type(error).__name__
    try:
        with open(event["data"]["path"]) as marker:
            seen["marker"] = marker.read()
    except OSError as error:
        seen["marker"] = type(error).__name__
    return seen
"""


def deploy(daemon: Daemon, tmp_path: Path, name: str, code: str) -> None:
    source = tmp_path / f"{name}.py"
    source.write_text(code)
    daemon.run(
        "function", "deploy", name, "--runtime", RUNTIME, "--handler", f"{name}.handler",
        "--from-file", str(source),
    )  # fmt: skip


def call(daemon: Daemon, name: str, data: object = None) -> httpx.Response:
    return httpx.post(f"{daemon.gateway_url}/function/{name}", json=data, timeout=30)


def interpreter_entries_in_home() -> list[str]:
    """The names in /root that the runtime's interpreter needs (its prefixes and sys.path, as
    its zygote sees them): all that a function may see there."""
    runtime = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    probe = "import json, sys; print(json.dumps([sys.base_prefix, sys.exec_prefix, *sys.path]))"
    shown = subprocess.run([runtime, "-s", "-c", probe], capture_output=True, check=True)
    names = set()
    for entry in json.loads(shown.stdout):
        path = Path(os.path.realpath(entry)) if entry else None
        if path is not None and path.exists() and path.is_relative_to(HOME) and path != HOME:
            names.add(path.relative_to(HOME).parts[0])
    return sorted(names)


@pytest.fixture
def marker() -> Iterator[Path]:
    """A file in /root that anybody may read, but for /root's own mode."""
    fd, name = tempfile.mkstemp(dir=HOME, prefix=".funcmesh-e2e-")
    os.write(fd, b"root's own")
    os.close(fd)
    path = Path(name)
    path.chmod(0o644)
    try:
        yield path
    finally:
        path.unlink()


def test_a_function_running_as_nobody_imports_modules_the_zygote_did_not_load(
    daemon: Daemon, tmp_path: Path
) -> None:
    deploy(daemon, tmp_path, "stdlib", IMPORTS)

    answer = call(daemon, "stdlib")

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "uid": NOBODY,
        "fraction": "1/2",
        "thread": "in a thread",
        "sqlite": 42,
    }


@pytest.mark.skipif(
    bool(HOME.stat().st_mode & 0o001), reason="/root is open to everybody on this machine"
)
def test_a_function_sees_only_its_interpreter_in_root(
    daemon: Daemon, tmp_path: Path, marker: Path
) -> None:
    deploy(daemon, tmp_path, "rootreader", ROOT_READER)
    expected = interpreter_entries_in_home()

    answer = call(daemon, "rootreader", {"path": str(marker)})

    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert seen["uid"] == NOBODY
    # An interpreter elsewhere leaves /root as it is: closed to nobody.
    assert seen["listing"] == (expected or "PermissionError")
    assert seen["marker"] == ("FileNotFoundError" if expected else "PermissionError")
    assert marker.read_text() == "root's own"  # the machine's /root is untouched
