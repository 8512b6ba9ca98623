"""Long-running responses (watches, log follows): iterate a source until it ends, the server
stops or a deadline passes, leaving no task behind.

The source is advanced in a helper task so that a stop signal or the deadline can interrupt a
wait for the next item; when the consumer itself is cancelled (aiohttp cancels the handler when
the client disconnects) the helper task is cancelled and awaited too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Generic, TypeVar

from funcmesh.api.status import BadRequest

T = TypeVar("T")


async def until_stopped(
    source: AsyncIterator[T], *, stop: asyncio.Event, timeout_s: float | None = None
) -> AsyncGenerator[T, None]:
    """Items of ``source`` until it ends, ``stop`` is set or ``timeout_s`` passes."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    stopped = asyncio.ensure_future(stop.wait())
    pending: asyncio.Future[T] | None = None
    try:
        while not stop.is_set():
            pending = asyncio.ensure_future(anext(source))
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait(
                {pending, stopped}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
            if not pending.done():
                return
            item_future, pending = pending, None
            try:
                item = item_future.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        for future in (pending, stopped):
            if future is not None and not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await future
        await close_iterator(source)


class StartedIterator(Generic[T]):
    """An async iterator whose first ``__anext__`` is already running.

    A source that subscribes on first use (an async generator) thereby subscribes now, so a
    snapshot read right after ``await asyncio.sleep(0)`` misses no item in between.
    """

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._first: asyncio.Future[T] | None = asyncio.ensure_future(anext(source))

    def __aiter__(self) -> StartedIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._first is None:
            return await anext(self._source)
        first, self._first = self._first, None
        return await first

    async def aclose(self) -> None:
        first, self._first = self._first, None
        if first is not None and not first.done():
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await first
        await close_iterator(self._source)


async def close_iterator(iterator: AsyncIterator[object]) -> None:
    """Close an async generator now (its ``finally`` runs here, not at garbage collection)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def tail_lines(text: str | None) -> int | None:
    """``tailLines``: None for all lines (absent, empty or negative, as Kubernetes reads it)."""
    if not text:
        return None
    if not text.lstrip("-").isdigit():
        raise BadRequest(f'tailLines must be a number, got "{text}"')
    number = int(text)
    return None if number < 0 else number
