"""Kubernetes ``Status`` answers to funcmesh exceptions: the client's one error table.

An error answer of the API carries a ``Status`` body (``message``, ``reason``, ``code``,
``details.causes``); this module turns it, or any other non-2xx answer, into the matching
FuncmeshError with the server's message. It must not do I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from funcmesh.errors import (
    AlreadyExists,
    Cause,
    Conflict,
    FuncmeshError,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
)

MAX_BODY_EXCERPT_CHARS = 300


class ResourceExpired(FuncmeshError):
    """A watch asked for a resourceVersion the server no longer remembers (410 Gone)."""


_BY_REASON: dict[str, type[FuncmeshError]] = {
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "Invalid": Invalid,
    "BadRequest": Invalid,
    "Unauthorized": Unauthorized,
    "Forbidden": Unauthorized,
    "Gone": ResourceExpired,
    "Expired": ResourceExpired,
    "ServiceUnavailable": Unavailable,
    "Timeout": Unavailable,
    "TooManyRequests": Unavailable,
}
_BY_CODE: dict[int, type[FuncmeshError]] = {
    400: Invalid,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    410: ResourceExpired,
    422: Invalid,
    429: Unavailable,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}
_UNAUTHORIZED_HINT = (
    "the API did not accept the kubeconfig's token; use the kubeconfig funcmesh up wrote"
)


def error_from_response(code: int, body: bytes, *, reason_phrase: str = "") -> FuncmeshError:
    """The exception for a non-2xx answer with ``body``."""
    status = _parse_status(body)
    if status is None:
        return _error_class(code, "")(_plain_message(code, body, reason_phrase))
    return error_from_status(status, code=code)


def error_from_status(status: Mapping[str, Any], *, code: int | None = None) -> FuncmeshError:
    """The exception for a ``Status`` object (an error answer or a watch ``ERROR`` event)."""
    code = int(status.get("code") or code or 500)
    reason = str(status.get("reason") or "")
    message = str(status.get("message") or reason or f"the funcmesh API answered {code}")
    cls = _error_class(code, reason)
    if cls is Invalid:
        return Invalid(message, _causes(status))
    if cls is Unauthorized:
        return Unauthorized(f"{message}: {_UNAUTHORIZED_HINT}")
    return cls(message)


def _error_class(code: int, reason: str) -> type[FuncmeshError]:
    return _BY_REASON.get(reason) or _BY_CODE.get(code) or FuncmeshError


def _parse_status(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(value, dict) and (value.get("kind") == "Status" or "message" in value):
        return value
    return None


def _causes(status: Mapping[str, Any]) -> list[Cause]:
    details = status.get("details")
    raw_causes = details.get("causes") if isinstance(details, dict) else None
    causes = []
    for raw in raw_causes if isinstance(raw_causes, list) else []:
        if isinstance(raw, dict):
            causes.append(
                Cause(
                    field=str(raw.get("field") or ""),
                    message=str(raw.get("message") or ""),
                    reason=str(raw.get("reason") or "FieldValueInvalid"),
                )
            )
    return causes


def _plain_message(code: int, body: bytes, reason_phrase: str) -> str:
    message = f"the funcmesh API answered {code} {reason_phrase}".rstrip()
    excerpt = body.decode("utf-8", "replace").strip()
    if code == 401:
        return f"{message}: {_UNAUTHORIZED_HINT}"
    if excerpt:
        first_line = excerpt.splitlines()[0][:MAX_BODY_EXCERPT_CHARS]
        return f"{message}: {first_line}"
    return message
