"""Long-running iteration that ends on a stop signal, a deadline or the source's end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from funcmesh.api.streams import StartedIterator, until_stopped


@dataclass
class Source:
    """An async generator source that records its life cycle."""

    queue: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False

    async def items(self) -> AsyncIterator[int]:
        self.subscribed.set()
        try:
            while (item := await self.queue.get()) is not None:
                yield item
        finally:
            self.closed = True


async def collect(iterator: AsyncIterator[int]) -> list[int]:
    return [item async for item in iterator]


async def test_yields_until_the_source_ends() -> None:
    source = Source()
    for item in (1, 2, None):
        source.queue.put_nowait(item)
    items = await collect(until_stopped(source.items(), stop=asyncio.Event()))
    assert items == [1, 2]
    assert source.closed


async def test_stop_interrupts_a_wait_for_the_next_item() -> None:
    source, stop = Source(), asyncio.Event()
    source.queue.put_nowait(1)
    stream = until_stopped(source.items(), stop=stop)
    assert await anext(stream) == 1
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    stop.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 1.0)
    assert source.closed


async def test_timeout_ends_the_stream() -> None:
    source = Source()
    async with asyncio.timeout(2.0):
        items = await collect(until_stopped(source.items(), stop=asyncio.Event(), timeout_s=0.05))
    assert items == []
    assert source.closed


async def test_cancelling_the_consumer_leaves_no_task_behind() -> None:
    source = Source()
    consumer = asyncio.ensure_future(collect(until_stopped(source.items(), stop=asyncio.Event())))
    await asyncio.wait_for(source.subscribed.wait(), 1.0)
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    assert source.closed


async def test_errors_of_the_source_reach_the_consumer() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        raise LookupError("gone")

    with pytest.raises(LookupError, match="gone"):
        await collect(until_stopped(failing(), stop=asyncio.Event()))


async def test_started_iterator_subscribes_before_the_first_read() -> None:
    source = Source()
    started = StartedIterator(source.items())
    await asyncio.sleep(0)
    assert source.subscribed.is_set()
    source.queue.put_nowait(7)
    assert await anext(started) == 7
    await started.aclose()
    assert source.closed


async def test_started_iterator_closes_without_being_read() -> None:
    source = Source()
    started = StartedIterator(source.items())
    await asyncio.sleep(0)
    await started.aclose()
    assert source.closed
