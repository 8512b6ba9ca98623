"""The daemon's records of a zygote's spawns, from the request until the worker's exit.

A :class:`~funcmesh.runtime.zygote.Zygote` opens a :class:`Spawn` for each pod it asks the
zygote to fork and feeds it what the zygote reports (forked, ready or failed, exited). A
spawn's futures are the ones its :class:`~funcmesh.runtime.workers.WorkerProcess` follows; when
the zygote goes away, every open spawn fails with :class:`~funcmesh.errors.Unavailable`.

Must not: talk to the zygote, signal processes, log, or block.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Unavailable
from funcmesh.runtime.workers import WorkerLoadError, retrieve_exception


@dataclass(slots=True, eq=False)
class Spawn:
    """The daemon's record of one spawn, from request until the worker's exit is reported."""

    spawned: asyncio.Future[int]
    ready: asyncio.Future[None]
    exited: asyncio.Future[int]
    pid: int | None = None
    abandoned: bool = False  # spawn() gave up waiting: kill the worker as soon as it exists

    @classmethod
    def create(cls, loop: asyncio.AbstractEventLoop) -> Spawn:
        spawn = cls(
            spawned=loop.create_future(), ready=loop.create_future(), exited=loop.create_future()
        )
        for future in spawn.futures():
            future.add_done_callback(retrieve_exception)
        return spawn

    def futures(self) -> tuple[asyncio.Future[Any], ...]:
        return (self.spawned, self.ready, self.exited)

    def fail(self, message: str) -> None:
        """Fail whatever is still pending with ``Unavailable(message)``."""
        for future in self.futures():
            if not future.done():
                future.set_exception(Unavailable(message))


class Spawns:
    """The open spawns of one zygote, by pod name."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._by_pod: dict[str, Spawn] = {}

    def __contains__(self, pod: str) -> bool:
        return pod in self._by_pod

    def open(self, pod: str) -> Spawn:
        spawn = self._by_pod[pod] = Spawn.create(self._loop)
        return spawn

    def discard(self, pod: str) -> None:
        self._by_pod.pop(pod, None)

    def running(self) -> dict[int, asyncio.Future[int]]:
        """The exit futures of the forked workers that have not exited, by pid."""
        return {
            spawn.pid: spawn.exited
            for spawn in self._by_pod.values()
            if spawn.pid is not None and not spawn.exited.done()
        }

    def forked(self, pod: str, pid: int) -> Spawn | None:
        """Note ``pod``'s worker pid; None when nobody waits for it (kill it, then)."""
        spawn = self._by_pod.get(pod)
        if spawn is None:
            return None
        spawn.pid = pid
        if not spawn.spawned.done():
            spawn.spawned.set_result(pid)
        return spawn

    def settle(self, pod: str, error: WorkerLoadError | None) -> None:
        """``pod``'s function loaded (``error`` None) or did not."""
        spawn = self._by_pod.get(pod)
        if spawn is None or spawn.ready.done():
            return
        if error is None:
            spawn.ready.set_result(None)
        else:
            spawn.ready.set_exception(error)

    def exited(self, pod: str, returncode: int) -> None:
        """``pod``'s worker exited: its record is closed."""
        spawn = self._by_pod.pop(pod, None)
        if spawn is None:
            return
        if not spawn.ready.done():
            spawn.ready.set_exception(
                WorkerLoadError(f"the worker exited with status {returncode} before it was ready")
            )
        if not spawn.exited.done():
            spawn.exited.set_result(returncode)

    def fail(self, pod: str, message: str) -> None:
        """The zygote could not start ``pod``: its record fails and is closed."""
        spawn = self._by_pod.pop(pod, None)
        if spawn is not None:
            spawn.fail(message)

    def fail_all(self, message: str) -> None:
        """The zygote is gone: every open record fails and is closed."""
        for spawn in self._by_pod.values():
            spawn.fail(message)
        self._by_pod.clear()
