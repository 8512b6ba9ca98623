"""All function pools of the daemon, and the zygotes they fork from.

``Pools`` is what the gateway looks functions up in, what the function controller deploys
revisions to, and where the API reads Pods and call statistics. A periodic sweep fails calls
that queued too long, samples the load of cpu and qps rules, stops idle instances and starts the
ones ``min-scale`` or a cpu/qps rule wants. Zygotes are started lazily, one per interpreter,
and restarted when one dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from funcmesh.errors import NotFound
from funcmesh.runtime.fanout import Fanout
from funcmesh.runtime.instances import Instance, Revision
from funcmesh.runtime.pool import FunctionPool, PoolContext
from funcmesh.runtime.stats import Metrics
from funcmesh.runtime.zygote import Zygote

logger = logging.getLogger(__name__)

# Also the autoscaler's sampling interval: 4 samples/s over its 2 s window react within about
# half a second; a sweep of a pool without instances or waiters costs a few microseconds.
SWEEP_INTERVAL_S = 0.25


class Zygotes:
    """One running zygote per interpreter."""

    def __init__(self) -> None:
        self._zygotes: dict[str, Zygote] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def zygote_for(self, interpreter: str) -> Zygote:
        zygote = self._zygotes.get(interpreter)
        if zygote is not None and zygote.alive:
            return zygote
        async with self._locks.setdefault(interpreter, asyncio.Lock()):
            zygote = self._zygotes.get(interpreter)
            if zygote is None or not zygote.alive:
                if zygote is not None:
                    logger.warning("zygote for %s died; starting a new one", interpreter)
                    await zygote.close()
                zygote = self._zygotes[interpreter] = await Zygote.start(interpreter)
            return zygote

    async def close(self) -> None:
        zygotes, self._zygotes = list(self._zygotes.values()), {}
        await asyncio.gather(*(z.close() for z in zygotes), return_exceptions=True)


class PodEvents:
    """Fan-out of Pod changes to API watchers."""

    def __init__(self) -> None:
        self._live: Fanout[tuple[str, dict[str, Any]]] = Fanout()

    def publish(self, kind: str, pod: dict[str, Any]) -> None:
        self._live.publish((kind, pod))

    async def follow(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        async for kind, pod in self._live.follow():
            if namespace is None or pod["metadata"]["namespace"] == namespace:
                yield kind, pod

    def close(self) -> None:
        self._live.close()


class Pools:
    """Every function's pool, by namespace and name."""

    def __init__(self, *, context: PoolContext, metrics: Metrics, pod_events: PodEvents) -> None:
        self._context = context
        self._metrics = metrics
        self._pods = pod_events
        self._pools: dict[tuple[str, str], FunctionPool] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._generation = 0  # bumped when a function's labels may have changed

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="pool-sweeper")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            now = time.monotonic()
            for pool in list(self._pools.values()):
                try:
                    pool.expire_waiters(now)
                    pool.autoscale(now)
                    pool.reap_idle(now)
                except Exception:
                    logger.exception("sweeping %s failed", pool.display_name)

    # the function controller's side

    def pool(self, namespace: str, name: str) -> FunctionPool:
        """The pool of a function, made on first use (calls then wait for its first revision)."""
        key = (namespace, name)
        pool = self._pools.get(key)
        if pool is None:
            stats = self._metrics.stats_for(namespace, name)
            pool = self._pools[key] = FunctionPool(
                namespace, name, context=self._context, stats=stats
            )
        return pool

    def deploy(self, revision: Revision) -> FunctionPool:
        pool = self.pool(revision.namespace, revision.name)
        pool.deploy(revision)
        self._generation += 1
        return pool

    async def remove(self, namespace: str, name: str) -> None:
        pool = self._pools.pop((namespace, name), None)
        self._generation += 1
        if pool is not None:
            await pool.close()
            self._metrics.forget(namespace, name)
            self._context.logbook.forget_function(namespace, name)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools))
        self._pods.close()

    def in_flight(self) -> int:
        return sum(i.in_flight for pool in self._pools.values() for i in pool.instances)

    # the gateway's Backends

    def lookup(self, namespace: str, name: str) -> FunctionPool | None:
        return self._pools.get((namespace, name))

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[FunctionPool]:
        """The deployed functions of ``namespace`` whose instances' labels hold ``selector``
        (the function's labels plus ``function: NAME``), by name."""
        return [
            pool
            for (ns, name), pool in sorted(self._pools.items())
            if ns == namespace
            and pool.revision is not None
            and _holds({**pool.revision.labels, "function": name}, selector)
        ]

    @property
    def generation(self) -> int:
        """Changes whenever a function is deployed or removed (``select`` may differ)."""
        return self._generation

    # the API's PodSource and StatsSource

    def _instances(self, namespace: str | None, *, function: str | None = None) -> list[Instance]:
        """The instances in ``namespace`` (None: all), of ``function`` only when given."""
        if namespace is not None and function is not None:
            pool = self._pools.get((namespace, function))
            pools = [] if pool is None else [pool]
        else:
            pools = [
                pool
                for (ns, name), pool in self._pools.items()
                if (namespace is None or ns == namespace) and function in (None, name)
            ]
        found = [instance for pool in pools for instance in pool.instances]
        return sorted(found, key=lambda i: (i.revision.namespace, i.pod))

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The Pods of the instances (those whose labels hold ``selector``, when given: only
        those are built). An instance's ``function`` label is its function's name, so a
        selector naming one (every Function's Service has it) looks at that pool only."""
        function = None if selector is None else selector.get("function")
        return [
            instance.pod_object()
            for instance in self._instances(namespace, function=function)
            if selector is None or _holds(instance.pod_labels, selector)
        ]

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        for instance in self._instances(namespace):
            if instance.pod == name:
                return instance.pod_object()
        raise NotFound(f'pods "{name}" not found')

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self._pods.follow(namespace)

    def function_stats(self, namespace: str, name: str) -> Mapping[str, Any]:
        pool = self._pools.get((namespace, name))
        if pool is None:
            raise NotFound(f'functions.kubeless.io "{name}" not found')
        return pool.summary()


def _holds(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
