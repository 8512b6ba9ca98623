"""aiohttp plumbing shared by the handlers: JSON and Status responses, bounded body reading.

``error_response`` is the single place where an exception becomes an HTTP answer (through the
table in ``status``); unexpected exceptions are logged there with their traceback, and the
client gets a message without internals. Request bodies are never logged.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from funcmesh.api.status import (
    RequestTooLarge,
    StatusDetails,
    failure_status,
    status_code_for,
    status_for_error,
)

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_response(
    body: Any, *, status: int = 200, content_type: str = JSON_CONTENT_TYPE
) -> web.Response:
    return web.Response(
        status=status, body=dumps(body).encode(), headers={"Content-Type": content_type}
    )


def error_response(
    exc: BaseException, request: web.BaseRequest, details: StatusDetails | None = None
) -> web.Response:
    """The Status answer for ``exc``; logs it when it is not one of the expected failures."""
    if status_code_for(exc) is None:
        logger.error(
            "%s %s failed",
            request.method,
            request.path,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
    body = status_for_error(exc, details)
    return json_response(body, status=body["code"])


def http_error_response(exc: web.HTTPException, request: web.BaseRequest) -> web.Response:
    """A Status for an error raised by aiohttp itself (unknown route, bad method, ...)."""
    if exc.status == 404:
        message = f'the server could not find the requested resource (path "{request.path}")'
    elif exc.status == 405:
        message = f"{request.method} is not supported on {request.path}"
    else:
        message = exc.reason
    body = failure_status(code=exc.status, message=message)
    return json_response(body, status=exc.status)


async def read_body(request: web.BaseRequest, *, max_bytes: int) -> bytes:
    """The whole request body, or RequestTooLarge as soon as it exceeds ``max_bytes``."""
    too_large = RequestTooLarge(f"the request body is larger than the limit of {max_bytes} bytes")
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
