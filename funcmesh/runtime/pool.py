"""The instance pool of one function: cold starts, concurrency, queueing, autoscaling.

``acquire`` gives a caller an instance with room (in-flight calls below the target concurrency),
starts a new one when none has room and ``max-scale`` allows, and otherwise queues the caller
(bounded; full -> QueueFull). A new instance's socket is bound before its worker starts, so a
caller can connect at once and the kernel holds the request until the worker accepts: the cold
start costs one fork (Python) or one message to a pre-started process (Node.js) plus loading the
handler (``funcmesh.runtime.starters``). For a cpu or qps rule the sweep also samples the load
(``autoscale``) and starts instances ahead of the calls, off their path; ``reap_idle`` stops idle
instances beyond what the rule keeps (``funcmesh.runtime.autoscaler``). Starting, supervising
and stopping the instances themselves is ``funcmesh.runtime.lifecycle``'s. The pool never talks
HTTP itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from funcmesh.errors import FuncmeshError, QueueFull, Unavailable
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.autoscaler import Autoscaler, Recommendation, Sample, read_cpu_seconds
from funcmesh.runtime.instances import Instance, Lease, QueuedCall, Revision
from funcmesh.runtime.lifecycle import InstanceLifecycle
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.mesh_credentials import MeshCredentials
from funcmesh.runtime.starters import WorkerStarter, ZygoteSource
from funcmesh.runtime.stats import FunctionStats
from funcmesh.runtime.workers import WorkerLoadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolContext:
    """What every pool shares: addresses, zygotes, limits, logs and settings.

    ``starters`` start instances by runtime language; Python's is the zygote's, built in.
    """

    addresses: AddressPool
    zygotes: ZygoteSource
    limiter: MemoryLimiter
    logbook: LogBook
    worker_port: int
    max_queue: int
    queue_wait_s: float
    worker_uid: int | None
    worker_gid: int | None
    on_pod_change: Callable[[str, Instance], None]
    starters: Mapping[str, WorkerStarter] = field(default_factory=dict)
    # Cluster names for the function's code: the DNS server (HOST:PORT) its shim asks, and
    # the Kubernetes service variables of a namespace (``HELLO_SERVICE_HOST``...) at start:
    # the same mapping object until a Service of the namespace changes, so that a zygote is
    # sent them once per change, not with every cold start.
    dns_server: str | None = None
    service_env: Callable[[str], Mapping[str, str]] | None = None
    # the mesh certificates of the instances' identities (None: they call in plaintext)
    mesh_credentials: MeshCredentials | None = None


class FunctionPool:
    """Instances of one function, and the callers waiting for one."""

    def __init__(self, namespace: str, name: str, *, context: PoolContext, stats: FunctionStats):
        self.namespace = namespace
        self.name = name
        self.display_name = f"{namespace}/{name}"
        self.stats = stats
        self.revision: Revision | None = None
        self.failure: str | None = None
        self._labels: Mapping[str, str] = {}
        self._labels_of: Revision | None = None  # the revision ``_labels`` were made for
        self._context = context
        self._lifecycle = InstanceLifecycle(
            namespace, name, context=context, stats=stats, on_exit=self._serve_waiters
        )
        self._instances = self._lifecycle.instances  # read here, changed only by the lifecycle
        self._waiters: deque[_Waiter | QueuedCall] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None  # the gateway's, once a call queues
        self._decided = asyncio.Event()
        self._closed = False
        self._autoscaler: Autoscaler | None = None  # only while the rule is cpu or qps
        self._recommended: Recommendation | None = None

    @property
    def instances(self) -> list[Instance]:
        return list(self._instances.values())

    @property
    def queued(self) -> int:
        """Calls waiting for an instance."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    @property
    def labels(self) -> Mapping[str, str]:
        """Its instances' labels (the revision's and ``function``), {} before a revision:
        what mesh policies select (the gateway's ``Backend.labels``)."""
        revision = self.revision
        if revision is None:
            return {}
        if self._labels_of is not revision:  # made once per revision: every call reads them
            self._labels = {**revision.labels, "function": self.name}
            self._labels_of = revision
        return self._labels

    # desired state, from the function controller

    def deploy(self, revision: Revision) -> None:
        """Serve ``revision`` from now on; instances of older revisions drain and stop."""
        self.revision, self.failure = revision, None
        self._decided.set()
        for instance in list(self._instances.values()):
            if instance.revision.template_hash == revision.template_hash:
                # Same code, environment and limits (only labels or scaling changed): keep
                # serving, as the new revision, so Pods and checks see what is current.
                instance.revision = revision
                continue
            instance.draining = True
            if instance.in_flight == 0:
                self._lifecycle.stop(instance, "replaced by a new revision")
        self._serve_waiters()

    def fail(self, message: str) -> None:
        """No revision can be served (yet): callers get 503 with this message."""
        self.failure = message
        self._decided.set()  # callers waiting for a first revision learn it will not come
        if self.revision is None:
            waiters, self._waiters = self._waiters, deque()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(Unavailable(self._unavailable_text()))

    def _unavailable_text(self) -> str:
        return f"function {self.display_name} is not ready: {self.failure or 'deploying'}"

    async def warm(self, timeout_s: float = 30.0) -> str | None:
        """Make sure one instance of the current revision loaded its handler.

        Returns the load error (``SyntaxError: ...``) or None. The instance stays up and serves
        calls until it has been idle for ``scale-to-zero-after``.
        """
        revision = self.revision
        if revision is None:
            return self.failure
        current = [
            i
            for i in self._instances.values()
            if i.revision is revision and i.process and not i.draining
        ]
        instance = current[0] if current else await self._lifecycle.start(revision)
        if instance.process is None:  # pragma: no cover - start sets it
            return "instance did not start"
        try:
            await asyncio.wait_for(asyncio.shield(instance.process.ready), timeout_s)
        except WorkerLoadError as exc:
            return str(exc)
        except TimeoutError:
            return f"the handler did not load within {timeout_s:.0f}s"
        except FuncmeshError as exc:
            return f"instance {instance.pod} {instance.exit_reason or 'failed'}: {exc}"
        return None

    # the gateway's side

    def try_acquire(self) -> Lease | None:
        """``acquire`` when an instance has room now; None when the caller must ``await
        acquire()`` (no revision yet, an instance to start, a queue to wait in)."""
        if self.revision is None or self._waiters:
            return None  # callers already waiting: no instance has room, and they go first
        instance = self._pick()
        if instance is None:
            return None
        instance.in_flight += 1
        return Lease(self, instance)

    async def acquire(self) -> Lease:
        if self.revision is None:
            await self._wait_for_revision()
        instance = self._pick()
        if instance is not None:
            instance.in_flight += 1
        elif self.revision is not None and self._live_count() < self._max_scale():
            instance = await self._lifecycle.start(self.revision, reserved=True)
        else:
            instance = await self._queue()
        return Lease(self, instance)

    async def _wait_for_revision(self) -> None:
        if self.failure is not None:
            raise Unavailable(self._unavailable_text())
        try:
            await asyncio.wait_for(self._decided.wait(), self._context.queue_wait_s)
        except TimeoutError:
            raise Unavailable(self._unavailable_text()) from None
        if self.revision is None:
            raise Unavailable(self._unavailable_text())

    def _max_scale(self) -> int:
        return self.revision.scaling.max_scale if self.revision else 0

    def _target(self) -> int:
        return self.revision.scaling.target_concurrency if self.revision else 1

    def _live_count(self) -> int:
        return sum(1 for i in self._instances.values() if not i.draining)

    def _pick(self) -> Instance | None:
        target = self._target()
        best: Instance | None = None
        for instance in self._instances.values():
            if instance.draining or instance.in_flight >= target:
                continue
            if best is None or instance.in_flight < best.in_flight:
                best = instance
        return best

    def queue_call(
        self, on_lease: Callable[[Lease], None], on_error: Callable[[FuncmeshError], None]
    ) -> QueuedCall | None:
        """Wait in the queue without a task when every instance is busy and no more may
        start: ``on_lease`` gets the next instance with room, ``on_error`` the failure
        (QueueFull after queue_wait_s, Unavailable when the function goes). None when the
        caller must await ``acquire`` instead (no revision yet, an instance may start, or one
        has room); raises QueueFull when the queue is full."""
        if self.revision is None or self._live_count() < self._max_scale():
            return None
        if not self._waiters and self._pick() is not None:
            return None
        self._check_queue_room()
        deadline = time.monotonic() + self._context.queue_wait_s
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        queued = QueuedCall(self, on_lease, on_error, deadline=deadline, loop=loop)
        self._waiters.append(queued)
        return queued

    async def _queue(self) -> Instance:
        self._check_queue_room()
        waiter = _Waiter(loop=asyncio.get_running_loop())
        waiter.deadline = time.monotonic() + self._context.queue_wait_s
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give_back(waiter.result())  # handed an instance as the caller left
            raise

    def _check_queue_room(self) -> None:
        if len(self._waiters) >= self._context.max_queue:
            raise QueueFull(
                f"function {self.display_name} is at its limit of "
                f"{_count(self._max_scale(), 'instance')} and "
                f"{_count(len(self._waiters), 'call')} already waiting; try again later or "
                "raise autoscaling.funcmesh.io/max-scale"
            )

    def expire_waiters(self, now: float) -> None:
        """Fail the calls that waited ``queue_wait_s`` for an instance (run by the sweep:
        no timer per queued call on the hot path)."""
        while self._waiters and (self._waiters[0].done() or self._waiters[0].deadline <= now):
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    QueueFull(
                        f"function {self.display_name}: no instance became free within "
                        f"{self._context.queue_wait_s:.0f}s"
                    )
                )

    def give_back(self, instance: Instance) -> None:
        """An instance reserved for a caller that left before using it."""
        instance.in_flight -= 1
        self._serve_waiters()

    def release(self, instance: Instance, *, ok: bool, duration_s: float) -> None:
        instance.in_flight -= 1
        instance.last_active = time.monotonic()
        self.stats.record_call(ok=ok, duration_s=duration_s)
        if instance.draining:
            if instance.in_flight == 0:
                self._lifecycle.stop(instance, "replaced by a new revision")
            self._serve_waiters()
        elif self._waiters:
            self._serve_waiters()

    def _serve_waiters(self) -> None:
        while self._waiters:
            if self._waiters[0].done():
                self._waiters.popleft()
                continue
            instance = self._pick()
            if instance is None:
                if self.revision is not None and self._live_count() < self._max_scale():
                    self._spawn_for_waiters(self.revision)
                return
            instance.in_flight += 1
            self._waiters.popleft().set_result(instance)

    def _spawn_for_waiters(self, revision: Revision) -> None:
        async def start() -> None:
            try:
                await self._lifecycle.start(revision)
            except FuncmeshError as exc:
                waiter = self._waiters.popleft() if self._waiters else None
                if waiter is not None and not waiter.done():
                    waiter.set_exception(exc)
                return
            self._serve_waiters()

        self._lifecycle.guard(start())

    def kill(self, instance: Instance, reason: str) -> None:
        """Stop an instance at once (after a timeout); its calls fail, new ones go elsewhere."""
        self._lifecycle.kill(instance, reason)

    def autoscale(self, now: float) -> None:
        """Sample the load of a cpu or qps rule and recommend counts for ``reap_idle`` (run by
        the sweep before it); a concurrency rule needs no samples."""
        revision = self.revision
        if revision is None or self._closed or revision.scaling.metric == "concurrency":
            self._autoscaler = self._recommended = None
            return
        live = [i for i in self._instances.values() if not i.draining]
        sample = Sample(
            at=now,
            instances=len(live),
            cpu_seconds=_cpu_seconds(live) if revision.scaling.metric == "cpu" else {},
            calls=self.stats.calls,
        )
        self._autoscaler = self._autoscaler or Autoscaler()
        self._recommended = self._autoscaler.observe(sample, revision.scaling)

    def reap_idle(self, now: float) -> None:
        """Stop idle instances beyond what the rule keeps; start instances up to what it wants.

        Kept: min-scale, or for cpu/qps the highest count recommended within
        scale-to-zero-after. Wanted: min-scale, or for cpu/qps the count recommended now.
        """
        revision = self.revision
        if revision is None or self._closed:
            return
        scaling = revision.scaling
        recommended = self._recommended
        keep = max(scaling.min_scale, recommended.keep if recommended else 0)
        wanted = max(scaling.min_scale, recommended.desired if recommended else 0)
        live = [i for i in self._instances.values() if not i.draining]
        # Only loaded instances count as idle: one still importing its handler is not.
        idle = sorted(
            (
                i
                for i in live
                if i.in_flight == 0
                and (i.ready or i.load_error is not None)
                and now - i.last_active > scaling.scale_to_zero_after_s
            ),
            key=lambda i: i.last_active,
        )
        for instance in idle[: max(0, len(live) - keep)]:
            self._lifecycle.stop(instance, "stopped after being idle")
        for _ in range(wanted - len(live)):
            self._lifecycle.guard(self._start_quietly(revision))

    async def _start_quietly(self, revision: Revision) -> None:
        try:
            await self._lifecycle.start(revision)
        except FuncmeshError as exc:
            logger.warning("could not keep %s warm: %s", self.display_name, exc)
            return
        self._serve_waiters()  # calls queued meanwhile can have it at once

    def summary(self) -> Mapping[str, object]:
        """Call statistics, and for a cpu or qps rule what the autoscaler last measured."""
        summary = self.stats.summary(instances=len(self._instances))
        if self._recommended is not None:
            summary["autoscaling"] = self._recommended.summary()
        return summary

    async def close(self) -> None:
        """Stop every instance (SIGTERM, then SIGKILL after the grace) and fail the waiters."""
        self._closed = True
        self.fail("the function was removed")
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Unavailable(f"function {self.display_name} was removed"))
        self._waiters.clear()
        instances = list(self._instances.values())
        for instance in instances:
            self._lifecycle.stop(instance, "stopped")
        await asyncio.gather(*(i.exited.wait() for i in instances if i.process))
        await self._lifecycle.cancel_tasks()


class _Waiter(asyncio.Future[Instance]):
    """A queued call: the future the caller awaits, and when it gives up."""

    deadline: float


def _cpu_seconds(instances: list[Instance]) -> dict[str, float]:
    """CPU seconds used so far by each running instance, by pod name."""
    used = {}
    for instance in instances:
        if instance.process is not None and not instance.exited.is_set():
            seconds = read_cpu_seconds(instance.process.pid)
            if seconds is not None:
                used[instance.pod] = seconds
    return used


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
