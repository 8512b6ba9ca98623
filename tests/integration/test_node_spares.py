"""Spare Node.js processes with a real ``node``: started ahead, specialised into instances that
answer HTTP on their pod addresses (127.141.x.y), replaced when taken or dead, limited in
memory, and gone when the daemon dies, also when they run as nobody."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from funcmesh.errors import Unavailable
from funcmesh.model.function import Scaling
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.catalog import Runtime
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.node import NodeStarter
from funcmesh.runtime.node_processes import install_shim
from funcmesh.runtime.starters import StartedWorker
from funcmesh.runtime.workers import SpawnRequest, WorkerLoadError

NODE = shutil.which("node")
SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(NODE is None or SETPRIV is None, reason="needs node and setpriv")
REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534
MiB = 1 << 20

HANDLERS = {
    "hello.js": """
        let count = 0;
        module.exports = {
          foo: (event, context) => ({
            count: ++count, name: context['function-name'], pod: process.env.POD_NAME,
            cwd: process.cwd(), uid: process.getuid(),
          }),
          chatty: () => { console.log('hi from the function'); return 'said hi'; },
          heap: () => ({
            limit: require('v8').getHeapStatistics().heap_size_limit, args: process.execArgv,
          }),
          hog: () => { const kept = []; for (;;) kept.push(Buffer.alloc(16 << 20, 1)); },
          spin: () => { for (;;); },
        };
    """,
    "deps.js": "module.exports = { foo: () => require('localdep') };\n",
}


def node_runtime() -> Runtime:
    assert NODE is not None
    return Runtime.nodejs(major=20, executable=Path(os.path.realpath(NODE)))


def revision(code_dir: Path, **changes: object) -> Revision:
    values: dict[str, object] = {
        "namespace": "default",
        "name": "hello",
        "uid": "u-1",
        "generation": 1,
        "runtime": node_runtime(),
        "code_dir": code_dir,
        "sys_paths": (),
        "module": "hello",
        "handler": "foo",
        "env": (),
        "timeout_s": 5.0,
        "memory_limit": None,
        "memory_limit_bytes": None,
        "labels": {},
        "scaling": Scaling(),
        "template_hash": "0123456789",
    }
    values.update(changes)
    return Revision(**values)  # type: ignore[arg-type]


def spawn_request(pod: str, code_dir: Path, **changes: object) -> SpawnRequest:
    values: dict[str, object] = {
        "pod_name": pod,
        "module": "hello",
        "function": "foo",
        "function_name": "hello",
        "code_dir": str(code_dir),
        "sys_paths": (),
        "env": {"POD_NAME": pod},
        "timeout_s": 5.0,
        "runtime": "nodejs20",
        "memory_limit": "0",
    }
    values.update(changes)
    return SpawnRequest(**values)  # type: ignore[arg-type]


@pytest.fixture
def code_dir() -> Iterator[Path]:
    """Handlers in a directory anyone may read: workers may run as nobody."""
    directory = Path(tempfile.mkdtemp(prefix="funcmesh-node-test-"))
    directory.chmod(0o755)
    for name, text in HANDLERS.items():
        (directory / name).write_text(textwrap.dedent(text))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def addresses() -> AddressPool:
    return AddressPool("127.141.0.0/16")


@pytest.fixture
async def starter(code_dir: Path, addresses: AddressPool) -> AsyncIterator[NodeStarter]:
    started = NodeStarter(
        addresses=addresses,
        port=8080,
        shim=install_shim(code_dir / "runtime"),
        spares=2,
        setpriv=SETPRIV,
    )
    yield started
    await started.close()


async def warm_spares(starter: NodeStarter, count: int = 2, timeout_s: float = 10.0) -> list[int]:
    executable = str(node_runtime().executable)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spares = starter.spares(executable)
        warm = [s.pid for s in spares if s.hello.done() and not s.hello.exception()]
        if len(warm) >= count:
            return warm
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} warm spares did not appear within {timeout_s}s")


async def get(ip: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.get(f"http://{ip}:8080{path}")


async def start(starter: NodeStarter, rev: Revision, pod: str) -> tuple[str, StartedWorker]:
    pending = starter.reserve(rev)
    started = await pending.start(spawn_request(pod, rev.code_dir, module=rev.module))
    return pending.ip, started


async def stop(started: StartedWorker) -> int:
    started.process.kill(signal.SIGKILL)
    os.close(started.log_read_fd)
    return await started.process.exited


# --------------------------------------------------------------------------- spares


async def test_a_warm_spare_becomes_the_instance_and_is_replaced(
    starter: NodeStarter, code_dir: Path
) -> None:
    starter.prepare(str(node_runtime().executable))
    spares = await warm_spares(starter)

    ip, started = await start(starter, revision(code_dir), "hello-abc")
    await asyncio.wait_for(started.process.ready, 5)
    answer = await get(ip)

    assert started.process.pid in spares  # no process was started for the call
    assert answer.json() == {
        "count": 1,
        "name": "hello",
        "pod": "hello-abc",
        "cwd": str(code_dir),
        "uid": os.getuid(),
    }
    assert answer.headers["access-control-allow-origin"] == "*"
    assert (await get(ip)).json()["count"] == 2  # one process: module state persists
    replaced = await warm_spares(starter)
    assert started.process.pid not in replaced
    await stop(started)


async def test_without_a_spare_a_fresh_process_serves(
    code_dir: Path, addresses: AddressPool
) -> None:
    starter = NodeStarter(
        addresses=addresses,
        port=8080,
        shim=install_shim(code_dir / "runtime"),
        spares=0,
        setpriv=SETPRIV,
    )
    try:
        ip, started = await start(starter, revision(code_dir), "fresh-1")
        await asyncio.wait_for(started.process.ready, 10)
        assert (await get(ip)).json()["pod"] == "fresh-1"
        assert starter.spares(str(node_runtime().executable)) == []
        assert await stop(started) == -signal.SIGKILL
    finally:
        await starter.close()


async def test_a_load_error_is_reported_and_served(starter: NodeStarter, code_dir: Path) -> None:
    rev = revision(code_dir, handler="nope")
    pending = starter.reserve(rev)
    started = await pending.start(spawn_request("broken-1", code_dir, function="nope"))

    with pytest.raises(WorkerLoadError, match="TypeError: module hello has no function nope"):
        await asyncio.wait_for(started.process.ready, 10)
    answer = await get(pending.ip)
    assert answer.status_code == 500
    assert answer.text.startswith("TypeError: module hello has no function nope")
    await stop(started)


async def test_sigterm_ends_an_idle_instance_cleanly(starter: NodeStarter, code_dir: Path) -> None:
    ip, started = await start(starter, revision(code_dir), "calm-1")
    await asyncio.wait_for(started.process.ready, 10)
    assert (await get(ip)).status_code == 200  # leaves an idle keep-alive connection behind
    started.process.kill(signal.SIGTERM)
    assert await asyncio.wait_for(started.process.exited, 5) == 0  # drained and left cleanly
    os.close(started.log_read_fd)


async def test_console_output_of_the_function_is_on_the_pipe(
    starter: NodeStarter, code_dir: Path
) -> None:
    pending = starter.reserve(revision(code_dir, handler="chatty"))
    started = await pending.start(spawn_request("chatty-2", code_dir, function="chatty"))
    await asyncio.wait_for(started.process.ready, 10)

    assert (await get(pending.ip)).text == "said hi"
    started.process.kill(signal.SIGKILL)
    await started.process.exited
    output = await asyncio.to_thread(_read_all, started.log_read_fd)
    assert "hi from the function" in output


def _read_all(fd: int) -> str:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


async def test_a_dead_spare_is_replaced_and_its_address_returned(
    starter: NodeStarter, addresses: AddressPool
) -> None:
    starter.prepare(str(node_runtime().executable))
    victim, survivor = await warm_spares(starter)
    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = await warm_spares(starter)
        if victim not in pids:
            break
        await asyncio.sleep(0.01)
    assert survivor in pids
    assert victim not in pids
    assert addresses.in_use == 2  # the dead spare's address went back


@pytest.mark.parametrize("wait_s", [0.0, 0.002, 0.01, 0.05])
async def test_a_node_that_cannot_start_is_logged_and_its_calls_say_so(
    starter: NodeStarter, code_dir: Path, caplog: pytest.LogCaptureFixture, wait_s: float
) -> None:
    """Wherever its exit falls (before the function is sent, during the send, after it), the
    instance's start succeeds, its ``ready`` names the exit status (never a bare 'Connection
    lost') and what it printed reaches the log."""
    broken = code_dir / "broken-node"
    broken.write_text("#!/bin/sh\necho 'node: cannot start here' >&2\nexit 3\n")
    broken.chmod(0o755)
    runtime = Runtime.nodejs(major=20, executable=broken)
    starter.prepare(str(broken))

    pending = starter.reserve(revision(code_dir, runtime=runtime))
    await asyncio.sleep(wait_s)
    started = await pending.start(spawn_request("broken-2", code_dir))

    with pytest.raises(
        WorkerLoadError, match="the worker exited with status 3 before it was ready"
    ):
        await asyncio.wait_for(started.process.ready, 10)
    assert await started.process.exited == 3
    os.close(started.log_read_fd)
    deadline = time.monotonic() + 10
    while "node: cannot start here" not in caplog.text and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert "exited with status 3: node: cannot start here" in caplog.text


async def test_dropping_to_nobody_without_setpriv_is_refused_with_the_reason(
    code_dir: Path, addresses: AddressPool
) -> None:
    starter = NodeStarter(
        addresses=addresses, port=8080, shim=code_dir, spares=0, uid=NOBODY, gid=NOBODY
    )
    try:
        pending = starter.reserve(revision(code_dir))
        with pytest.raises(Unavailable, match=r"needs setpriv \(util-linux\) on PATH"):
            await pending.start(spawn_request("refused-1", code_dir))
    finally:
        await starter.close()


async def test_close_kills_every_process(code_dir: Path, addresses: AddressPool) -> None:
    starter = NodeStarter(
        addresses=addresses, port=8080, shim=install_shim(code_dir / "runtime"), setpriv=SETPRIV
    )
    starter.prepare(str(node_runtime().executable))
    pids = await warm_spares(starter)

    await starter.close()

    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert addresses.in_use == 0
    with pytest.raises(Exception, match="the daemon is stopping"):
        starter.reserve(revision(code_dir))


# --------------------------------------------------------------------------- the daemon's death

FAKE_DAEMON = r"""
import asyncio, json, sys
from pathlib import Path
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.node import NodeStarter
from funcmesh.runtime.node_processes import install_shim
from tests.integration.test_node_spares import revision, spawn_request, warm_spares

async def main(code_dir, uid):
    starter = NodeStarter(
        addresses=AddressPool("127.142.0.0/16"), port=8080,
        shim=install_shim(code_dir / "runtime"), setpriv=sys.argv[3], uid=uid, gid=uid,
    )
    starter.prepare(str(revision(code_dir).runtime.executable))
    await warm_spares(starter)
    pending = starter.reserve(revision(code_dir, handler="spin"))
    started = await pending.start(spawn_request("orphan-1", code_dir, function="spin"))
    await started.process.ready
    # A spinning instance never reads its control socket: only the parent-death signal ends it.
    _, writer = await asyncio.open_connection(pending.ip, 8080)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    spares = await warm_spares(starter)  # the one taken has been replaced
    print(json.dumps({"spares": spares, "instance": started.process.pid}), flush=True)
    await asyncio.Event().wait()

uid = None if sys.argv[2] == "-" else int(sys.argv[2])
asyncio.run(main(Path(sys.argv[1]), uid))
"""


def test_a_killed_daemon_takes_every_node_process_along(code_dir: Path) -> None:
    uid = NOBODY if os.geteuid() == 0 else None  # as root: after the drop to nobody too
    daemon = subprocess.Popen(
        [sys.executable, "-c", FAKE_DAEMON, str(code_dir), str(uid or "-"), str(SETPRIV)],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert daemon.stdout is not None
        line = daemon.stdout.readline()
        assert line, "the fake daemon exited before it started its Node.js processes"
        started = json.loads(line)
        pids = [*started["spares"], started["instance"]]
        if uid is not None:
            assert {_uid_of(pid) for pid in pids} == {uid}
        _wait_spinning(started["instance"])
        daemon.kill()  # SIGKILL: no clean-up code runs
        daemon.wait()
        assert _wait_gone(pids) == [], "Node.js processes outlived their daemon"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        if daemon.stdout is not None:
            daemon.stdout.close()


def _wait_spinning(pid: int, timeout_s: float = 5.0) -> None:
    """Until ``pid`` has burnt a tenth of a second of CPU: its handler is looping."""
    deadline = time.monotonic() + timeout_s
    first = _cpu_ticks(pid)
    while _cpu_ticks(pid) - first < os.sysconf("SC_CLK_TCK") // 10:
        assert time.monotonic() < deadline, f"process {pid} is not spinning"
        time.sleep(0.01)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


def _wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """The pids still running (zombies count as gone: the init here may not reap them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        living = [pid for pid in pids if _running(pid)]
        if not living or time.monotonic() > deadline:
            return living
        time.sleep(0.02)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --------------------------------------------------------------------------- memory


async def test_an_instance_joins_its_memory_cgroup_and_is_held_to_it(
    starter: NodeStarter, code_dir: Path
) -> None:
    limiter = MemoryLimiter()
    if not limiter.uses_cgroups:
        pytest.skip("no writable cgroup v1 memory hierarchy")
    pod = f"node-hog-{os.getpid()}"
    fence = limiter.fence(pod, 96 * MiB)
    assert fence.cgroup_procs is not None
    try:
        pending = starter.reserve(revision(code_dir, handler="hog"))
        request = spawn_request(pod, code_dir, function="hog", cgroup_procs=fence.cgroup_procs)
        started = await pending.start(request)
        await asyncio.wait_for(started.process.ready, 10)
        assert f"memory:/funcmesh/{pod}" in Path(f"/proc/{started.process.pid}/cgroup").read_text()

        with pytest.raises(httpx.TransportError):
            await get(pending.ip)  # allocates until the kernel kills it
        assert await asyncio.wait_for(started.process.exited, 10) == -signal.SIGKILL
        assert limiter.breached(pod)
        os.close(started.log_read_fd)
    finally:
        limiter.release(pod)


async def test_without_cgroups_a_limit_bounds_the_heap_of_a_process_of_its_own(
    code_dir: Path, addresses: AddressPool
) -> None:
    starter = NodeStarter(
        addresses=addresses,
        port=8080,
        shim=install_shim(code_dir / "runtime"),
        setpriv=SETPRIV,
        heap_limits=True,
    )
    try:
        rev = revision(code_dir, handler="heap", memory_limit_bytes=64 * MiB)
        pending = starter.reserve(rev)
        started = await pending.start(spawn_request("heap-1", code_dir, function="heap"))
        await asyncio.wait_for(started.process.ready, 10)

        heap = (await get(pending.ip)).json()
        assert heap["args"] == ["--max-old-space-size=64"]
        assert heap["limit"] < 128 * MiB  # node's default here is over 2 GiB
        await stop(started)
    finally:
        await starter.close()


async def test_node_options_in_the_environment_apply(starter: NodeStarter, code_dir: Path) -> None:
    env = {"NODE_OPTIONS": "--max-old-space-size=48"}
    rev = revision(code_dir, handler="heap", env=tuple(env.items()))
    pending = starter.reserve(rev)
    request = spawn_request("opts-1", code_dir, function="heap", env=env)
    started = await pending.start(request)
    await asyncio.wait_for(started.process.ready, 10)

    assert (await get(pending.ip)).json()["limit"] < 128 * MiB  # over 2 GiB without
    await stop(started)


# --------------------------------------------------------------------------- dependencies


async def test_node_path_reaches_the_dependencies(starter: NodeStarter, code_dir: Path) -> None:
    modules = code_dir / "deps-env" / "node_modules"
    (modules / "localdep").mkdir(parents=True)
    (modules / "localdep" / "index.js").write_text("module.exports = 'from localdep';\n")
    rev = revision(code_dir, module="deps", sys_paths=(str(modules),))
    pending = starter.reserve(rev)
    request = spawn_request("deps-1", code_dir, module="deps", sys_paths=(str(modules),))
    started = await pending.start(request)
    await asyncio.wait_for(started.process.ready, 10)

    assert (await get(pending.ip)).text == "from localdep"
    await stop(started)
