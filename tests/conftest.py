"""Guards shared by every test: no child process and no asyncio task may outlive its test.

Tests run the compiled data plane when it is built (``funcmesh.native``), as the daemon does;
``$FUNCMESH_PURE_PYTHON`` runs its Python source instead (the coverage run), and
``$FUNCMESH_REQUIRE_NATIVE`` makes a missing or stale build an error instead of a fallback.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from funcmesh import native

if not native.enable() and os.environ.get("FUNCMESH_REQUIRE_NATIVE"):
    pytest.exit(f"the compiled data plane is required: {native.describe()}", returncode=3)


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    before = _children()
    yield
    deadline = time.monotonic() + 3.0
    while (left := _children() - before) and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert not left, f"the test left child processes behind: {sorted(left)}"


@pytest.fixture
async def _no_leftover_tasks() -> AsyncIterator[None]:
    yield
    current = asyncio.current_task()
    deadline = time.monotonic() + 2.0
    while True:
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        if not pending or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.01)
    for task in pending:
        task.cancel()
    assert not pending, f"the test left asyncio tasks behind: {pending}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            item.add_marker(pytest.mark.usefixtures("_no_leftover_tasks"))
