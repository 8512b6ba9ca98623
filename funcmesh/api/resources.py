"""The Kubernetes verbs on resources: list, get, watch, create, update, patch, delete.

Requests below ``/api/v1`` and ``/apis/{group}/{version}`` land here. Every write goes through
admission before the store; reads come from the store or, for derived kinds (Pods), from a
provider. Answers are objects, ``<Kind>List``s or, when asked for, Tables; failures are Status
objects that name the object they are about.
"""

from __future__ import annotations

import asyncio
import copy
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from funcmesh.api.discovery import SUBRESOURCES
from funcmesh.api.extensions import Extensions
from funcmesh.api.negotiation import decode_json, decode_object, table_version
from funcmesh.api.options import ListOptions, paginate, parse_list_options
from funcmesh.api.patch import JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, apply_patch
from funcmesh.api.paths import ResourcePath, parse_resource_path, verb_for
from funcmesh.api.providers import Admission
from funcmesh.api.sources import ObjectSource, StoredObjects
from funcmesh.api.status import BadRequest, Forbidden, details_for
from funcmesh.api.tables import table
from funcmesh.api.watch import serve_watch
from funcmesh.api.wire import error_response, json_response, read_body
from funcmesh.errors import Conflict, FuncmeshError, NotFound
from funcmesh.model.kinds import NAMESPACE, ResourceType
from funcmesh.model.objects import RawObject, metadata_of, name_of, namespace_of
from funcmesh.store.sqlite import DEFAULT_NAMESPACES

PATCH_RETRIES = 3
_GENERATED_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' generateName alphabet

Handler = Callable[[web.Request, ResourcePath, ListOptions], Awaitable[web.StreamResponse]]


class ResourceHandlers:
    """CRUD and watch for every kind in the registry."""

    def __init__(
        self,
        *,
        stored: StoredObjects,
        derived: dict[str, ObjectSource],
        admission: Admission,
        extensions: Extensions,
        stop: asyncio.Event,
        max_body_bytes: int,
    ) -> None:
        self._stored = stored
        self._derived = derived
        self._admission = admission
        self._extensions = extensions
        self._stop = stop
        self._max_body_bytes = max_body_bytes
        self._verbs: dict[str, Handler] = {
            "list": self._list,
            "watch": self._watch,
            "get": self._get,
            "create": self._create,
            "update": self._update,
            "patch": self._patch,
            "delete": self._delete,
        }

    async def core(self, request: web.Request) -> web.StreamResponse:
        """``/api/v1/...``"""
        return await self._serve(request, "", request.match_info["version"])

    async def grouped(self, request: web.Request) -> web.StreamResponse:
        """``/apis/{group}/{version}/...``"""
        group = request.match_info["group"]
        return await self._serve(request, group, request.match_info["version"])

    async def _serve(self, request: web.Request, group: str, version: str) -> web.StreamResponse:
        segments = request.match_info["tail"].split("/")
        path = parse_resource_path(group, version, segments, path=request.path)
        try:
            return await self._dispatch(request, path)
        except FuncmeshError as exc:
            return error_response(exc, request, details_for(path.rt, path.name, exc))

    async def _dispatch(self, request: web.Request, path: ResourcePath) -> web.StreamResponse:
        if path.subresource not in (None, "status"):
            return await self._extensions.serve_subresource(request, path)
        if path.subresource == "status" and "status" not in dict(SUBRESOURCES.get(path.rt.key, ())):
            raise NotFound(f'{path.rt.plural} have no status subresource (path "{request.path}")')
        options = parse_list_options(request.query)
        verb = verb_for(request.method, path, watch_requested=options.watch)
        return await self._verbs[verb](request, path, options)

    def _source(self, rt: ResourceType) -> ObjectSource:
        return self._derived.get(rt.key, self._stored)

    # reads

    async def _list(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        namespace = path.namespace if path.rt.namespaced else None
        objects, resource_version = await self._source(path.rt).list_objects(path.rt, namespace)
        page = paginate(
            [obj for obj in objects if options.matches(obj)],
            limit=options.limit,
            continue_token=options.continue_token,
            resource_version=resource_version,
        )
        metadata: dict[str, Any] = {"resourceVersion": resource_version}
        if page.continue_token:
            metadata["continue"] = page.continue_token
            metadata["remainingItemCount"] = page.remaining
        body = {
            "kind": f"{path.rt.kind}List",
            "apiVersion": path.api_version,
            "metadata": metadata,
            "items": [_typed(path, obj) for obj in page.items],
        }
        return _rendered(request, path.rt, body, page.items, options, metadata)

    async def _get(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        obj = _typed(path, await self._current(path))
        metadata = {"resourceVersion": metadata_of(obj).get("resourceVersion", "")}
        return _rendered(request, path.rt, obj, [obj], options, metadata)

    async def _watch(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        return await serve_watch(
            request,
            source=self._source(path.rt),
            path=path,
            options=options,
            table_version=table_version(request.headers.get("Accept", "")),
            stop=self._stop,
        )

    async def _current(self, path: ResourcePath) -> RawObject:
        assert path.name is not None  # verb_for routes named paths only here
        return await self._source(path.rt).get(path.rt, path.scope_namespace, path.name)

    # writes

    async def _create(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        obj = decode_object(request.content_type, await self._body(request))
        obj = _placed(path, _with_generated_name(_checked_type(path.rt, obj)))
        try:
            # Admission may decode and list an archive: keep that off the event loop.
            admitted = await asyncio.to_thread(self._admission.admit, path.rt, obj, None)
            created = admitted if options.dry_run else await self._stored.create(path.rt, admitted)
        except FuncmeshError as exc:  # the URL has no name: take it from the object
            return error_response(exc, request, details_for(path.rt, name_of(obj), exc))
        return json_response(_typed(path, created), status=201)

    async def _update(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        obj = decode_object(request.content_type, await self._body(request))
        obj = _placed(path, _checked_type(path.rt, obj))
        current = await self._current(path)
        return await self._store_update(path, obj, current, dry_run=options.dry_run)

    async def _patch(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        content_type = request.content_type
        body = await self._body(request)
        patch = decode_json(body, what="the patch") if _is_json_patch(content_type) else None
        for attempt in range(PATCH_RETRIES):
            current = await self._current(path)
            patched = apply_patch(content_type, _typed(path, current), patch)
            if not isinstance(patched, dict):
                raise BadRequest("the patch must leave an object")
            explicit_version = _sets_resource_version(content_type, patch)
            if not explicit_version:
                metadata_of(patched)["resourceVersion"] = metadata_of(current)["resourceVersion"]
            try:
                patched = _placed(path, _checked_type(path.rt, patched))
                return await self._store_update(path, patched, current, dry_run=options.dry_run)
            except Conflict:
                if explicit_version or attempt == PATCH_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    async def _store_update(
        self, path: ResourcePath, obj: RawObject, current: RawObject, *, dry_run: bool
    ) -> web.StreamResponse:
        status_only = path.subresource == "status"
        if status_only:  # only the status (and the resourceVersion precondition) count
            wanted_version = metadata_of(obj).get("resourceVersion")
            new_status = obj.get("status")
            obj = copy.deepcopy(current)
            obj["status"] = new_status
            metadata_of(obj)["resourceVersion"] = wanted_version
        admitted = await asyncio.to_thread(self._admission.admit, path.rt, obj, current)
        if dry_run:
            return json_response(_typed(path, admitted))
        updated = await self._stored.update(path.rt, admitted, status_only=status_only)
        return json_response(_typed(path, updated))

    async def _delete(
        self, request: web.Request, path: ResourcePath, options: ListOptions
    ) -> web.StreamResponse:
        assert path.name is not None
        if path.rt == NAMESPACE and path.name in DEFAULT_NAMESPACES:
            raise Forbidden(
                f'namespaces "{path.name}" is forbidden: this namespace may not be deleted'
            )
        preconditions = await self._delete_preconditions(request)
        current = await self._current(path)
        wanted_uid = preconditions.get("uid")
        if wanted_uid and wanted_uid != metadata_of(current).get("uid"):
            raise Conflict(
                f'{path.rt.plural} "{path.name}": the UID in the precondition ({wanted_uid}) '
                f"does not match the UID of the object ({metadata_of(current).get('uid')})"
            )
        if options.dry_run:
            return json_response(current)
        if path.rt.key in self._derived:  # Pods: deleting one stops it
            deleted = await self._extensions.delete_derived(
                path.rt, path.scope_namespace, path.name
            )
            return json_response(deleted)
        deleted = await self._stored.delete(
            path.rt,
            path.scope_namespace,
            path.name,
            resource_version=preconditions.get("resourceVersion") or None,
        )
        return json_response(deleted)

    async def _delete_preconditions(self, request: web.Request) -> dict[str, str]:
        """``preconditions`` of a DeleteOptions body (kubectl sends one with each delete)."""
        body = await self._body(request)
        if not body.strip():
            return {}
        options = decode_json(body, what="DeleteOptions")
        preconditions = options.get("preconditions") if isinstance(options, dict) else None
        if not isinstance(preconditions, dict):
            return {}
        return {key: str(value) for key, value in preconditions.items() if value}

    async def _body(self, request: web.Request) -> bytes:
        return await read_body(request, max_bytes=self._max_body_bytes)


def _rendered(
    request: web.Request,
    rt: ResourceType,
    body: RawObject,
    objects: list[RawObject],
    options: ListOptions,
    metadata: dict[str, Any],
) -> web.Response:
    """``body``, or a Table of ``objects`` when the client asks for one (as kubectl get does)."""
    version = table_version(request.headers.get("Accept", ""))
    if version is None:
        return json_response(body)
    rows = table(
        rt,
        objects,
        now_s=time.time(),
        include_object=options.include_object,
        table_version=version,
        list_metadata=metadata,
    )
    return json_response(rows)


def _typed(path: ResourcePath, obj: RawObject) -> RawObject:
    """The object with ``apiVersion`` and ``kind`` first (list items must carry them), in the
    version the request named: a kind served under several versions is stored in one."""
    rest = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}
    return {"apiVersion": path.api_version, "kind": path.rt.kind, **rest}


def _checked_type(rt: ResourceType, obj: RawObject) -> RawObject:
    """Fill in ``apiVersion``/``kind`` as stored (the storage version); BadRequest when they
    name another resource. Any served version of the kind is accepted on any of its paths:
    the versions share one schema, so converting is renaming."""
    api_version, kind = obj.get("apiVersion") or rt.api_version, obj.get("kind") or rt.kind
    if api_version not in rt.api_versions or kind != rt.kind:
        raise BadRequest(
            f"the object is a {kind} of {api_version}, but this path serves "
            f"{rt.kind} of {' or '.join(rt.api_versions)}"
        )
    return {**obj, "apiVersion": rt.api_version, "kind": kind}


def _placed(path: ResourcePath, obj: RawObject) -> RawObject:
    """Check the body's name and namespace against the URL and fill them in when absent."""
    obj = {**obj, "metadata": dict(metadata_of(obj))}
    metadata = obj["metadata"]
    if path.name is not None:
        if name_of(obj) not in ("", path.name):
            raise BadRequest(
                f"the name of the object ({name_of(obj)}) does not match the name on the URL "
                f"({path.name})"
            )
        metadata["name"] = path.name
    if not path.rt.namespaced:
        metadata.pop("namespace", None)
        return obj
    if namespace_of(obj) not in ("", path.scope_namespace):
        raise BadRequest(
            f"the namespace of the object ({namespace_of(obj)}) does not match the namespace "
            f"on the URL ({path.scope_namespace})"
        )
    metadata["namespace"] = path.namespace
    return obj


def _with_generated_name(obj: RawObject) -> RawObject:
    metadata = metadata_of(obj)
    prefix = metadata.get("generateName")
    if name_of(obj) or not isinstance(prefix, str) or not prefix:
        return obj
    suffix = "".join(secrets.choice(_GENERATED_NAME_ALPHABET) for _ in range(5))
    return {**obj, "metadata": {**metadata, "name": prefix + suffix}}


def _is_json_patch(content_type: str) -> bool:
    return content_type in (MERGE_PATCH, STRATEGIC_MERGE_PATCH, JSON_PATCH)


def _sets_resource_version(content_type: str, patch: Any) -> bool:
    """Whether the patch itself names a resourceVersion (then it is a precondition)."""
    if isinstance(patch, dict):
        metadata = patch.get("metadata")
        return isinstance(metadata, dict) and metadata.get("resourceVersion") is not None
    if content_type == JSON_PATCH and isinstance(patch, list):
        paths = {op.get("path") for op in patch if isinstance(op, dict)}
        return bool(paths & {"/metadata/resourceVersion", "/metadata", ""})
    return False
