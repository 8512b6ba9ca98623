"""Endpoints served from the providers rather than the store: function and pod logs (plain text,
streamed with ``follow``), function call statistics, the server configuration, and the deletion
of pods (which stops them).

``GET .../functions/{name}/log?follow=true&tailLines=N&container=build`` gives a function's
output (or, with ``container=build``, its dependency build log); ``GET .../pods/{name}/log`` one
pod's (a function instance's or a Deployment replica's, all its restarts), which is what
``kubectl logs`` reads. ``DELETE .../pods/{name}`` stops the pod through the PodSource.
``.../deployments/{name}/scale`` is the ``autoscaling/v1`` Scale of a Deployment (GET, PUT,
PATCH), which ``kubectl scale`` uses; a change goes through admission like any update.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import re
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from funcmesh.api.negotiation import decode_json, decode_object
from funcmesh.api.patch import apply_patch
from funcmesh.api.paths import ResourcePath, unknown_path
from funcmesh.api.providers import ApiProviders
from funcmesh.api.status import MethodNotAllowed
from funcmesh.api.streams import StartedIterator, tail_lines, until_stopped
from funcmesh.api.wire import json_response, read_body
from funcmesh.errors import Cause, Invalid
from funcmesh.model.kinds import DEPLOYMENT, FUNCTION, POD, ResourceType
from funcmesh.model.objects import RawObject, metadata_of
from funcmesh.store.calls import CallRecord, CallStore
from funcmesh.store.sqlite import Store

TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"
MAX_SCALE_BODY_BYTES = 64 * 1024
# The time the log book puts before each line; shown with ?timestamps=true, as Kubernetes does.
_LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z ")
_TRUE = frozenset({"true", "1"})


class Extensions:
    """Handlers for the ``log`` and ``stats`` subresources and ``/funcmesh/v1/server-config``."""

    def __init__(self, *, store: Store, providers: ApiProviders, stop: asyncio.Event) -> None:
        self._store = store
        self._providers = providers
        self._stop = stop

    async def serve_subresource(
        self, request: web.Request, path: ResourcePath
    ) -> web.StreamResponse:
        """Dispatch ``functions/log``, ``functions/stats`` and ``pods/log``; NotFound otherwise."""
        handlers = {
            (FUNCTION.key, "log"): self._function_log,
            (FUNCTION.key, "stats"): self._function_stats,
            (POD.key, "log"): self._pod_log,
        }
        handler = handlers.get((path.rt.key, path.subresource or ""))
        if path.rt.key == DEPLOYMENT.key and path.subresource == "scale" and path.name:
            return await self._deployment_scale(request, path.scope_namespace, path.name)
        if handler is None or path.name is None or path.namespace is None:
            raise unknown_path(request.path)
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{path.rt.plural}/{path.subresource} only supports GET")
        return await handler(request, path.namespace, path.name)

    async def delete_derived(self, rt: ResourceType, namespace: str, name: str) -> RawObject:
        """DELETE of an object that is not stored: a pod, stopped by its PodSource."""
        if rt.key != POD.key:
            raise MethodNotAllowed(f"{rt.plural} cannot be deleted")
        deleted = await self._providers.pods.delete_pod(namespace, name)
        return {**deleted, "apiVersion": POD.api_version, "kind": POD.kind}

    async def server_config(self, request: web.Request) -> web.Response:
        return json_response(dict(self._providers.config.server_config()))

    async def async_call(self, request: web.Request) -> web.Response:
        """``GET /funcmesh/v1/calls/{id}``: an async call, its phase and outcome."""
        record = await CallStore(self._store).get(request.match_info["id"])
        return json_response(_call_document(record))

    async def _deployment_scale(
        self, request: web.Request, namespace: str, name: str
    ) -> web.StreamResponse:
        current = await self._store.get(DEPLOYMENT, namespace, name)
        if request.method in ("GET", "HEAD"):
            return json_response(scale_of(current))
        if request.method not in ("PUT", "PATCH"):
            raise MethodNotAllowed(f"{request.method} is not supported on deployments/scale")
        body = await read_body(request, max_bytes=MAX_SCALE_BODY_BYTES)
        if request.method == "PUT":
            wanted = decode_object(request.content_type, body)
        else:
            patch = decode_json(body, what="the patch")
            wanted = apply_patch(request.content_type, scale_of(current), patch)
        replicas = (wanted.get("spec") or {}).get("replicas") if isinstance(wanted, dict) else None
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            cause = Cause(
                field="spec.replicas", message=f"Invalid value: {replicas!r}: must be >= 0"
            )
            raise Invalid(
                f'Scale.autoscaling "{name}" is invalid: spec.replicas: {cause.message}', [cause]
            )
        updated = copy.deepcopy(current)
        updated["spec"]["replicas"] = replicas
        version = metadata_of(wanted).get("resourceVersion") if request.method == "PUT" else None
        metadata_of(updated)["resourceVersion"] = version or None
        admitted = await asyncio.to_thread(
            self._providers.admission.admit, DEPLOYMENT, updated, current
        )
        stored = await asyncio.shield(self._store.update(DEPLOYMENT, admitted))
        return json_response(scale_of(stored))

    async def _function_stats(
        self, request: web.Request, namespace: str, name: str
    ) -> web.StreamResponse:
        await self._store.get(FUNCTION, namespace, name)
        return json_response(dict(self._providers.stats.function_stats(namespace, name)))

    async def _function_log(
        self, request: web.Request, namespace: str, name: str
    ) -> web.StreamResponse:
        await self._store.get(FUNCTION, namespace, name)
        logs = self._providers.logs
        build = request.query.get("container") == "build"
        return await self._serve_log(
            request,
            read=lambda tail: logs.read_function_log(namespace, name, tail_lines=tail, build=build),
            follow=lambda: logs.follow_function_log(namespace, name, build=build),
        )

    async def _pod_log(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        self._providers.pods.get_pod(namespace, name)
        logs = self._providers.logs
        return await self._serve_log(
            request,
            read=lambda tail: logs.read_pod_log(namespace, name, tail_lines=tail),
            follow=lambda: logs.follow_pod_log(namespace, name),
        )

    async def _serve_log(
        self,
        request: web.Request,
        *,
        read: Callable[[int | None], list[str]],
        follow: Callable[[], AsyncIterator[str]],
    ) -> web.StreamResponse:
        tail = tail_lines(request.query.get("tailLines"))
        if request.query.get("timestamps", "").lower() not in _TRUE:  # kubectl's default
            read, follow = _unstamped_read(read), _unstamped_follow(follow)
        if request.query.get("follow", "").lower() not in _TRUE:
            return web.Response(text=_text(read(tail)), content_type="text/plain")
        live = StartedIterator(follow())
        response = web.StreamResponse(headers={"Content-Type": TEXT_CONTENT_TYPE})
        response.enable_chunked_encoding()
        try:
            await asyncio.sleep(0)  # let the follower subscribe before the tail is read
            backlog = read(tail)
            await response.prepare(request)
            await response.write(_text(backlog).encode())
            lines = until_stopped(live, stop=self._stop)
            async with contextlib.aclosing(lines):
                async for line in lines:
                    await response.write(_text([line]).encode())
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            await live.aclose()
        return response


def scale_of(deployment: RawObject) -> RawObject:
    """The ``autoscaling/v1`` Scale of a Deployment."""
    meta = metadata_of(deployment)
    selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            key: meta[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in meta
        },
        "spec": {"replicas": (deployment.get("spec") or {}).get("replicas", 1)},
        "status": {
            "replicas": (deployment.get("status") or {}).get("replicas") or 0,
            "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
        },
    }


def _call_document(record: CallRecord) -> dict[str, object]:
    """An async call on the wire; the result as text when it is UTF-8, else base64."""
    document: dict[str, object] = {
        "id": record.id,
        "function": record.function,
        "phase": record.phase,
        "acceptedAt": record.accepted_at,
        "startedAt": record.started_at,
        "finishedAt": record.finished_at,
        "durationSeconds": record.duration_s,
        "statusCode": record.status_code,
        "error": record.error,
        "callbackUrl": record.callback_url,
        "callback": record.callback,
        "callbackError": record.callback_error,
    }
    if record.result is not None:
        try:
            document["body"] = record.result.decode()
        except UnicodeDecodeError:
            document["bodyBase64"] = base64.b64encode(record.result).decode()
    return document


def _unstamped_read(read: Callable[[int | None], list[str]]) -> Callable[[int | None], list[str]]:
    return lambda tail: [_LOG_STAMP.sub("", line, count=1) for line in read(tail)]


def _unstamped_follow(follow: Callable[[], AsyncIterator[str]]) -> Callable[[], AsyncIterator[str]]:
    async def lines() -> AsyncIterator[str]:
        async for line in follow():
            yield _LOG_STAMP.sub("", line, count=1)

    return lines


def _text(lines: list[str]) -> str:
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
