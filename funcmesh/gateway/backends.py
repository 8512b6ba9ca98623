"""The seam between the gateway and the instance pools: what one function call needs.

The runtime's instance pool satisfies these Protocols structurally, so the runtime never imports
the gateway and this module imports nothing from the runtime. ``Backend.try_acquire`` is the
call's fast path; when it gives nothing, ``Backend.queue_call`` waits in the function's queue
with callbacks (no task), or ``Backend.acquire`` waits, or raises
``funcmesh.errors.QueueFull`` (the gateway answers 429) or ``funcmesh.errors.Unavailable`` (503);
any other ``FuncmeshError`` is answered 503 with its message. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from funcmesh.errors import FuncmeshError


class Lease(Protocol):
    """One instance, reserved for one call; released exactly once."""

    @property
    def address(self) -> tuple[str, int]:
        """Pod IP and port of the instance serving this call."""
        ...

    @property
    def instance_id(self) -> str:
        """Pod name: the key of the connection pool, and the name in error messages."""
        ...

    @property
    def timeout_s(self) -> float:
        """The function's timeout: how long the instance may take to answer."""
        ...

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        """Give the instance back; ``ok`` is False for any failure or 5xx answer."""
        ...

    def kill(self, reason: str) -> None:
        """The instance did not answer in time: replace it."""
        ...

    async def exit_reason(self, wait_s: float) -> str | None:
        """Why the instance died (``"killed by signal 9"``), or None if it is still alive.

        Asked after the connection to the instance broke; waits up to ``wait_s`` for the
        process to be reaped.
        """
        ...


class Backend(Protocol):
    """The instances of one function (or, for the mesh, one endpoint of a Service); hashable,
    by identity, so the mesh can keep statistics per backend."""

    def __hash__(self) -> int: ...

    @property
    def display_name(self) -> str:
        """``namespace/name``, as users see it in error messages."""
        ...

    @property
    def namespace(self) -> str:
        """The namespace of the workload: where the mesh's policies for it are."""
        ...

    @property
    def labels(self) -> Mapping[str, str]:
        """The labels of the workload's pods ({} while unknown): what the selectors of
        AuthorizationPolicies match. Read only while a policy may apply."""
        ...

    def try_acquire(self) -> Lease | None:
        """Reserve an instance that has room now, or None: then the caller awaits ``acquire``,
        which starts an instance, queues, or raises. Never waits and never raises; it is the
        call's fast path, so it must be cheap (no task, no future)."""
        ...

    async def acquire(self) -> Lease:
        """Reserve an instance, starting one if needed; raises QueueFull or Unavailable."""
        ...

    def queue_call(
        self, on_lease: Callable[[Lease], None], on_error: Callable[[FuncmeshError], None]
    ) -> QueuedCall | None:
        """Wait for an instance without a task when ``try_acquire`` gave none because every
        instance is busy and no more may start: ``on_lease`` gets the lease, ``on_error`` a
        QueueFull or Unavailable, later, from the loop. None: the caller awaits ``acquire``
        instead (an instance may start, or there is nothing to queue for). Raises QueueFull
        when the queue is full."""
        ...


class QueuedCall(Protocol):
    """A call waiting for an instance; ``cancel`` when the caller leaves."""

    def cancel(self) -> None: ...


class Backends(Protocol):
    """Every function the gateway can call."""

    def lookup(self, namespace: str, name: str) -> Backend | None:
        """The function's backend, or None when no such function exists."""
        ...

    def select(self, namespace: str, selector: Mapping[str, str]) -> Sequence[Backend]:
        """The functions of ``namespace`` whose instances' labels hold ``selector``: what a
        Service with that selector (and a mesh subset's labels) sends calls to."""
        ...

    @property
    def generation(self) -> int:
        """Changes whenever ``select`` may answer differently (a function deployed or gone)."""
        ...
