"""Watch streams: newline-delimited ``{"type": ..., "object": ...}`` events over chunked HTTP.

Without a resourceVersion the stream starts with an ADDED event per current object (list and
watch in one), then live changes; with one it resumes after it, or ends with an ERROR event
carrying a 410 Expired Status when that version is too old. Streams end at ``timeoutSeconds``,
when the client goes away or when the server stops, always with a proper end of the chunked body.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from aiohttp import web

from funcmesh.api.options import ListOptions
from funcmesh.api.paths import ResourcePath
from funcmesh.api.sources import ObjectSource, WatchEvent
from funcmesh.api.status import details_for, status_for_error
from funcmesh.api.streams import close_iterator, until_stopped
from funcmesh.api.tables import table
from funcmesh.api.wire import JSON_CONTENT_TYPE, dumps
from funcmesh.errors import FuncmeshError
from funcmesh.model.objects import RawObject, name_of

logger = logging.getLogger(__name__)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


async def serve_watch(
    request: web.Request,
    *,
    source: ObjectSource,
    path: ResourcePath,
    options: ListOptions,
    table_version: str | None,
    stop: asyncio.Event,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": JSON_CONTENT_TYPE})
    response.enable_chunked_encoding()
    await response.prepare(request)
    encoder = _EventEncoder(path=path, options=options, table_version=table_version)
    events = until_stopped(
        watch_events(source, path, options), stop=stop, timeout_s=options.timeout_s
    )
    try:
        async with contextlib.aclosing(events):
            async for event_type, obj in events:
                if encoder.wants(event_type, obj):
                    await response.write(encoder.encode(event_type, obj))
    except ConnectionResetError:
        return response  # the client went away
    except FuncmeshError as exc:
        await response.write(_error_event(exc, path))
    except Exception as exc:  # the stream has started: report in-band, then end it
        logger.exception("watch of %s failed", request.path)
        await response.write(_error_event(exc, path))
    await response.write_eof()
    return response


async def watch_events(
    source: ObjectSource, path: ResourcePath, options: ListOptions
) -> AsyncGenerator[WatchEvent, None]:
    """The initial state (unless resuming from a resourceVersion), then the changes."""
    namespace = path.namespace if path.rt.namespaced else None
    since = options.resource_version
    if since is None:
        objects, list_rv = await source.list_objects(path.rt, namespace)
        for obj in objects:
            yield "ADDED", obj
        if options.send_initial_events:
            yield "BOOKMARK", _bookmark(path, list_rv)
        since = int(list_rv)
    changes = source.watch(path.rt, namespace, since)
    try:
        async for event in changes:
            yield event
    finally:
        await close_iterator(changes)


def _bookmark(path: ResourcePath, resource_version: str) -> RawObject:
    return {
        "apiVersion": path.api_version,
        "kind": path.rt.kind,
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {INITIAL_EVENTS_END: "true"},
        },
    }


def _error_event(exc: BaseException, path: ResourcePath) -> bytes:
    details = details_for(path.rt, path.name, exc)
    return (dumps({"type": "ERROR", "object": status_for_error(exc, details)}) + "\n").encode()


class _EventEncoder:
    """Filters events by name and selectors and renders them as objects or Tables."""

    def __init__(
        self, *, path: ResourcePath, options: ListOptions, table_version: str | None
    ) -> None:
        self._path = path
        self._options = options
        self._table_version = table_version
        self._columns_sent = False

    def wants(self, event_type: str, obj: RawObject) -> bool:
        if event_type == "BOOKMARK":
            return True
        if self._path.name is not None and name_of(obj) != self._path.name:
            return False
        return self._options.matches(obj)

    def encode(self, event_type: str, obj: RawObject) -> bytes:
        body: Any = obj
        if event_type != "BOOKMARK" and obj.get("apiVersion") not in (None, self._path.api_version):
            body = {**obj, "apiVersion": self._path.api_version}  # a kind with several versions
        if self._table_version is not None and event_type != "BOOKMARK":
            body = table(
                self._path.rt,
                [obj],
                now_s=time.time(),
                include_object=self._options.include_object,
                with_columns=not self._columns_sent,
                table_version=self._table_version,
            )
            self._columns_sent = True
        return (dumps({"type": event_type, "object": body}) + "\n").encode()
