"""In-memory fan-out of committed changes to watchers.

The store publishes every committed change here, in commit order, from the event loop thread;
each watcher has its own bounded queue. A watcher that cannot keep up is closed (it will see
``Gone`` and re-list, as Kubernetes clients do) so one slow client never slows the store.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from funcmesh.model.objects import RawObject, namespace_of


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One committed change of one object."""

    type: str  # ADDED, MODIFIED or DELETED
    resource: str  # ResourceType.key
    object: RawObject
    resource_version: int


class Subscription:
    """Changes of one resource (optionally one namespace) since the subscription started."""

    def __init__(self, feed: Feed, resource: str, namespace: str | None, max_queue: int) -> None:
        self._feed = feed
        self.resource = resource
        self.namespace = namespace
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue(max_queue)
        self.overflowed = False

    def wants(self, change: Change) -> bool:
        if change.resource != self.resource:
            return False
        return self.namespace is None or namespace_of(change.object) == self.namespace

    def offer(self, change: Change) -> None:
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.overflowed = True
            self.close()

    def close(self) -> None:
        self._feed.unsubscribe(self)
        while True:
            try:
                self.queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self.queue.get_nowait()

    async def next(self) -> Change | None:
        """The next change, or None once the subscription is closed."""
        return await self.queue.get()


class Feed:
    """Subscribers of committed changes."""

    def __init__(self, *, max_queue: int = 10_000) -> None:
        self._subscriptions: set[Subscription] = set()
        self._max_queue = max_queue

    def subscribe(self, resource: str, namespace: str | None) -> Subscription:
        subscription = Subscription(self, resource, namespace, self._max_queue)
        self._subscriptions.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, change: Change) -> None:
        for subscription in list(self._subscriptions):
            if subscription.wants(change):
                subscription.offer(change)

    def close_all(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.close()
