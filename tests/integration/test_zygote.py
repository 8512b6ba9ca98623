"""A real zygote forks real workers that answer HTTP on real pod addresses (127.128.x.y)."""

from __future__ import annotations

import asyncio
import itertools
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from funcmesh.errors import Unavailable
from funcmesh.runtime.workers import SpawnRequest, WorkerLoadError, WorkerProcess
from funcmesh.runtime.zygote import Zygote

FIXTURES = Path(__file__).parent / "fixtures" / "zygote"
PYTHON_3_8 = sorted(Path.home().glob(".pyenv/versions/3.8.*/bin/python3.8"))
_addresses = itertools.count(1)


@dataclass(slots=True, kw_only=True)
class Instance:
    """One spawned worker with the listening socket and log pipe the daemon would own."""

    worker: WorkerProcess
    listener: socket.socket
    log_read_fd: int
    log: bytearray = field(default_factory=bytearray)

    @property
    def url(self) -> str:
        host, port = self.listener.getsockname()
        return f"http://{host}:{port}"

    async def request(self, method: str, path: str = "/", **kwargs: Any) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            return await client.request(method, self.url + path, **kwargs)

    async def log_text(self, until: str, *, timeout_s: float = 3.0) -> str:
        """The instance log read so far, once it contains ``until`` (or the deadline passed)."""
        deadline = time.monotonic() + timeout_s
        while until.encode() not in self.log and time.monotonic() < deadline:
            chunk = await asyncio.to_thread(_read_some, self.log_read_fd, deadline)
            if not chunk:
                break
            self.log += chunk
        return self.log.decode(errors="replace")


def _read_some(fd: int, deadline: float) -> bytes:
    readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    return os.read(fd, 65536) if readable else b""


Spawn = Callable[..., Awaitable[Instance]]


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    """The fixture handlers, copied: the worker may write __pycache__ next to them."""
    target = tmp_path / "code"
    shutil.copytree(FIXTURES, target)
    (target / "broken.py").write_text('def handler(event, context):\n    return "x"\nx = = 1\n')
    return target


@pytest.fixture
async def zygote() -> AsyncIterator[Zygote]:
    started = await Zygote.start(sys.executable)
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def spawn(zygote: Zygote, code_dir: Path) -> AsyncIterator[Spawn]:
    """Spawn workers from ``zygote``; their sockets and pipes are closed after the test."""
    instances: list[Instance] = []

    async def _spawn(function: str = "handler", **overrides: Any) -> Instance:
        request = replace(_request(code_dir, function), **overrides)
        listener = _listen()
        log_read_fd, log_write_fd = os.pipe()
        try:
            worker = await zygote.spawn(request, listen_socket=listener, log_fd=log_write_fd)
        finally:
            os.close(log_write_fd)
        instance = Instance(worker=worker, listener=listener, log_read_fd=log_read_fd)
        instances.append(instance)
        return instance

    try:
        yield _spawn
    finally:
        for instance in instances:
            instance.worker.kill()
            instance.listener.close()
            os.close(instance.log_read_fd)


def _request(code_dir: Path, function: str) -> SpawnRequest:
    return SpawnRequest(
        pod_name=f"hello-{next(_addresses)}",
        module="hello",
        function=function,
        function_name="hello-fn",
        code_dir=str(code_dir),
        sys_paths=(),
        env={"GREETING": "hi"},
        timeout_s=3,
        runtime="python3.11",
        memory_limit="0",
    )


def _listen() -> socket.socket:
    index = next(_addresses)
    sock = socket.socket()
    sock.bind((f"127.128.{200 + index // 250}.{1 + index % 250}", 0))
    sock.listen(1024)
    return sock


async def _gone(pid: int, *, timeout_s: float = 3.0) -> bool:
    """Whether ``pid`` has exited (a zombie counts) before the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        await asyncio.sleep(0.01)
    return False


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in children.read_text().split():
            found |= {int(child)} | _descendants(int(child))
    return found


async def _poll(condition: Callable[[], bool], *, what: str, timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s:g} s")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- serving


async def test_hello_world_answers_and_its_prints_reach_the_log(spawn: Spawn) -> None:
    instance = await spawn()
    await instance.worker.ready
    response = await instance.request("GET", "/")
    assert response.status_code == 200
    assert response.text == "hello world"
    assert response.headers["content-type"] == "text/html; charset=UTF-8"
    assert "called with b''" in await instance.log_text("called with")


async def test_json_with_charset_is_echoed_as_json(spawn: Spawn) -> None:
    instance = await spawn("echo")
    payload = '{"name": "Jörg", "n": [1, 2]}'.encode()
    response = await instance.request(
        "POST", "/", content=payload, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"name": "Jörg", "n": [1, 2]}


async def test_handler_exception_answers_500_naming_it(spawn: Spawn) -> None:
    instance = await spawn("boom")
    response = await instance.request("GET", "/")
    assert (response.status_code, response.text) == (500, "ValueError: boom")
    assert 'raise ValueError("boom")' in await instance.log_text("ValueError: boom")
    metrics = (await instance.request("GET", "/metrics")).text
    assert 'function_failures_total{method="GET"} 1' in metrics


async def test_worker_gets_its_environment_directory_paths_and_context(
    spawn: Spawn, code_dir: Path, tmp_path: Path
) -> None:
    deps = tmp_path / "site-packages"
    deps.mkdir()
    (tmp_path / "src").mkdir()
    (deps / "editable.pth").write_text(str(tmp_path / "src") + "\n")
    instance = await spawn("inspect", sys_paths=(str(deps),))
    seen = (await instance.request("GET", "/")).json()
    assert seen["env"] == {"GREETING": "hi"}
    assert seen["cwd"] == str(code_dir)
    assert seen["path"][:2] == [str(code_dir), str(deps)]
    assert str(tmp_path / "src") in seen["path"]  # .pth files of dependencies are honoured
    assert seen["context"] == {
        "function-name": "hello-fn",
        "timeout": 3.0,
        "runtime": "python3.11",
        "memory-limit": "0",
    }


@pytest.mark.parametrize("shared", [False, True], ids=["in-the-request", "shared-links"])
async def test_a_large_environment_reaches_the_handler_and_its_children(
    spawn: Spawn, shared: bool
) -> None:
    """Hundreds of service variables are set in one step (not a setenv each), and the result
    is a real process environment: children see it, and changes the handler makes."""
    env = {f"SVC_{n}_SERVICE_HOST": f"127.96.0.{n % 250}" for n in range(2000)}
    if shared:
        own = {"GREETING": "hi", "LAST_VAR": "last"}
        instance = await spawn("child_env", env=own, namespace="team", service_links=env)
    else:
        instance = await spawn("child_env", env={"GREETING": "hi", **env, "LAST_VAR": "last"})
    seen = (await instance.request("GET", "/")).json()
    assert seen["child"] == "last|yes|unset"
    assert seen["count"] == 2000 + 2  # the services, LAST_VAR, SET_BY_HANDLER; no GREETING
    assert seen["last"] == "last"


def _service_links(count: int, *, address: str = "127.96.0") -> dict[str, str]:
    return {f"SVC_{n}_SERVICE_HOST": f"{address}.{n % 250}" for n in range(count)}


async def _environment(instance: Instance) -> tuple[dict[str, str], dict[str, str]]:
    """What the handler sees in os.environ, and what a child process it starts sees."""
    seen = (await instance.request("GET", "/")).json()
    return seen["python"], seen["child"]


async def test_service_variables_reach_every_worker_and_its_own_variables_win(
    spawn: Spawn,
) -> None:
    """The namespace's variables go to the zygote once and every worker gets them (the first
    one from a spare forked before they came); the instance's own variables win."""
    links = {**_service_links(2000), "MODE": "from-a-service"}
    instances = [
        await spawn(
            "environment",
            namespace="team",
            service_links=links,
            env={"MODE": "mine", "POD_NAME": f"pod-{n}"},
        )
        for n in range(3)
    ]
    for n, instance in enumerate(instances):
        python, child = await _environment(instance)
        assert python == child == {**links, "MODE": "mine", "POD_NAME": f"pod-{n}"}


async def test_a_spare_forked_before_the_service_variables_came_gets_them(
    zygote: Zygote, spawn: Spawn
) -> None:
    await _poll(lambda: bool(_descendants(zygote.pid)), what="the zygote's spare")
    links = _service_links(300)
    instance = await spawn("environment", namespace="team", service_links=links, env={})
    python, child = await _environment(instance)
    assert python == child == links


async def test_changed_service_variables_reach_the_next_worker_only(spawn: Spawn) -> None:
    before = await spawn("environment", namespace="team", service_links=_service_links(300))
    await before.worker.ready
    changed = {**_service_links(299, address="127.96.1"), "NEW_SERVICE_HOST": "127.96.2.1"}
    after = await spawn("environment", namespace="team", service_links=changed)
    other = await spawn("environment", namespace="other", service_links={"DB_SERVICE_HOST": "x"})
    assert (await _environment(before))[1] == {**_service_links(300), "GREETING": "hi"}
    assert (await _environment(after))[1] == {**changed, "GREETING": "hi"}
    assert (await _environment(other))[1] == {"DB_SERVICE_HOST": "x", "GREETING": "hi"}


async def test_worker_writes_its_pid_to_the_cgroup_procs_file(spawn: Spawn, tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    instance = await spawn(cgroup_procs=str(procs))
    await instance.worker.ready
    assert procs.read_text() == str(instance.worker.pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
async def test_worker_drops_privileges(spawn: Spawn) -> None:
    shared = Path(tempfile.mkdtemp(prefix="funcmesh-zygote-"))
    try:
        shared.chmod(0o755)
        shutil.copy(FIXTURES / "hello.py", shared / "hello.py")
        instance = await spawn("inspect", code_dir=str(shared), uid=65534, gid=65534)
        assert (await instance.request("GET", "/")).json()["ids"] == [65534, 65534, []]
    finally:
        shutil.rmtree(shared)


async def test_concurrent_spawns_all_serve(spawn: Spawn) -> None:
    instances = await asyncio.gather(*(spawn() for _ in range(4)))
    await asyncio.gather(*(instance.worker.ready for instance in instances))
    assert len({instance.worker.pid for instance in instances}) == 4
    responses = await asyncio.gather(*(instance.request("GET", "/") for instance in instances))
    assert [response.text for response in responses] == ["hello world"] * 4


# --------------------------------------------------------------------------- load failures


@pytest.mark.parametrize(
    ("module", "function", "error"),
    [
        ("broken", "handler", "SyntaxError: invalid syntax (broken.py, line 3)"),
        ("missing", "handler", "ModuleNotFoundError: No module named 'missing'"),
        ("hello", "nope", "AttributeError: module 'hello' has no function 'nope'"),
        ("hello", "not_callable", "TypeError: hello.not_callable is a int, not a function"),
        ("_funcmesh_worker", "main", "ImportError: module name '_funcmesh_worker' is reserved"),
        ("_funcmesh_mtls", "install", "ImportError: module name '_funcmesh_mtls' is reserved"),
        ("json", "loads", "ImportError: module name 'json' clashes with the standard library"),
    ],
)
async def test_load_failure_is_reported_and_served_as_500(
    spawn: Spawn, module: str, function: str, error: str
) -> None:
    instance = await spawn(function, module=module)
    with pytest.raises(WorkerLoadError) as raised:
        await instance.worker.ready
    assert raised.value.error.startswith(error)
    response = await instance.request("POST", "/")
    assert response.status_code == 500
    assert response.text == raised.value.error
    assert (await instance.request("GET", "/healthz")).status_code == 200
    assert error in await instance.log_text(error)


# --------------------------------------------------------------------------- endings


async def test_memory_error_under_rlimit_answers_502_and_exits(spawn: Spawn) -> None:
    instance = await spawn(
        "hog", memory_limit="64Mi", memory_limit_bytes=64 * 1024 * 1024, use_rlimit=True
    )
    await instance.worker.ready
    response = await instance.request("GET", "/")
    assert response.status_code == 502
    assert response.text == "memory limit exceeded (64Mi): MemoryError"
    assert await asyncio.wait_for(instance.worker.exited, 3) == 213  # the shim's MemoryError exit


async def test_kill_resolves_exited_with_minus_the_signal(spawn: Spawn) -> None:
    instance = await spawn()
    await instance.worker.ready
    instance.worker.kill()
    assert await asyncio.wait_for(instance.worker.exited, 3) == -signal.SIGKILL
    instance.worker.kill()  # already gone: no error


async def test_sigterm_finishes_the_request_in_flight_then_exits_0(spawn: Spawn) -> None:
    instance = await spawn("slow")
    call = asyncio.create_task(instance.request("GET", "/"))
    await instance.log_text("sleeping")
    instance.worker.kill(signal.SIGTERM)
    response = await call
    assert (response.status_code, response.text) == (200, "done")
    assert response.headers["connection"] == "close"
    assert await asyncio.wait_for(instance.worker.exited, 3) == 0
    with pytest.raises(httpx.ConnectError):  # refused, although the daemon's copy is open
        await instance.request("GET", "/")


async def test_zygote_death_kills_its_workers_and_fails_their_futures(
    zygote: Zygote, spawn: Spawn
) -> None:
    serving = await spawn()
    loading = await spawn(module="slow_import")
    await serving.worker.ready
    os.kill(zygote.pid, signal.SIGKILL)
    with pytest.raises(Unavailable, match="exited|closed"):
        await asyncio.wait_for(loading.worker.ready, 3)
    with pytest.raises(Unavailable):
        await serving.worker.exited
    assert not zygote.alive
    assert await _gone(serving.worker.pid)
    assert await _gone(loading.worker.pid)
    with pytest.raises(Unavailable):
        await zygote.spawn(
            _request(Path(), "handler"), listen_socket=serving.listener, log_fd=serving.log_read_fd
        )


async def test_close_leaves_no_process_behind(code_dir: Path) -> None:
    zygote = await Zygote.start(sys.executable)
    listeners = [_listen(), _listen()]
    try:
        workers = [
            await zygote.spawn(_request(code_dir, "handler"), listen_socket=sock, log_fd=2)
            for sock in listeners
        ]
        await asyncio.gather(*(worker.ready for worker in workers))
        processes = _descendants(zygote.pid) | {zygote.pid}
        assert {worker.pid for worker in workers} < processes
        await zygote.close()
    finally:
        await zygote.close()
        for sock in listeners:
            sock.close()
    assert not zygote.alive
    for pid in processes:
        assert await _gone(pid), f"process {pid} survived close()"
    assert [await worker.exited for worker in workers] == [0, 0]  # SIGTERM: graceful


# --------------------------------------------------------------------------- start-up


async def test_start_failure_names_the_interpreter_and_shows_its_stderr(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'no usable python here' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(Unavailable, match="(?s)exited with status 3.*no usable python here"):
        await Zygote.start(str(fake))


async def test_missing_interpreter_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot start a Python zygote"):
        await Zygote.start(str(tmp_path / "nope"))


@pytest.mark.skipif(not PYTHON_3_8, reason="no Python 3.8 interpreter on this machine")
async def test_python_3_8_zygote_serves(code_dir: Path) -> None:
    zygote = await Zygote.start(str(PYTHON_3_8[-1]))
    listener = _listen()
    try:
        assert zygote.python_version.startswith("3.8.")
        links = {"WEB_SERVICE_HOST": "127.96.0.5", "GREETING": "from-a-service"}
        request = replace(_request(code_dir, "inspect"), namespace="team", service_links=links)
        worker = await zygote.spawn(request, listen_socket=listener, log_fd=2)
        await worker.ready
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            host, port = listener.getsockname()
            seen = (await client.post(f"http://{host}:{port}/", json=[1])).json()
        assert seen["python"] == "3.8"
        assert seen["env"] == {"WEB_SERVICE_HOST": "127.96.0.5", "GREETING": "hi"}
    finally:
        await zygote.close()
        listener.close()
