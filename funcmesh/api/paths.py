"""Kubernetes REST paths and verbs: which resource, namespace, name and subresource a URL names.

Paths below ``/api/v1`` or ``/apis/{group}/{version}`` follow the Kubernetes layout:
``[watch/][namespaces/{ns}/]{plural}[/{name}[/{subresource}]]``, where ``namespaces/{name}/...``
of the core group is a Namespace subresource unless the next segment is a namespaced plural.
This module is pure: no I/O, no aiohttp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from funcmesh.api.status import MethodNotAllowed
from funcmesh.errors import NotFound
from funcmesh.model.kinds import ResourceType, served_under

WRITE_VERBS = frozenset({"create", "update", "patch", "delete"})
_VERBS_BY_METHOD = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourcePath:
    """What one resource URL names."""

    rt: ResourceType
    namespace: str | None  # None: every namespace, or a cluster-scoped kind
    name: str | None = None
    subresource: str | None = None
    watch: bool = False  # the deprecated ``/watch/`` form
    version: str = ""  # the version in the URL when it is not the kind's storage version

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` the request sees objects in (a kind may serve several)."""
        return self.rt.api_version_at(self.version or self.rt.version)

    @property
    def scope_namespace(self) -> str:
        """The namespace objects of this path live in ("" for cluster-scoped kinds)."""
        return (self.namespace or "") if self.rt.namespaced else ""


def unknown_path(path: str) -> NotFound:
    return NotFound(f'the server could not find the requested resource (path "{path}")')


def find_group_version(group: str, version: str) -> tuple[ResourceType, ...]:
    """The resource types served under one group/version; empty when it is not served."""
    return served_under(group, version)


def parse_resource_path(
    group: str, version: str, segments: Sequence[str], *, path: str
) -> ResourcePath:
    """Resolve the segments after the group/version; raises NotFound naming ``path``."""
    served = {rt.plural: rt for rt in find_group_version(group, version)}
    parts = list(segments)
    watch = bool(parts) and parts[0] == "watch"
    if watch:
        parts = parts[1:]
    if len(parts) >= 3 and parts[0] == "namespaces" and _namespaced(served.get(parts[2])):
        namespace, plural, rest = parts[1], parts[2], parts[3:]
    elif parts:
        namespace, plural, rest = None, parts[0], parts[1:]
    else:
        raise unknown_path(path)
    rt = served.get(plural)
    if rt is None or len(rest) > 2 or "" in rest or namespace == "":
        raise unknown_path(path)
    if rt.namespaced and namespace is None and rest:
        raise unknown_path(path)  # a namespaced object is only addressed inside its namespace
    return ResourcePath(
        rt=rt,
        namespace=namespace,
        name=rest[0] if rest else None,
        subresource=rest[1] if len(rest) > 1 else None,
        watch=watch,
        version="" if version == rt.version else version,
    )


def _namespaced(rt: ResourceType | None) -> bool:
    return rt is not None and rt.namespaced


def verb_for(method: str, path: ResourcePath, *, watch_requested: bool) -> str:
    """The Kubernetes verb of a request: get, list, watch, create, update, patch or delete."""
    if path.subresource == "status" and method not in ("GET", "HEAD", "PUT", "PATCH"):
        raise MethodNotAllowed(f"{method} is not supported on {path.rt.plural}/status")
    if method in ("GET", "HEAD"):
        if path.watch or watch_requested:
            return "watch"
        return "list" if path.name is None else "get"
    verb = _VERBS_BY_METHOD.get(method)
    if verb is None or (verb == "create") != (path.name is None):
        raise MethodNotAllowed(f"{method} is not supported on this path")
    if verb in WRITE_VERBS and verb not in path.rt.verbs:
        raise MethodNotAllowed(
            f"{path.rt.plural} are read-only (deleting one stops it): they show the running "
            "instances; change the Function or the Deployment instead"
        )
    if verb == "create" and path.rt.namespaced and path.namespace is None:
        raise MethodNotAllowed(
            f"{path.rt.plural} are created inside a namespace: "
            f"POST to .../namespaces/NAMESPACE/{path.rt.plural}"
        )
    return verb
