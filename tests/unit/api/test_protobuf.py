"""Kubernetes protobuf request bodies, as kubectl's typed clients send them."""

from __future__ import annotations

import pytest

from funcmesh.api.protobuf import MAGIC, decode_protobuf_object
from funcmesh.api.status import BadRequest, UnsupportedMediaType


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return varint(number << 3 | 2) + varint(len(data)) + data


def envelope(api_version: str, kind: str, raw: bytes) -> bytes:
    type_meta = field(1, api_version) + field(2, kind)
    unknown = field(1, type_meta) + field(2, raw) + field(4, "application/vnd.kubernetes.protobuf")
    return MAGIC + unknown


def test_namespace_as_kubectl_create_namespace_sends_it() -> None:
    metadata = (
        field(1, "dev")
        + field(11, field(1, "team") + field(2, "blue"))
        + field(11, field(1, "tier") + field(2, "gold"))
        + field(12, field(1, "note") + field(2, "hi"))
        + field(8, field(1, b""))  # creationTimestamp: skipped
        + varint(7 << 3)
        + varint(3)  # generation (a varint): skipped
    )
    raw = field(1, metadata) + field(2, b"") + field(3, b"")
    assert decode_protobuf_object(envelope("v1", "Namespace", raw)) == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "dev",
            "labels": {"team": "blue", "tier": "gold"},
            "annotations": {"note": "hi"},
        },
        "spec": {},
        "status": {},
    }


def test_secret_as_kubectl_create_secret_sends_it() -> None:
    """``data`` arrives as raw bytes and leaves base64-encoded, as in the JSON form."""
    raw = (
        field(1, field(1, "db") + field(3, "default"))
        + field(2, field(1, "password") + field(2, b"\x00s3cr\xffet"))
        + field(2, field(1, "user") + field(2, b"admin"))
        + field(3, "Opaque")
        + field(4, field(1, "note") + field(2, "plain"))
        + varint(5 << 3)
        + varint(1)  # immutable: true
    )
    assert decode_protobuf_object(envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db", "namespace": "default"},
        "data": {"password": "AHMzY3L/ZXQ=", "user": "YWRtaW4="},
        "type": "Opaque",
        "stringData": {"note": "plain"},
        "immutable": True,
    }


def test_a_bool_sent_length_delimited_is_a_bad_request() -> None:
    raw = field(1, field(1, "db")) + field(5, b"x")
    with pytest.raises(BadRequest, match="immutable is not a number"):
        decode_protobuf_object(envelope("v1", "Secret", raw))


def test_kinds_without_a_schema_are_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="ConfigMap of v1"):
        decode_protobuf_object(envelope("v1", "ConfigMap", field(1, field(1, "cm"))))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "magic"),
        (MAGIC + b"\x0a\x05ab", "past the end"),
        (MAGIC + b"\x0a", "cut off"),
        (MAGIC + b"\x0f", "wire type"),
        (MAGIC + b"\x08\x01", "not length-delimited"),
    ],
)
def test_malformed_bodies_are_bad_requests(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_protobuf_object(body)
