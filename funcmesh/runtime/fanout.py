"""Fan-out of live items (log lines, Pod changes) to followers, each with a bounded queue.

A follower that falls ``max_queue`` items behind is dropped (its iteration ends) rather than
slowing the publisher: publishing is on the hot path of whatever produces the items.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Fanout(Generic[T]):
    """Hands every published item to every current follower."""

    def __init__(self, *, max_queue: int = 10_000) -> None:
        self._max_queue = max_queue
        self._followers: set[asyncio.Queue[T | None]] = set()

    def publish(self, item: T) -> None:
        for queue in list(self._followers):
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._followers.discard(queue)
                self._end(queue)

    async def follow(self) -> AsyncIterator[T]:
        """Items published after the first ``__anext__``, until ``close`` (or overflow)."""
        queue: asyncio.Queue[T | None] = asyncio.Queue(self._max_queue)
        self._followers.add(queue)
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            self._followers.discard(queue)

    def close(self) -> None:
        for queue in list(self._followers):
            self._end(queue)
        self._followers.clear()

    @staticmethod
    def _end(queue: asyncio.Queue[T | None]) -> None:
        if queue.full():
            queue.get_nowait()
        queue.put_nowait(None)
