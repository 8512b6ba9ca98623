"""Async calls against a real SQLite store: the calls table, and the runner with a real
callback receiver on 127.0.0.1 (the function is reached through a fake ``FunctionCaller``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from funcmesh.controllers.async_calls import AsyncCallRunner
from funcmesh.controllers.invoker import Answer
from funcmesh.errors import NotFound, Unavailable
from funcmesh.store.calls import (
    FAILED,
    INTERRUPTED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    CallStore,
    NewCall,
    Outcome,
)
from funcmesh.store.sqlite import Store


def new_call(name: str = "hello", *, callback_url: str | None = None) -> NewCall:
    return NewCall(
        namespace="default",
        name=name,
        method="POST",
        path="/x?y=1",
        headers=[("Content-Type", "text/plain")],
        body=b"payload",
        callback_url=callback_url,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def open_calls(store: Store) -> CallStore:
    calls = CallStore(store)
    await calls.prepare()
    return calls


class EchoCaller:
    """Answers every call with its body (or fails, for names starting with ``down``)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, bytes]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def call(
        self,
        namespace: str,
        name: str,
        *,
        method: str = "POST",
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        path: str = "/",
    ) -> Answer:
        self.calls.append((name, method, path, body))
        await self.release.wait()
        if name.startswith("down"):
            raise Unavailable(f"calling function {namespace}/{name} failed")
        status = 500 if name.startswith("broken") else 200
        return Answer(status=status, body=b"answer to " + body, headers={})


async def wait_for_phase(calls: CallStore, call_id: str, *phases: str) -> None:
    async with asyncio.timeout(3):
        while (await calls.get(call_id)).phase not in phases:
            await asyncio.sleep(0.01)


async def test_a_call_is_stored_pending_and_claimed_once(store: Store) -> None:
    calls = await open_calls(store)
    call_id = await calls.add(new_call())
    stored = await calls.get(call_id)
    assert stored.phase == PENDING
    assert stored.body == b"payload"
    assert stored.headers == (("Content-Type", "text/plain"),)

    [claimed] = await calls.claim(10)
    assert (claimed.id, claimed.phase) == (call_id, RUNNING)
    assert (await calls.get(call_id)).phase == RUNNING
    assert await calls.claim(10) == []


async def test_running_calls_become_interrupted_after_a_restart(tmp_path: Path) -> None:
    first = await Store.open(tmp_path / "state.db")
    calls = await open_calls(first)
    running_id = await calls.add(new_call())
    await calls.claim(1)
    pending_id = await calls.add(new_call())
    await first.close()

    second = await Store.open(tmp_path / "state.db")
    try:
        calls = await open_calls(second)
        assert await calls.interrupt_running() == 1
        assert (await calls.get(running_id)).phase == INTERRUPTED
        [claimed] = await calls.claim(10)
        assert claimed.id == pending_id
    finally:
        await second.close()


async def test_an_unknown_call_is_not_found(store: Store) -> None:
    calls = await open_calls(store)
    with pytest.raises(NotFound, match='call "nope" not found'):
        await calls.get("nope")


async def test_calls_never_reach_the_objects_change_feed(store: Store) -> None:
    calls = await open_calls(store)
    rv = store.resource_version
    await calls.add(new_call())
    assert store.resource_version == rv


class CallbackReceiver:
    """A real HTTP server on 127.0.0.1 that records each POST; answers ``statuses`` in turn."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.got = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/done"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in head[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append((headers, body))
        status = self.statuses.pop(0) if self.statuses else 200
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
        await writer.drain()
        writer.close()
        self.got.set()


@pytest.fixture
async def receiver() -> AsyncIterator[CallbackReceiver]:
    receiving = CallbackReceiver([])
    receiving.server = await asyncio.start_server(receiving.handle, "127.0.0.1", 0)
    yield receiving
    receiving.server.close()
    await receiving.server.wait_closed()


async def start_runner(
    store: Store, caller: EchoCaller, *, max_concurrent: int = 16
) -> AsyncCallRunner:
    runner = AsyncCallRunner(
        CallStore(store), max_concurrent=max_concurrent, callback_backoff_s=0.01
    )
    await runner.prepare()
    runner.start(caller)
    return runner


async def submit(runner: AsyncCallRunner, name: str, callback_url: str | None = None) -> str:
    return await runner.submit(
        namespace="default",
        name=name,
        method="PUT",
        path="/p",
        headers=[("X-A", "1")],
        body=b"in",
        callback_url=callback_url,
    )


async def test_the_runner_records_the_answer_and_posts_it_to_the_callback(
    store: Store, receiver: CallbackReceiver
) -> None:
    caller = EchoCaller()
    runner = await start_runner(store, caller)
    try:
        call_id = await submit(runner, "hello", receiver.url)
        calls = CallStore(store)
        await wait_for_phase(calls, call_id, SUCCEEDED)
        async with asyncio.timeout(3):
            await receiver.got.wait()
    finally:
        await runner.close(1.0)
    record = await calls.get(call_id)
    assert (record.status_code, record.result) == (200, b"answer to in")
    assert record.duration_s is not None
    assert record.duration_s >= 0
    assert caller.calls == [("hello", "PUT", "/p", b"in")]
    [(headers, body)] = receiver.received
    assert body == b"answer to in"
    assert headers["x-call-id"] == call_id
    assert headers["x-function-status"] == "200"
    assert headers["x-function-name"] == "default/hello"
    assert record.callback == "Delivered"


async def test_a_failing_callback_is_retried_then_recorded_failed(
    store: Store, receiver: CallbackReceiver
) -> None:
    receiver.statuses = [503, 503, 503, 503]
    runner = await start_runner(store, EchoCaller())
    calls = CallStore(store)
    try:
        call_id = await submit(runner, "broken", receiver.url)
        async with asyncio.timeout(3):
            while (await calls.get(call_id)).callback is None:
                await asyncio.sleep(0.01)
    finally:
        await runner.close(1.0)
    record = await calls.get(call_id)
    assert (record.phase, record.status_code) == (FAILED, 500)
    assert len(receiver.received) == 4
    assert record.callback == FAILED
    assert record.callback_error == "callback answered 503"


async def test_an_unreachable_function_fails_the_call_with_the_reason(store: Store) -> None:
    runner = await start_runner(store, EchoCaller())
    calls = CallStore(store)
    try:
        call_id = await submit(runner, "down")
        await wait_for_phase(calls, call_id, FAILED)
    finally:
        await runner.close(1.0)
    record = await calls.get(call_id)
    assert record.status_code is None
    assert record.error == "calling function default/down failed"


async def test_no_more_than_max_concurrent_calls_run_at_once(store: Store) -> None:
    caller = EchoCaller()
    caller.release.clear()
    runner = await start_runner(store, caller, max_concurrent=2)
    calls = CallStore(store)
    try:
        ids = [await submit(runner, f"f{i}") for i in range(5)]
        async with asyncio.timeout(3):
            while len(caller.calls) < 2:
                await asyncio.sleep(0.01)
        phases = [(await calls.get(call_id)).phase for call_id in ids]
        assert phases.count(RUNNING) == 2
        assert phases.count(PENDING) == 3
        caller.release.set()
        for call_id in ids:
            await wait_for_phase(calls, call_id, SUCCEEDED)
    finally:
        await runner.close(1.0)
    assert len(caller.calls) == 5


async def test_ended_calls_are_deleted_after_the_retention(store: Store) -> None:
    """Pending and running calls stay whatever their age; ended ones go after the retention."""
    calls = await open_calls(store)
    ended_id = await calls.add(new_call())
    [running] = await calls.claim(1)
    await calls.finish(running.id, Outcome(phase=SUCCEEDED, status_code=200, result=b"ok"))
    running_id = await calls.add(new_call())
    await calls.claim(1)
    pending_id = await calls.add(new_call())

    assert await calls.purge_ended(ended_before=time.time() - 3600) == 0  # ended just now
    assert (await calls.get(ended_id)).phase == SUCCEEDED

    assert await calls.purge_ended(ended_before=time.time() + 1) == 1
    with pytest.raises(NotFound):
        await calls.get(ended_id)
    assert (await calls.get(running_id)).phase == RUNNING
    assert (await calls.get(pending_id)).phase == PENDING


async def test_the_runner_purges_old_calls_by_itself(store: Store) -> None:
    caller = EchoCaller()
    runner = AsyncCallRunner(CallStore(store), retention_s=0.0, purge_interval_s=0.05)
    await runner.prepare()
    runner.start(caller)
    try:
        call_id = await submit(runner, "hello")
        calls = CallStore(store)
        async with asyncio.timeout(3):
            while True:
                try:
                    await calls.get(call_id)
                except NotFound:
                    break  # answered, then deleted by the runner's purge
                await asyncio.sleep(0.02)
    finally:
        await runner.close(1.0)
    assert caller.calls == [("hello", "PUT", "/p", b"in")]
