"""Delivering a message trigger's messages to its functions: a bounded queue, workers, retries.

One DeliveryLane per trigger. Putting a delivery waits while the queue is full, so a slow
function slows the subscription down (backpressure) instead of piling messages up in memory;
a fixed number of workers call the functions, so a burst never opens unbounded connections.
A failed call (an error answer, or the gateway unreachable) is retried with exponential backoff
a bounded number of times, then dropped. Every outcome is reported to the lane's observer.
This module knows nothing about NATS, the store or metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Protocol

from funcmesh.controllers.invoker import FunctionCaller
from funcmesh.errors import Unavailable

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"
    RETRIED = "retried"  # one failed attempt that will be tried again
    FAILED = "failed"  # given up: the message is dropped for this function


class DeliveryObserver(Protocol):
    """The owner of a lane: told every outcome, asked whether a function is still wanted."""

    def record(self, function: str, outcome: Outcome, detail: str) -> None: ...

    def selects(self, function: str) -> bool: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryPolicy:
    """How hard a lane works: parallel calls, queued deliveries, retries and their backoff."""

    concurrency: int = 16
    queue_size: int = 1024
    max_retries: int = 5
    first_backoff_s: float = 0.1
    max_backoff_s: float = 5.0

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1, 2, ...): doubling, with jitter so that
        many failed deliveries do not come back all at once."""
        ceiling = min(self.max_backoff_s, math.ldexp(self.first_backoff_s, retry - 1))
        return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One message for one function."""

    function: str
    body: bytes
    headers: Mapping[str, str]


class DeliveryLane:
    """The deliveries of one trigger in one namespace."""

    def __init__(
        self,
        *,
        namespace: str,
        trigger: str,
        caller: FunctionCaller,
        observer: DeliveryObserver,
        policy: DeliveryPolicy,
    ) -> None:
        self._namespace = namespace
        self._trigger = trigger
        self._caller = caller
        self._observer = observer
        self._policy = policy
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue(policy.queue_size)
        self._workers = [
            asyncio.create_task(self._work(), name=f"deliver-{namespace}-{trigger}-{index}")
            for index in range(policy.concurrency)
        ]

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def put(self, delivery: Delivery) -> None:
        """Queue a delivery; waits while the queue is full."""
        await self._queue.put(delivery)

    async def join(self) -> None:
        """Wait until every queued delivery has been delivered or dropped."""
        await self._queue.join()

    async def close(self) -> None:
        """Stop at once: queued and in-flight deliveries are abandoned."""
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            except Exception:  # a worker must survive any one delivery
                logger.exception(
                    "delivering to %s/%s for trigger %s failed",
                    self._namespace,
                    delivery.function,
                    self._trigger,
                )
            finally:
                self._queue.task_done()

    async def _deliver(self, delivery: Delivery) -> None:
        function = delivery.function
        problem = await self._attempt(delivery)
        for retry in range(1, self._policy.max_retries + 1):
            if problem is None:
                break
            self._observer.record(function, Outcome.RETRIED, problem)
            await asyncio.sleep(self._policy.backoff_s(retry))
            if not self._observer.selects(function):
                return  # deleted or no longer selected meanwhile: nobody to deliver to
            problem = await self._attempt(delivery)
        if problem is None:
            self._observer.record(function, Outcome.DELIVERED, "")
        else:
            attempts = self._policy.max_retries + 1
            self._observer.record(function, Outcome.FAILED, f"{problem} ({attempts} attempts)")

    async def _attempt(self, delivery: Delivery) -> str | None:
        """None when the function took the message, else what went wrong."""
        try:
            answer = await self._caller.call(
                self._namespace, delivery.function, body=delivery.body, headers=delivery.headers
            )
        except Unavailable as exc:
            return str(exc)
        if answer.ok:
            return None
        with contextlib.suppress(ValueError):
            return f"function answered {answer.status} {HTTPStatus(answer.status).phrase}"
        return f"function answered {answer.status}"
