"""cpu and qps rules acted on by real pools: real zygote-forked workers, CPU time from /proc, the
daemon's sweep running, one serial caller. Concurrency alone would keep one instance here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from funcmesh.model.function import Scaling
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.pool import FunctionPool, PoolContext
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.stats import Metrics
from tests.integration.test_pool import revision, until

HANDLERS = {
    # ~50 ms of one core per call: one busy instance is at about 100 % of a core
    "burn.py": (
        "import time\n"
        "def handler(event, context):\n"
        "    end = time.perf_counter() + 0.05\n"
        "    while time.perf_counter() < end:\n"
        "        pass\n"
        "    return 'burnt'\n"
    ),
    # 10 ms asleep per call: one serial caller makes well under 100 calls/s
    "nap.py": "import time\ndef handler(event, context):\n    time.sleep(0.01)\n    return 'ok'\n",
}


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    for name, text in HANDLERS.items():
        (tmp_path / name).write_text(text)
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[Pools]:
    """Pools as the daemon runs them: with the sweep that samples, starts and stops."""
    zygotes = Zygotes()
    context = PoolContext(
        addresses=AddressPool("127.131.0.0/16"),
        zygotes=zygotes,
        limiter=MemoryLimiter(tmp_path / "no-cgroups"),
        logbook=LogBook(),
        worker_port=8080,
        max_queue=8,
        queue_wait_s=5.0,
        worker_uid=None,
        worker_gid=None,
        on_pod_change=lambda kind, instance: None,
    )
    registry = Pools(context=context, metrics=Metrics(CollectorRegistry()), pod_events=PodEvents())
    registry.start()
    try:
        yield registry
    finally:
        await registry.close()
        await zygotes.close()


@contextlib.asynccontextmanager
async def serial_caller(pool: FunctionPool) -> AsyncIterator[list[int]]:
    """One caller calling ``pool`` back to back, one call at a time; yields the statuses."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def calls() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            while not stop.is_set():
                lease = await pool.acquire()
                host, port = lease.address
                started = time.monotonic()
                answer = await client.post(f"http://{host}:{port}/")
                duration_s = time.monotonic() - started
                lease.release(
                    ok=answer.is_success, status=answer.status_code, duration_s=duration_s
                )
                statuses.append(answer.status_code)

    task = asyncio.create_task(calls())
    try:
        yield statuses
    finally:
        stop.set()
        await task


def count(pool: FunctionPool) -> int:
    return len(pool.instances)


async def test_cpu_rule_starts_a_second_instance_for_one_busy_one(
    pools: Pools, code_dir: Path
) -> None:
    scaling = Scaling(max_scale=4, metric="cpu", target=50.0, scale_to_zero_after_s=1.0)
    pool = pools.deploy(revision(code_dir, "burn", scaling=scaling))
    most = 0
    async with serial_caller(pool) as statuses:
        await until(lambda: count(pool) >= 2, timeout_s=15)
        seen = len(statuses)
        while len(statuses) < seen + 40:  # 2 s more of a busy core
            most = max(most, count(pool))
            await asyncio.sleep(0.01)  # looking at the pool now and then while the load runs
        autoscaling = pool.summary()["autoscaling"]
    assert set(statuses) == {200}
    assert most == 2  # 100 % of one core over 50 % each: two, never more
    assert isinstance(autoscaling, dict)
    assert autoscaling["metric"] == "cpu"
    # per instance: at most half a core each (less when other processes share the cores)
    assert 0.0 < autoscaling["current"] <= 55.0
    stopped = time.monotonic()
    await until(lambda: count(pool) == 0, timeout_s=15)  # min-scale 0
    assert time.monotonic() - stopped >= scaling.scale_to_zero_after_s


async def test_concurrency_rule_keeps_one_instance_for_the_same_load(
    pools: Pools, code_dir: Path
) -> None:
    scaling = Scaling(max_scale=4, scale_to_zero_after_s=1.0)
    pool = pools.deploy(revision(code_dir, "burn", scaling=scaling))
    most = 0
    async with serial_caller(pool) as statuses:
        while len(statuses) < 60:  # 3 s of a busy core: more than the cpu rule needed above
            most = max(most, count(pool))
            await asyncio.sleep(0.01)  # looking at the pool now and then while the load runs
    assert most == 1
    assert "autoscaling" not in pool.summary()


async def test_qps_rule_scales_out_then_back_to_min_after_the_idle_time(
    pools: Pools, code_dir: Path
) -> None:
    scaling = Scaling(
        min_scale=1, max_scale=6, metric="qps", target=20.0, scale_to_zero_after_s=1.5
    )
    pool = pools.deploy(revision(code_dir, "nap", scaling=scaling))
    async with serial_caller(pool) as statuses:
        await until(lambda: count(pool) >= 3, timeout_s=15)
        began, calls = time.monotonic(), len(statuses)
        await until(lambda: len(statuses) >= calls + 50, timeout_s=5)
        qps = 50 / (time.monotonic() - began)
        await until(lambda: count(pool) >= min(6, int(qps / 20.0)), timeout_s=5)
    assert set(statuses) == {200}
    stopped = time.monotonic()
    assert count(pool) >= 3  # not needed any more, but held for scale-to-zero-after
    await until(lambda: count(pool) == 1, timeout_s=15)  # back to min-scale 1
    assert time.monotonic() - stopped >= scaling.scale_to_zero_after_s
    assert count(pool) == 1
