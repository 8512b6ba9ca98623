"""The one exception tree of funcmesh.

Every error that crosses a module boundary is a FuncmeshError; foreign exceptions are translated
where they enter (``raise ... from exc``). Each outward edge (API, gateway, CLI) maps these classes
to its own answer in one table. This module must not import anything from the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FuncmeshError(Exception):
    """Root of every funcmesh error; the message is meant for a human."""


class NotFound(FuncmeshError):
    """The named object does not exist."""


class AlreadyExists(FuncmeshError):
    """An object with that name exists already."""


class Conflict(FuncmeshError):
    """A compare-and-set failed: the object changed since it was read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Cause:
    """One reason an object is invalid, in Kubernetes StatusCause terms."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"


class Invalid(FuncmeshError):
    """Input that cannot be accepted; ``causes`` names each bad field."""

    def __init__(self, message: str, causes: Sequence[Cause] = ()) -> None:
        super().__init__(message)
        self.causes: tuple[Cause, ...] = tuple(causes)


class Unauthorized(FuncmeshError):
    """The request carries no valid credentials."""


class Unavailable(FuncmeshError):
    """A part needed to serve the request is not running or not ready."""


class QueueFull(FuncmeshError):
    """Every instance is busy, none more may start and the wait queue is full."""
