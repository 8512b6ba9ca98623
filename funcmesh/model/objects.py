"""Raw Kubernetes-shaped objects (``apiVersion/kind/metadata/spec/status``) and their metadata.

Objects travel as plain JSON-compatible dicts, exactly as on the wire; typed views (for example
``model.function``) are parsed from them where a component needs them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from funcmesh.errors import Cause, Invalid
from funcmesh.model.kinds import ResourceType
from funcmesh.model.names import (
    dns1123_label_error,
    dns1123_subdomain_error,
    label_key_error,
    label_value_error,
)

RawObject = dict[str, Any]


def metadata_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def name_of(obj: Mapping[str, Any]) -> str:
    return str(metadata_of(obj).get("name") or "")


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str(metadata_of(obj).get("namespace") or "")


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    labels = metadata_of(obj).get("labels")
    return labels if isinstance(labels, dict) else {}


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    annotations = metadata_of(obj).get("annotations")
    return annotations if isinstance(annotations, dict) else {}


def rfc3339(timestamp_s: float | None = None) -> str:
    """``2021-05-03T11:31:53Z`` for a Unix time (now by default)."""
    moment = datetime.fromtimestamp(time.time() if timestamp_s is None else timestamp_s, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    """Unix time of an RFC 3339 timestamp."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def metadata_causes(obj: Mapping[str, Any], rt: ResourceType) -> list[Cause]:
    """Everything wrong with the envelope of ``obj`` for resource type ``rt``."""
    causes: list[Cause] = []
    if obj.get("apiVersion") not in (None, rt.api_version):
        causes.append(
            Cause(field="apiVersion", message=f"must be {rt.api_version}, got {obj['apiVersion']}")
        )
    if obj.get("kind") not in (None, rt.kind):
        causes.append(Cause(field="kind", message=f"must be {rt.kind}, got {obj['kind']}"))
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [*causes, Cause(field="metadata", message="metadata must be an object")]
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        causes.append(
            Cause(field="metadata.name", message="name is required", reason="FieldValueRequired")
        )
    elif error := (dns1123_label_error if rt.namespaced else dns1123_subdomain_error)(name):
        causes.append(Cause(field="metadata.name", message=error))
    namespace = meta.get("namespace")
    if rt.namespaced and namespace and (error := dns1123_label_error(str(namespace))):
        causes.append(Cause(field="metadata.namespace", message=error))
    causes.extend(_map_causes(meta, "labels", check_values=True))
    causes.extend(_map_causes(meta, "annotations", check_values=False))
    return causes


def _map_causes(meta: Mapping[str, Any], field: str, *, check_values: bool) -> list[Cause]:
    value = meta.get(field)
    if value is None:
        return []
    if not isinstance(value, dict):
        return [Cause(field=f"metadata.{field}", message=f"{field} must be a map of strings")]
    causes = []
    for key, item in value.items():
        error = label_key_error(str(key))
        if not isinstance(item, str):
            error = f'{field} "{key}" must have a string value, got {item!r}'
        elif check_values and error is None:
            error = label_value_error(item)
        if error:
            causes.append(Cause(field=f"metadata.{field}", message=error))
    return causes


def raise_if_causes(causes: list[Cause], *, kind: str, name: str) -> None:
    """Raise Invalid in the Kubernetes wording when there are causes."""
    if causes:
        details = "; ".join(f"{c.field}: {c.message}" for c in causes)
        raise Invalid(f'{kind} "{name}" is invalid: {details}', causes)
