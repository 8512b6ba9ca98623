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


# The body kubectl 1.32 sends for `kubectl create service clusterip web --tcp=80:8080`.
KUBECTL_SERVICE = bytes.fromhex(
    "6b3873000a0d0a0276311207536572766963651269"
    "0a1f0a0377656212001a00220 02a00320038004200 5a0a0a03617070120377 6562"
    "12420a1b0a0738302d38303830120354435018502207080010903f1a002800"
    "120a0a03617070120377656 21a00220943 6c75737465724950 3a00"
    "4200520 05a00600068001a020a001a002200".replace(" ", "")
)


def test_a_service_as_kubectl_create_service_sends_it() -> None:
    assert decode_protobuf_object(KUBECTL_SERVICE) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
            "selector": {"app": "web"},
            "type": "ClusterIP",
        },
    }


def test_a_named_target_port_and_client_ip_affinity() -> None:
    target = varint(1 << 3) + varint(1) + field(3, "http")  # IntOrString, type 1: a name
    timeout = varint(1 << 3) + varint(600)
    spec = (
        field(1, field(4, target))
        + field(7, "ClientIP")
        + field(14, field(1, timeout))
        + field(3, "None")
    )
    raw = field(1, field(1, "web")) + field(2, spec)
    assert decode_protobuf_object(envelope("v1", "Service", raw))["spec"] == {
        "ports": [{"targetPort": "http"}],
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        "clusterIP": "None",
    }


def test_a_deployment_as_kubectl_create_deployment_sends_it() -> None:
    labels = field(11, field(1, "app") + field(2, "web"))
    container = (
        field(1, "web")
        + field(2, "python:3.11")
        + field(3, "python3")
        + field(4, "-m")
        + field(4, "http.server")
        + field(6, field(1, "http") + varint(3 << 3) + varint(8000))
        + field(7, field(1, "MODE") + field(2, "demo"))
    )
    spec = (
        varint(1 << 3)
        + varint(2)  # replicas
        + field(2, field(1, field(1, "app") + field(2, "web")))
        + field(3, field(1, labels) + field(2, field(2, container)))
    )
    raw = field(1, field(1, "web") + labels) + field(2, spec)
    decoded = decode_protobuf_object(envelope("apps/v1", "Deployment", raw))
    assert decoded["spec"] == {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "containers": [
                    {
                        "name": "web",
                        "image": "python:3.11",
                        "command": ["python3"],
                        "args": ["-m", "http.server"],
                        "ports": [{"name": "http", "containerPort": 8000}],
                        "env": [{"name": "MODE", "value": "demo"}],
                    }
                ]
            },
        },
    }


def test_negative_numbers_are_twos_complement() -> None:
    raw = field(1, field(1, "d")) + field(2, varint(1 << 3) + varint((1 << 64) - 1))
    assert decode_protobuf_object(envelope("apps/v1", "Deployment", raw))["spec"] == {
        "replicas": -1
    }
