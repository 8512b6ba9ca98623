"""A Python handler's trace context reaches the calls it makes from threads it starts or hands
work to, and through httpx and aiohttp: a real worker process (a Kubeless runtime container's
way) serves a handler that calls the reporting server of test_trace_propagation.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.unit.runtime.test_trace_propagation import (
    INCOMING,
    OWN,
    SHIMS,
    Function,
    Upstream,
    start,
)

HANDLER = """
import asyncio, json, threading, urllib.request
from concurrent.futures import ThreadPoolExecutor

POOL = ThreadPoolExecutor(1)  # one thread, started by the first call that uses it


def fetch(url, headers=None):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {})) as answer:
        return answer.read().decode()


class Caller(threading.Thread):
    def __init__(self, url):
        super().__init__()
        self.url = url
        self.seen = None

    def run(self):
        self.seen = fetch(self.url)


async def with_httpx(url, own):
    import httpx
    async with httpx.AsyncClient() as client:
        return (await client.get(url, headers=own)).text


async def with_aiohttp(url, own):
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=own) as answer:
            return await answer.text()


def call(event, context):
    how, url = event["data"]["how"], event["data"]["url"]
    own = {"TraceParent": "OWN_TRACEPARENT"} if event["data"].get("own") else {}
    if how == "thread":
        seen = []
        thread = threading.Thread(target=lambda: seen.append(fetch(url, own)))
        thread.start()
        thread.join()
        return seen[0]
    if how == "thread-subclass":
        thread = Caller(url)
        thread.start()
        thread.join()
        return thread.seen
    if how == "pool":
        return POOL.submit(fetch, url, own).result()
    if how == "executor":
        return asyncio.run(in_executor(url))
    if how == "requests-in-pool":
        import requests
        return POOL.submit(lambda: requests.get(url).text).result()
    if how == "httpx":
        import httpx
        return httpx.get(url, headers=own).text
    if how == "httpx-async":
        return asyncio.run(with_httpx(url, own))
    if how == "aiohttp":
        return asyncio.run(with_aiohttp(url, own))


async def in_executor(url):
    return await asyncio.get_running_loop().run_in_executor(None, fetch, url)
""".replace("OWN_TRACEPARENT", OWN)

WAYS = ["thread", "thread-subclass", "pool", "executor"]
WAYS += [
    way
    for way, module in (
        ("requests-in-pool", "requests"),
        ("httpx", "httpx"),
        ("httpx-async", "httpx"),
        ("aiohttp", "aiohttp"),
    )
    if importlib.util.find_spec(module) is not None
]
CLIENTS = [way for way in ("httpx", "httpx-async", "aiohttp") if way in WAYS]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Function]:
    directory = tmp_path_factory.mktemp("trace-clients")
    (directory / "trace_clients.py").write_text(HANDLER)
    started = start(
        [sys.executable, str(SHIMS / "_funcmesh_worker.py")], directory, "trace_clients"
    )
    yield started
    started.stop()


@pytest.mark.parametrize("how", WAYS)
def test_the_calls_trace_context_reaches_the_request(
    function: Function, upstream: Upstream, how: str
) -> None:
    assert function.call(how, upstream, **INCOMING) == INCOMING


@pytest.mark.parametrize("how", WAYS)
def test_without_a_context_none_is_added(function: Function, upstream: Upstream, how: str) -> None:
    assert function.call(how, upstream) == {}


def test_a_pool_thread_started_by_one_call_runs_the_next_calls_work_in_its_context(
    function: Function, upstream: Upstream
) -> None:
    """The pool's one thread started during the first call; later work is each call's."""
    parents = [f"00-{'%032x' % (n + 7)}-{'%016x' % (n + 7)}-01" for n in range(3)]

    seen = [function.call("pool", upstream, traceparent=parent) for parent in parents]

    assert [s["traceparent"] for s in seen] == parents
    assert function.call("pool", upstream) == {}


@pytest.mark.parametrize("how", ["thread", "pool", *CLIENTS])
def test_a_request_with_its_own_traceparent_keeps_it(
    function: Function, upstream: Upstream, how: str
) -> None:
    data = {"how": how, "url": upstream.url, "own": True}
    response = httpx.post(function.url, json=data, headers=INCOMING, timeout=10)

    assert response.status_code == 200, response.text
    assert json.loads(response.text) == {"traceparent": OWN}
