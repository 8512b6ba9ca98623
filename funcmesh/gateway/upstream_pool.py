"""The gateway's connections to function instances: opened on demand, idle ones kept per instance.

``connect`` opens an ``UpstreamConnection`` (``funcmesh.gateway.upstream``) and reports a failure
as ``UpstreamTimeout`` or ``UpstreamBroken``; ``take_idle`` and ``put_idle`` reuse keep-alive
connections, most recently used first, and ``close_idle_since`` ages them out.

Must not: speak HTTP (the connection does) or know about functions and leases (``proxy``).
"""

from __future__ import annotations

import asyncio

from funcmesh.gateway.upstream import UpstreamBroken, UpstreamConnection, UpstreamTimeout

# Idle connections kept per instance. An instance never has more connections than calls it
# served at once, so this only bounds a burst; the surplus ages out (least recently used).
MAX_IDLE_PER_INSTANCE = 1024


class UpstreamPool:
    """Idle keep-alive connections per instance, most recently used first."""

    def __init__(self, *, max_idle_per_instance: int = MAX_IDLE_PER_INSTANCE) -> None:
        self._max_idle_per_instance = max_idle_per_instance
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._open: set[UpstreamConnection] = set()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def take_idle(self, instance_id: str) -> UpstreamConnection | None:
        idle = self._idle.get(instance_id)
        while idle:
            connection = idle.pop()
            if connection.is_open:
                connection.reused = True
                return connection
        return None

    async def connect(
        self, instance_id: str, address: tuple[str, int], *, timeout_s: float
    ) -> UpstreamConnection:
        """A new connection; raises UpstreamTimeout or UpstreamBroken."""
        loop = asyncio.get_running_loop()
        host, port = address
        opening = loop.create_connection(
            lambda: UpstreamConnection(instance_id, on_lost=self._forget), host, port
        )
        try:  # not ``async with``: compiled by mypyc, it lets the exceptions past these clauses
            _, connection = await asyncio.wait_for(opening, timeout_s)
        except TimeoutError as late:  # one name per type: mypyc types a name once per function
            raise UpstreamTimeout(f"connecting took longer than {timeout_s:g}s") from late
        except OSError as exc:
            reason = _describe_connect_error(exc)
            raise UpstreamBroken(reason, response_started=False, retryable=False) from exc
        self._open.add(connection)
        return connection

    def put_idle(self, connection: UpstreamConnection, *, now_s: float) -> None:
        if not connection.is_open:
            return
        idle = self._idle.get(connection.instance_id)
        if idle is None:  # not setdefault: that makes a list per call
            idle = self._idle[connection.instance_id] = []
        if len(idle) >= self._max_idle_per_instance:
            connection.close()
            return
        connection.idle_since_s = now_s
        idle.append(connection)

    def close_idle_since(self, before_s: float) -> None:
        """Close connections idle since before ``before_s`` (the instance may have gone)."""
        for idle in list(self._idle.values()):
            for connection in [c for c in idle if c.idle_since_s < before_s]:
                connection.close()

    def close(self) -> None:
        for connection in list(self._open):
            connection.abort()
        self._idle.clear()

    def _forget(self, connection: UpstreamConnection) -> None:
        self._open.discard(connection)
        idle = self._idle.get(connection.instance_id)
        if idle is None:
            return
        if connection in idle:
            idle.remove(connection)
        if not idle:
            del self._idle[connection.instance_id]


def _describe_connect_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on the instance's address)"
    return exc.strerror or str(exc)
