"""Core v1 Secrets: admission's normal form and the typed reads the gateway needs.

A Secret keeps its values base64-encoded in ``data``; ``stringData`` (plain text, write-only as
in Kubernetes) is merged into ``data`` on admission and dropped. ``type`` defaults to
``Opaque``; the types Kubernetes checks keys for (``kubernetes.io/tls``,
``kubernetes.io/basic-auth``, ...) are checked the same way. No I/O, and never a value in an
error message or a log line: only key names.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from funcmesh.errors import Cause
from funcmesh.model.kinds import SECRET
from funcmesh.model.objects import RawObject, metadata_causes, name_of, raise_if_causes

OPAQUE = "Opaque"
TLS = "kubernetes.io/tls"
BASIC_AUTH = "kubernetes.io/basic-auth"
# The keys a Secret of each checked type must carry (Kubernetes' validation).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    TLS: ("tls.crt", "tls.key"),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
}
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
MAX_KEY_CHARS = 253


def admit_secret(obj: RawObject) -> RawObject:
    """``obj`` in normal form (stringData merged into data, type defaulted), or Invalid."""
    causes = metadata_causes(obj, SECRET)
    data = _field_map(obj, "data", causes)
    string_data = _field_map(obj, "stringData", causes)
    merged: dict[str, str] = {}
    for key, value in data.items():
        if _key_ok(key, "data", causes) and _base64_ok(key, value, causes):
            merged[key] = value
    for key, value in string_data.items():
        if _key_ok(key, "stringData", causes) and _string_ok(key, value, causes):
            merged[key] = base64.b64encode(value.encode()).decode("ascii")
    secret_type = obj.get("type") or OPAQUE
    if not isinstance(secret_type, str):
        causes.append(Cause(field="type", message="type must be a string"))
        secret_type = OPAQUE
    causes += _type_causes(secret_type, merged)
    raise_if_causes(causes, kind=SECRET.kind, name=name_of(obj))
    obj.pop("stringData", None)
    obj["data"] = merged
    obj["type"] = secret_type
    return obj


def secret_type_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("type") or OPAQUE)


def secret_value(obj: Mapping[str, Any], key: str) -> bytes | None:
    """The decoded value of ``key``, or None when the Secret lacks it or it does not decode."""
    data = obj.get("data")
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _field_map(obj: RawObject, field: str, causes: list[Cause]) -> dict[str, Any]:
    value = obj.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        causes.append(Cause(field=field, message=f"{field} must be an object of key: value"))
        return {}
    return value


def _key_ok(key: object, field: str, causes: list[Cause]) -> bool:
    if isinstance(key, str) and len(key) <= MAX_KEY_CHARS and _KEY.fullmatch(key):
        return True
    message = "a valid key must consist of alphanumeric characters, '-', '_' or '.'"
    causes.append(Cause(field=f"{field}[{key!s:.60}]", message=message))
    return False


def _base64_ok(key: str, value: object, causes: list[Cause]) -> bool:
    if isinstance(value, str):
        try:
            base64.b64decode(value, validate=True)
            return True
        except (binascii.Error, ValueError):
            pass
    causes.append(Cause(field=f"data[{key}]", message="the value must be base64-encoded"))
    return False


def _string_ok(key: str, value: object, causes: list[Cause]) -> bool:
    if isinstance(value, str):
        return True
    causes.append(Cause(field=f"stringData[{key}]", message="the value must be a string"))
    return False


def _type_causes(secret_type: str, data: Mapping[str, str]) -> list[Cause]:
    causes = [
        Cause(
            field=f"data[{key}]",
            message=f"required for a {secret_type} Secret",
            reason="FieldValueRequired",
        )
        for key in REQUIRED_KEYS.get(secret_type, ())
        if key not in data
    ]
    if secret_type == BASIC_AUTH and "username" not in data and "password" not in data:
        message = f"a {BASIC_AUTH} Secret needs username or password"
        causes.append(Cause(field="data", message=message, reason="FieldValueRequired"))
    return causes
