"""API paths of resource types and objects, spelled as Kubernetes spells them.

``collection_path`` and ``object_path`` build the URL path of a ``model.kinds`` resource type's
collection or one of its objects; ``segment`` quotes a name so that it stays one path segment.
Must not do I/O or know about HTTP.
"""

from __future__ import annotations

from urllib.parse import quote

from funcmesh.errors import Invalid
from funcmesh.model.kinds import ResourceType


def collection_path(rt: ResourceType, namespace: str, *, all_namespaces: bool = False) -> str:
    """``/apis/kubeless.io/v1beta1/namespaces/default/functions``, ``/api/v1/namespaces``."""
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    if rt.namespaced and not all_namespaces:
        prefix += f"/namespaces/{segment(namespace or 'default')}"
    return f"{prefix}/{rt.plural}"


def object_path(rt: ResourceType, namespace: str, name: str) -> str:
    if not name:
        raise Invalid(f"a {rt.singular} name is required")
    return f"{collection_path(rt, namespace)}/{segment(name)}"


def segment(text: str) -> str:
    return quote(text, safe="")
