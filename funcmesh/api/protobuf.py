"""Kubernetes protobuf request bodies, for the few writes kubectl only sends that way.

kubectl's typed clients (``kubectl create namespace``) send built-in kinds as
``application/vnd.kubernetes.protobuf``: the magic ``k8s\\0`` and a ``runtime.Unknown`` whose
``raw`` bytes are the object. This module reads that envelope with a small protobuf wire-format
reader and turns the kinds listed in ``SCHEMAS`` into the JSON shape; fields it does not know
are skipped, as protobuf readers do, and scalar fields holding their zero value (``""``, ``0``,
``false``: protobuf cannot tell them from unset) are left out, as Go's JSON ``omitempty`` does.
Answers stay JSON (kubectl accepts both). The schemas cover what kubectl's typed commands send
(``create namespace|secret|service|deployment``, ``expose``). This module is pure.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from funcmesh.api.status import BadRequest, UnsupportedMediaType
from funcmesh.model.objects import RawObject

PROTOBUF_CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """One field of a message: its JSON name and how to read it."""

    name: str
    kind: str = "string"  # string | bytes | bool | int | int_or_string | map | bytes_map | message
    repeated: bool = False
    message: Mapping[int, Field] = field(default_factory=dict)


# k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto (the parts a create request carries)
OBJECT_META = {
    1: Field(name="name"),
    2: Field(name="generateName"),
    3: Field(name="namespace"),
    11: Field(name="labels", kind="map"),
    12: Field(name="annotations", kind="map"),
    14: Field(name="finalizers", repeated=True),
}
# k8s.io/api/core/v1/generated.proto
NAMESPACE = {
    1: Field(name="metadata", kind="message", message=OBJECT_META),
    2: Field(name="spec", kind="message", message={1: Field(name="finalizers", repeated=True)}),
    3: Field(name="status", kind="message", message={1: Field(name="phase")}),
}
SECRET = {
    1: Field(name="metadata", kind="message", message=OBJECT_META),
    2: Field(name="data", kind="bytes_map"),  # JSON carries the bytes base64-encoded
    3: Field(name="type"),
    4: Field(name="stringData", kind="map"),
    5: Field(name="immutable", kind="bool"),
}
# k8s.io/apimachinery/pkg/util/intstr: {type: 0 int | 1 string, intVal, strVal}
INT_OR_STRING = {1: Field(name="type", kind="int"), 2: Field(name="intVal", kind="int"),
                 3: Field(name="strVal")}  # fmt: skip
SERVICE_PORT = {
    1: Field(name="name"),
    2: Field(name="protocol"),
    3: Field(name="port", kind="int"),
    4: Field(name="targetPort", kind="int_or_string", message=INT_OR_STRING),
    5: Field(name="nodePort", kind="int"),
    6: Field(name="appProtocol"),
}
SERVICE_SPEC = {
    1: Field(name="ports", kind="message", repeated=True, message=SERVICE_PORT),
    2: Field(name="selector", kind="map"),
    3: Field(name="clusterIP"),
    4: Field(name="type"),
    5: Field(name="externalIPs", repeated=True),
    7: Field(name="sessionAffinity"),
    10: Field(name="externalName"),
    13: Field(name="publishNotReadyAddresses", kind="bool"),
    14: Field(
        name="sessionAffinityConfig",
        kind="message",
        message={
            1: Field(
                name="clientIP",
                kind="message",
                message={1: Field(name="timeoutSeconds", kind="int")},
            )
        },
    ),
    18: Field(name="clusterIPs", repeated=True),
}
SERVICE = {
    1: Field(name="metadata", kind="message", message=OBJECT_META),
    2: Field(name="spec", kind="message", message=SERVICE_SPEC),
}
CONTAINER_PORT = {
    1: Field(name="name"),
    3: Field(name="containerPort", kind="int"),
    4: Field(name="protocol"),
}
CONTAINER = {
    1: Field(name="name"),
    2: Field(name="image"),
    3: Field(name="command", repeated=True),
    4: Field(name="args", repeated=True),
    5: Field(name="workingDir"),
    6: Field(name="ports", kind="message", repeated=True, message=CONTAINER_PORT),
    7: Field(
        name="env",
        kind="message",
        repeated=True,
        message={1: Field(name="name"), 2: Field(name="value")},
    ),
}
POD_TEMPLATE = {
    1: Field(name="metadata", kind="message", message=OBJECT_META),
    2: Field(
        name="spec",
        kind="message",
        message={
            2: Field(name="containers", kind="message", repeated=True, message=CONTAINER),
            4: Field(name="terminationGracePeriodSeconds", kind="int"),
            16: Field(name="hostname"),
            17: Field(name="subdomain"),
        },
    ),
}
DEPLOYMENT = {
    1: Field(name="metadata", kind="message", message=OBJECT_META),
    2: Field(
        name="spec",
        kind="message",
        message={
            1: Field(name="replicas", kind="int"),
            2: Field(
                name="selector",
                kind="message",
                message={1: Field(name="matchLabels", kind="map")},
            ),
            3: Field(name="template", kind="message", message=POD_TEMPLATE),
        },
    ),
}
SCHEMAS: dict[tuple[str, str], Mapping[int, Field]] = {
    ("v1", "Namespace"): NAMESPACE,
    ("v1", "Secret"): SECRET,
    ("v1", "Service"): SERVICE,
    ("apps/v1", "Deployment"): DEPLOYMENT,
}
_SCALARS = ("string", "bool", "int")
_TYPE_META = {1: Field(name="apiVersion"), 2: Field(name="kind")}
_UNKNOWN = {
    1: Field(name="typeMeta", kind="message", message=_TYPE_META),
    2: Field(name="raw", kind="bytes"),
}


def decode_protobuf_object(body: bytes) -> RawObject:
    """The JSON-shaped object of a protobuf request body."""
    if not body.startswith(MAGIC):
        raise BadRequest("the protobuf body does not start with the Kubernetes magic bytes")
    envelope = _message(body[len(MAGIC) :], _UNKNOWN)
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = str(type_meta.get("apiVersion", "")), str(type_meta.get("kind", ""))
    schema = SCHEMAS.get((api_version, kind))
    if schema is None:
        raise UnsupportedMediaType(
            f"kubectl sent a {kind or 'object'} of {api_version or 'an unknown version'} as "
            "protobuf, which funcmesh does not read; send it as YAML or JSON "
            "(kubectl apply -f FILE)"
        )
    raw = envelope.get("raw", b"")
    return {"apiVersion": api_version, "kind": kind, **_message(bytes(raw), schema)}


def _message(data: bytes, schema: Mapping[int, Field]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        spec = schema.get(number)
        if spec is None:
            continue
        decoded = _value(spec, value)
        if spec.kind in ("map", "bytes_map"):
            key, item = decoded
            result.setdefault(spec.name, {})[key] = item
        elif spec.repeated:
            result.setdefault(spec.name, []).append(decoded)
        elif spec.kind in _SCALARS and not decoded:
            result.pop(spec.name, None)  # the zero value: as if unset (omitempty)
        else:
            result[spec.name] = decoded
    return result


def _value(spec: Field, value: int | bytes) -> Any:
    if spec.kind in ("bool", "int"):
        if isinstance(value, bytes):
            raise BadRequest(f"the protobuf body is malformed: {spec.name} is not a number")
        if spec.kind == "bool":
            return bool(value)
        return value - (1 << 64) if value >= 1 << 63 else value  # two's complement int32/64
    if spec.kind == "int_or_string":
        if not isinstance(value, bytes):
            raise BadRequest(f"the protobuf body is malformed: {spec.name} is not a message")
        parts = _message(value, spec.message)
        return parts.get("strVal", "") if parts.get("type") == 1 else parts.get("intVal", 0)
    if not isinstance(value, bytes):
        raise BadRequest(f"the protobuf body is malformed: {spec.name} is not length-delimited")
    if spec.kind == "bytes":
        return value
    if spec.kind == "message":
        return _message(value, spec.message)
    if spec.kind == "map":
        entry = _message(value, {1: Field(name="key"), 2: Field(name="value")})
        return entry.get("key", ""), entry.get("value", "")
    if spec.kind == "bytes_map":
        entry = _message(value, {1: Field(name="key"), 2: Field(name="value", kind="bytes")})
        return entry.get("key", ""), base64.b64encode(entry.get("value", b"")).decode("ascii")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the protobuf body is malformed: {spec.name} is not UTF-8") from exc


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` pairs of one message in the protobuf wire format."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, position = _varint(data, position)
            yield number, value
        elif wire_type == _BYTES:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise BadRequest("the protobuf body is malformed: a field runs past the end")
            yield number, data[position : position + length]
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4  # no such fields are read
        else:
            raise BadRequest(f"the protobuf body is malformed: wire type {wire_type}")


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while position < len(data) and shift < 70:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise BadRequest("the protobuf body is malformed: a number is cut off")
