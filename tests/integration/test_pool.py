"""Function pools with real zygotes and workers: cold start, reuse, scale-out, queueing,
timeouts, exits and scale to zero, as the gateway sees them through leases."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from funcmesh.errors import QueueFull, Unavailable
from funcmesh.model.function import Scaling
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.catalog import Runtime
from funcmesh.runtime.instances import Lease, Revision
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.pool import PoolContext
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.stats import Metrics

RUNTIME = Runtime.python(
    version=sys.version_info[:2],
    executable=Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable))),
)

HANDLERS = {
    "hello.py": "def handler(event, context):\n    return 'hello ' + context['function-name']\n",
    "counter.py": (
        "count = 0\n"
        "def handler(event, context):\n"
        "    global count\n"
        "    count += 1\n"
        "    return {'count': count}\n"
    ),
    "slow.py": (
        "import time\n"
        "def handler(event, context):\n"
        "    time.sleep(float(event['data'] or 0))\n"
        "    return 'done'\n"
    ),
    "crash.py": "import os\ndef handler(event, context):\n    os._exit(7)\n",
    "broken.py": "def handler(event, context)\n    return 1\n",
}


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    for name, text in HANDLERS.items():
        (tmp_path / name).write_text(text)
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[Pools]:
    zygotes = Zygotes()
    book = LogBook()
    events = PodEvents()
    published: list[tuple[str, str]] = []
    context = PoolContext(
        addresses=AddressPool("127.130.0.0/16"),
        zygotes=zygotes,
        limiter=MemoryLimiter(tmp_path / "no-cgroups"),
        logbook=book,
        worker_port=8080,
        max_queue=2,
        queue_wait_s=5.0,
        worker_uid=None,
        worker_gid=None,
        on_pod_change=lambda kind, instance: published.append((kind, instance.pod)),
    )
    registry = Pools(context=context, metrics=Metrics(CollectorRegistry()), pod_events=events)
    registry.published = published  # type: ignore[attr-defined]
    registry.logbook = book  # type: ignore[attr-defined]
    try:
        yield registry
    finally:
        await registry.close()
        await zygotes.close()


def revision(code_dir: Path, module: str, **changes: Any) -> Revision:
    base = Revision(
        namespace="default",
        name=module,
        uid="uid-1",
        generation=1,
        runtime=RUNTIME,
        code_dir=code_dir,
        sys_paths=(),
        module=module,
        handler="handler",
        env=(("GREETING", "hi"),),
        timeout_s=5.0,
        memory_limit=None,
        memory_limit_bytes=None,
        labels={"app": module},
        scaling=Scaling(max_scale=2),
        template_hash="abcdef0123",
    )
    return replace(base, **changes)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def call(lease: Lease, data: str = "") -> httpx.Response:
    host, port = lease.address
    started = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.post(f"http://{host}:{port}/", content=data)
    lease.release(
        ok=response.status_code < 500,
        status=response.status_code,
        duration_s=time.monotonic() - started,
    )
    return response


async def test_cold_start_then_reuse_keeps_module_state(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "counter"))
    first = await call(await pool.acquire())
    second = await call(await pool.acquire())
    assert first.json() == {"count": 1}
    assert second.json() == {"count": 2}  # the same instance served both
    summary = pool.summary()
    assert summary["coldStarts"] == 1
    assert summary["calls"] == 2
    assert summary["instances"] == 1


async def test_context_carries_the_function_name(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "hello", name="greeter"))
    assert (await call(await pool.acquire())).text == "hello greeter"
    pods = pools.list_pods("default")
    assert pods[0]["metadata"]["labels"] == {"app": "hello", "function": "greeter"}
    assert pods[0]["status"]["podIP"].startswith("127.130.")


async def test_scale_out_to_max_then_queue_then_queue_full(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "slow"))
    first, second = await pool.acquire(), await pool.acquire()
    assert first.address != second.address  # target concurrency 1: a second instance
    waiting = [asyncio.ensure_future(pool.acquire()) for _ in range(2)]
    await until(lambda: pool.queued == 2)
    with pytest.raises(QueueFull, match="max-scale"):
        await pool.acquire()
    await call(first, "0")
    third = await asyncio.wait_for(waiting[0], 5)
    assert third.address == first.address
    await call(second, "0")
    await call(third, "0")
    await call(await asyncio.wait_for(waiting[1], 5), "0")


async def test_killed_instance_reports_why_and_is_replaced(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "slow"))
    lease = await pool.acquire()
    request = asyncio.ensure_future(call(lease, "30"))
    await asyncio.sleep(0)  # the call is under way (or not: either way it must fail)
    lease.kill("stopped after the 5s timeout")
    with pytest.raises(httpx.HTTPError):
        await request
    assert await lease.exit_reason(5) == "stopped after the 5s timeout"
    assert pool.summary()["instances"] == 0
    assert (await call(await pool.acquire(), "0")).text == "done"


async def test_crash_mid_call_names_the_exit(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "crash"))
    lease = await pool.acquire()
    with pytest.raises(httpx.HTTPError):
        await call(lease)
    assert await lease.exit_reason(5) == "exited with code 7"
    log = pools.logbook.read_function_log("default", "crash", tail_lines=None, build=False)  # type: ignore[attr-defined]
    assert any("exited with code 7" in line for line in log)


async def test_load_failure_is_reported_and_served_as_500(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "broken"))
    error = await pool.warm()
    assert error is not None
    assert "SyntaxError" in error
    response = await call(await pool.acquire())
    assert response.status_code == 500
    assert "SyntaxError" in response.text


async def test_idle_instances_scale_to_zero_and_min_scale_keeps_one(
    pools: Pools, code_dir: Path
) -> None:
    scaling = Scaling(min_scale=1, max_scale=3, scale_to_zero_after_s=0.0)
    pool = pools.deploy(revision(code_dir, "hello", scaling=scaling))
    leases = [await pool.acquire() for _ in range(3)]
    for lease in leases:
        await call(lease)
    assert pool.summary()["instances"] == 3
    pool.reap_idle(time.monotonic() + 1)
    deadline = time.monotonic() + 10
    while pool.summary()["instances"] > 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert pool.summary()["instances"] == 1


async def test_new_revision_replaces_old_instances(pools: Pools, code_dir: Path) -> None:
    pool = pools.deploy(revision(code_dir, "counter"))
    assert pool.labels == {"app": "counter", "function": "counter"}
    old = await pool.acquire()
    await call(old)
    pools.deploy(
        revision(
            code_dir,
            "hello",
            name="counter",
            generation=2,
            template_hash="ffffff0000",
            labels={"app": "counter", "version": "v2"},
        )
    )
    assert pool.labels == {"app": "counter", "version": "v2", "function": "counter"}
    answer = await call(await pool.acquire())
    assert answer.text == "hello counter"
    assert await old.exit_reason(10) == "replaced by a new revision"


async def test_calls_wait_for_the_first_revision_or_fail_clearly(
    pools: Pools, code_dir: Path
) -> None:
    pool = pools.pool("default", "later")
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)  # the caller now waits for a first revision
    pools.deploy(revision(code_dir, "hello", name="later"))
    assert (await call(await asyncio.wait_for(waiting, 5))).text == "hello later"
    failing = pools.pool("default", "never")
    pending = asyncio.ensure_future(failing.acquire())
    await asyncio.sleep(0)
    failing.fail("BuildFailed: pip install failed")
    with pytest.raises(Unavailable, match="BuildFailed"):
        await pending


async def test_try_acquire_leases_only_an_instance_with_room_now(
    pools: Pools, code_dir: Path
) -> None:
    pool = pools.pool("default", "hello")
    assert pool.try_acquire() is None  # no revision yet: acquire waits for one
    pools.deploy(revision(code_dir, "hello", scaling=Scaling(max_scale=1)))
    assert pool.try_acquire() is None  # no instance yet: acquire starts one
    first = await pool.acquire()
    assert pool.try_acquire() is None  # target concurrency 1, and the only instance is busy
    queued = asyncio.ensure_future(pool.acquire())
    await call(first)
    second = await asyncio.wait_for(queued, 5)
    await call(second)
    lease = pool.try_acquire()
    assert lease is not None
    assert lease.address == first.address
    assert (await call(lease)).text == "hello hello"
    assert pool.summary()["calls"] == 3


async def test_queued_calls_expire_and_a_caller_that_left_gives_its_turn_back(
    pools: Pools, code_dir: Path
) -> None:
    pool = pools.deploy(revision(code_dir, "hello", scaling=Scaling(max_scale=1)))
    held = await pool.acquire()
    expiring = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    pool.expire_waiters(time.monotonic() + 60)
    with pytest.raises(QueueFull, match="no instance became free"):
        await expiring
    leaving = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    await call(held)  # hands the instance to the waiting caller...
    leaving.cancel()  # ...who has gone meanwhile
    with pytest.raises(asyncio.CancelledError):
        await leaving
    lease = pool.try_acquire()
    assert lease is not None  # the instance was given back, not leaked
    await call(lease)


async def test_a_queued_call_gets_its_lease_by_callback_after_the_release(
    pools: Pools, code_dir: Path
) -> None:
    """The gateway's queue without a task: the lease comes from the loop, after the release
    that freed the instance; the queue keeps its order, limit, expiry and a leaver's turn."""
    pool = pools.pool("default", "hello")
    assert pool.queue_call(print, print) is None  # no revision yet: acquire() waits for it
    pools.deploy(revision(code_dir, "hello", scaling=Scaling(max_scale=1)))
    assert pool.queue_call(print, print) is None  # an instance may start: acquire() starts it
    held = await pool.acquire()
    leases: list[Lease] = []
    errors: list[Exception] = []
    first = pool.queue_call(leases.append, errors.append)
    second = pool.queue_call(leases.append, errors.append)
    assert first is not None
    assert second is not None
    assert pool.queued == 2
    with pytest.raises(QueueFull, match="2 calls already waiting"):
        pool.queue_call(leases.append, errors.append)  # max_queue is 2
    await call(held)
    assert leases == []  # not inside the release: from the loop, soon after
    await until(lambda: len(leases) == 1)
    assert leases[0].address == held.address
    second.cancel()  # the second caller leaves before its turn
    await call(leases.pop())
    await asyncio.sleep(0.05)
    assert leases == []
    assert errors == []
    lease = pool.try_acquire()
    assert lease is not None  # its turn was given back, not leaked
    expiring = pool.queue_call(leases.append, errors.append)
    assert expiring is not None
    pool.expire_waiters(time.monotonic() + 60)
    await until(lambda: len(errors) == 1)
    assert isinstance(errors[0], QueueFull)
    assert "no instance became free" in str(errors[0])
    leaving = pool.queue_call(leases.append, errors.append)
    assert leaving is not None
    await call(lease)  # hands the instance over (from the loop, soon)...
    leaving.cancel()  # ...to a caller that leaves before it arrives
    await asyncio.sleep(0.05)
    assert leases == []
    last = pool.try_acquire()
    assert last is not None  # given back, not leaked
    await call(last)


async def test_a_scaling_change_keeps_instances_and_starts_none(
    pools: Pools, code_dir: Path
) -> None:
    pool = pools.deploy(revision(code_dir, "counter"))
    assert await pool.warm() is None
    await call(await pool.acquire())
    wider = revision(code_dir, "counter", generation=2, scaling=Scaling(max_scale=5))
    pools.deploy(wider)
    assert await pool.warm() is None  # the running instance is already this revision
    assert pool.summary()["instances"] == 1
    assert (await call(await pool.acquire())).json() == {"count": 2}  # same process, state kept
