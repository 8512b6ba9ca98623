"""What functions print, kept per function, per instance and per build, bounded in size.

Each instance's stdout and stderr arrive on one pipe; lines get a timestamp and the instance
name. Every ring keeps at most a byte budget, dropping the oldest lines first; followers
(``function logs -f``) get new lines through their own bounded queues. Nothing here is written
to disk, and bodies of requests never pass through here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

from funcmesh.errors import NotFound
from funcmesh.runtime.fanout import Fanout

MAX_LINE_BYTES = 16 * 1024


def _stamp() -> str:
    now = datetime.fromtimestamp(time.time(), UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class LogRing:
    """Lines in arrival order within a byte budget, plus live followers."""

    def __init__(self, budget_bytes: int) -> None:
        self._budget = budget_bytes
        self._size = 0
        self._lines: deque[str] = deque()
        self._live: Fanout[str] = Fanout()

    def append(self, line: str) -> None:
        self._lines.append(line)
        self._size += len(line)
        while self._size > self._budget and len(self._lines) > 1:
            self._size -= len(self._lines.popleft())
        self._live.publish(line)

    def tail(self, count: int | None) -> list[str]:
        lines = list(self._lines)
        return lines if count is None else lines[-count:] if count > 0 else []

    def follow(self) -> AsyncIterator[str]:
        """Live lines until the ring is closed (or the follower falls far behind)."""
        return self._live.follow()

    def close(self) -> None:
        self._live.close()


class LineSplitter(asyncio.Protocol):
    """Reads a worker's output pipe and hands complete, stamped lines to a sink."""

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            self._emit(raw)
        if len(self._partial) > MAX_LINE_BYTES:
            self._emit(self._partial)
            self._partial = b""

    def eof_received(self) -> bool | None:
        if self._partial:
            self._emit(self._partial)
            self._partial = b""
        return None

    def _emit(self, raw: bytes) -> None:
        self._sink(raw[:MAX_LINE_BYTES].decode("utf-8", "replace").rstrip("\r"))


class LogBook:
    """Rings per function (all its instances), per instance and per dependency build."""

    def __init__(self, *, function_budget_bytes: int = 1 << 20) -> None:
        self._budget = function_budget_bytes
        self._functions: dict[tuple[str, str], LogRing] = {}
        self._builds: dict[tuple[str, str], LogRing] = {}
        self._pods: dict[tuple[str, str], LogRing] = {}

    def _ring(self, rings: dict[tuple[str, str], LogRing], key: tuple[str, str]) -> LogRing:
        ring = rings.get(key)
        if ring is None:
            ring = rings[key] = LogRing(self._budget)
        return ring

    def instance_sink(self, namespace: str, function: str, pod: str) -> Callable[[str], None]:
        """Where the output lines of one instance go."""
        function_ring = self._ring(self._functions, (namespace, function))
        pod_ring = self._ring(self._pods, (namespace, pod))

        def sink(text: str) -> None:
            stamp = _stamp()
            function_ring.append(f"{stamp} {pod} {text}")
            pod_ring.append(f"{stamp} {text}")

        return sink

    def note(self, namespace: str, function: str, text: str) -> None:
        """A line from funcmesh itself about the function (instance exits, load errors)."""
        self._ring(self._functions, (namespace, function)).append(f"{_stamp()} [funcmesh] {text}")

    def build_line(self, namespace: str, function: str, text: str) -> None:
        self._ring(self._builds, (namespace, function)).append(f"{_stamp()} {text}")

    def forget_pod(self, namespace: str, pod: str) -> None:
        ring = self._pods.pop((namespace, pod), None)
        if ring is not None:
            ring.close()

    def forget_function(self, namespace: str, function: str) -> None:
        for rings in (self._functions, self._builds):
            ring = rings.pop((namespace, function), None)
            if ring is not None:
                ring.close()

    def close(self) -> None:
        for rings in (self._functions, self._builds, self._pods):
            for ring in rings.values():
                ring.close()

    # the API's LogSource

    def read_function_log(
        self, namespace: str, name: str, *, tail_lines: int | None, build: bool
    ) -> list[str]:
        rings = self._builds if build else self._functions
        ring = rings.get((namespace, name))
        return [] if ring is None else ring.tail(tail_lines)

    def follow_function_log(self, namespace: str, name: str, *, build: bool) -> AsyncIterator[str]:
        return self._ring(self._builds if build else self._functions, (namespace, name)).follow()

    def read_pod_log(self, namespace: str, pod: str, *, tail_lines: int | None) -> list[str]:
        ring = self._pods.get((namespace, pod))
        if ring is None:
            raise NotFound(f'pods "{pod}" not found')
        return ring.tail(tail_lines)

    def follow_pod_log(self, namespace: str, pod: str) -> AsyncIterator[str]:
        ring = self._pods.get((namespace, pod))
        if ring is None:
            raise NotFound(f'pods "{pod}" not found')
        return ring.follow()
