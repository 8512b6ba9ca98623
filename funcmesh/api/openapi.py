"""A minimal OpenAPI v3 description (``/openapi/v3``), enough for kubectl's write path.

kubectl 1.2x downloads OpenAPI before ``create``/``apply`` to learn whether the server validates
fields itself (the ``fieldValidation`` query parameter on the PATCH operation of the kind); when
it cannot, it refuses to send anything without ``--validate=false``. We list, per group/version,
the operations of each kind with that parameter. funcmesh kinds are validated by admission and,
like the schemaless Kubeless CRDs, accept unknown fields, so no schemas are published. This
module is pure.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from funcmesh.api.discovery import KUBERNETES_VERSION, group_versions
from funcmesh.model.kinds import ResourceType, served_under

_FIELD_VALIDATION = {
    "name": "fieldValidation",
    "in": "query",
    "description": "Strict, Warn or Ignore; funcmesh validates every object on admission",
    "schema": {"type": "string", "uniqueItems": True},
}


def openapi_root() -> dict[str, Any]:
    """``/openapi/v3``: where the document of each group/version is."""
    paths = {}
    for group, versions in group_versions().items():
        for version in versions:
            key = _gv_path(group, version)
            digest = hashlib.sha256(json.dumps(openapi_document(group, version)).encode())
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest.hexdigest()}"}
    return {"paths": paths}


def openapi_document(group: str, version: str) -> dict[str, Any] | None:
    """The document of one group/version, or None when it is not served."""
    kinds = served_under(group, version)
    if not kinds:
        return None
    paths: dict[str, Any] = {}
    for rt in kinds:
        paths.update(_kind_paths(rt, version))
    return {
        "openapi": "3.0.0",
        "info": {"title": "funcmesh", "version": KUBERNETES_VERSION},
        "paths": paths,
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _kind_paths(rt: ResourceType, version: str) -> dict[str, Any]:
    base = "/" + _gv_path(rt.group, version)
    scope = "/namespaces/{namespace}" if rt.namespaced else ""
    collection, item = f"{base}{scope}/{rt.plural}", f"{base}{scope}/{rt.plural}/{{name}}"
    gvk = {"group": rt.group, "version": version, "kind": rt.kind}
    read_ops = {"get": _operation(gvk, "get", with_validation=False)}
    if rt.read_only:
        return {collection: {"get": _operation(gvk, "list", with_validation=False)}, item: read_ops}
    return {
        collection: {
            "get": _operation(gvk, "list", with_validation=False),
            "post": _operation(gvk, "post", with_validation=True),
        },
        item: {
            **read_ops,
            "put": _operation(gvk, "put", with_validation=True),
            "patch": _operation(gvk, "patch", with_validation=True),
            "delete": _operation(gvk, "delete", with_validation=False),
        },
    }


def _operation(gvk: dict[str, str], action: str, *, with_validation: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
        "responses": {"200": {"description": "OK"}},
    }
    if with_validation:
        operation["parameters"] = [_FIELD_VALIDATION]
    return operation
