"""Errors at the API edge and the one table that turns them into Kubernetes ``Status`` bodies.

Every failed request, whatever raised, is answered with a ``Status`` object whose ``code`` and
``reason`` come from ``STATUS_TABLE``. Unexpected exceptions become 500 InternalError with a
message that reveals no internals; the caller logs them. This module must not import aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from funcmesh.errors import (
    AlreadyExists,
    Conflict,
    FuncmeshError,
    Invalid,
    NotFound,
    QueueFull,
    Unauthorized,
    Unavailable,
)
from funcmesh.model.kinds import ResourceType
from funcmesh.store.sqlite import Gone


class BadRequest(FuncmeshError):
    """The request itself is malformed (body, query parameter, name mismatch)."""


class Forbidden(FuncmeshError):
    """The request is understood and authenticated but not allowed."""


class MethodNotAllowed(FuncmeshError):
    """The resource does not support this verb (for example writing a Pod)."""


class RequestTooLarge(FuncmeshError):
    """The request body exceeds the limit."""


class UnsupportedMediaType(FuncmeshError):
    """The request body has a content type the server does not read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusCode:
    """The HTTP code and Kubernetes reason for one kind of failure."""

    code: int
    reason: str


# Checked in order; the first class the error is an instance of wins.
STATUS_TABLE: tuple[tuple[type[Exception], StatusCode], ...] = (
    (Invalid, StatusCode(code=422, reason="Invalid")),
    (NotFound, StatusCode(code=404, reason="NotFound")),
    (AlreadyExists, StatusCode(code=409, reason="AlreadyExists")),
    (Conflict, StatusCode(code=409, reason="Conflict")),
    (Unauthorized, StatusCode(code=401, reason="Unauthorized")),
    (Forbidden, StatusCode(code=403, reason="Forbidden")),
    (Gone, StatusCode(code=410, reason="Expired")),
    (BadRequest, StatusCode(code=400, reason="BadRequest")),
    (MethodNotAllowed, StatusCode(code=405, reason="MethodNotAllowed")),
    (RequestTooLarge, StatusCode(code=413, reason="RequestEntityTooLarge")),
    (UnsupportedMediaType, StatusCode(code=415, reason="UnsupportedMediaType")),
    (QueueFull, StatusCode(code=429, reason="TooManyRequests")),
    (Unavailable, StatusCode(code=503, reason="ServiceUnavailable")),
)
INTERNAL_ERROR = StatusCode(code=500, reason="InternalError")
INTERNAL_ERROR_MESSAGE = "an internal error occurred; the funcmesh daemon log has the details"

# Reasons for codes that come from the HTTP layer rather than from our exceptions.
_REASONS_BY_CODE = {entry.code: entry.reason for _, entry in reversed(STATUS_TABLE)}


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusDetails:
    """Which object a failure is about (``details`` of the Status)."""

    name: str = ""
    group: str = ""
    kind: str = ""


def details_for(rt: ResourceType, name: str | None, exc: BaseException) -> StatusDetails:
    """Details as Kubernetes fills them: the Kind for Invalid, the resource for the others."""
    kind = rt.kind if isinstance(exc, Invalid) else rt.plural
    return StatusDetails(name=name or "", group=rt.group, kind=kind)


def status_code_for(exc: BaseException) -> StatusCode | None:
    """The table entry for ``exc``, or None when it is unexpected (an internal error)."""
    for error_type, entry in STATUS_TABLE:
        if isinstance(exc, error_type):
            return entry
    return None


def status_for_error(exc: BaseException, details: StatusDetails | None = None) -> dict[str, Any]:
    """The Status body for an exception; unexpected ones get a message without internals."""
    entry = status_code_for(exc)
    if entry is None:
        return failure_status(
            code=INTERNAL_ERROR.code, reason=INTERNAL_ERROR.reason, message=INTERNAL_ERROR_MESSAGE
        )
    causes = exc.causes if isinstance(exc, Invalid) else ()
    body = failure_status(code=entry.code, reason=entry.reason, message=str(exc), details=details)
    if causes:
        body.setdefault("details", {})["causes"] = [
            {"field": c.field, "message": c.message, "reason": c.reason} for c in causes
        ]
    return body


def failure_status(
    *, code: int, message: str, reason: str | None = None, details: StatusDetails | None = None
) -> dict[str, Any]:
    """A ``Status`` with ``status: Failure``; the reason defaults from the HTTP code."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or reason_for_code(code),
        "code": code,
    }
    if details is not None:
        body["details"] = _details_body(details)
    return body


def success_status(*, details: StatusDetails | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 200,
    }
    if details is not None:
        body["details"] = _details_body(details)
    return body


def reason_for_code(code: int) -> str:
    if code >= 500:
        return _REASONS_BY_CODE.get(code, INTERNAL_ERROR.reason)
    return _REASONS_BY_CODE.get(code, "BadRequest")


def _details_body(details: StatusDetails) -> dict[str, Any]:
    fields = {"name": details.name, "group": details.group, "kind": details.kind}
    return {key: value for key, value in fields.items() if value}
