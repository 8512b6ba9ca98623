"""What a client connection is given by the server that accepted it: limits and an owner.

``ConnectionLimits`` says how much a client may send and how slowly; ``ConnectionOwner`` is the
server side that a ``ClientConnection`` (``funcmesh.gateway.downstream``) hands its requests to
and reports its opening and closing to. Kept apart so that the server and the connection meet
at a small contract rather than at each other's internals.

Must not: parse HTTP, hold connections, or do I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from funcmesh.gateway.downstream import ClientConnection
    from funcmesh.gateway.messages import Request


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """What one client may send, and how slowly."""

    max_body_bytes: int = 10 << 20
    max_head_bytes: int = 64 << 10
    header_timeout_s: float = 30.0
    idle_timeout_s: float = 75.0


class ConnectionOwner(Protocol):
    """The server side of a connection: limits, the answers, and the registry of connections."""

    @property
    def limits(self) -> ConnectionLimits: ...

    @property
    def draining(self) -> bool: ...

    def answer(self, request: Request, connection: ClientConnection) -> bool:
        """Answer through ``connection``: True when answered at once; False when a call was
        started, which ends with ``connection.end_call()`` (maybe before this returns)."""
        ...

    def connection_opened(self, connection: ClientConnection) -> None: ...

    def connection_closed(self, connection: ClientConnection) -> None: ...
