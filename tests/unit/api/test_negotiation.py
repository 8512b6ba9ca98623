"""What representation kubectl asks for, and request body decoding."""

from __future__ import annotations

import pytest

from funcmesh.api.negotiation import decode_json, decode_object, discovery_version, table_version
from funcmesh.api.status import BadRequest, UnsupportedMediaType

KUBECTL_TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
KUBECTL_DISCOVERY = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        (KUBECTL_TABLE, "v1"),
        ("application/json;as=Table;v=v1beta1;g=meta.k8s.io", "v1beta1"),
        ("application/json", None),
        ("application/json, application/json;as=Table;v=v1;g=meta.k8s.io", None),
        ("application/json;as=Table;v=v9;g=meta.k8s.io,application/json", None),
        ("", None),
    ],
)
def test_table_version(accept: str, version: str | None) -> None:
    assert table_version(accept) == version


@pytest.mark.parametrize(
    ("accept", "version"),
    [
        (KUBECTL_DISCOVERY, "v2"),
        (KUBECTL_DISCOVERY.split(",", 1)[1], "v2beta1"),
        ("application/json, */*", None),
    ],
)
def test_discovery_version(accept: str, version: str | None) -> None:
    assert discovery_version(accept) == version


def test_decode_json_and_yaml_objects() -> None:
    assert decode_object("application/json", b'{"a": 1}') == {"a": 1}
    yaml_body = b"a: 1\nwhen: 2021-05-03T11:31:53Z\n"
    assert decode_object("application/yaml", yaml_body) == {"a": 1, "when": "2021-05-03T11:31:53Z"}


@pytest.mark.parametrize(
    ("content_type", "body", "error"),
    [
        ("application/json", b"[1]", BadRequest),
        ("application/json", b"  ", BadRequest),
        ("application/yaml", b"- a", BadRequest),
        ("application/vnd.kubernetes.protobuf", b"k8s\x00", UnsupportedMediaType),
    ],
)
def test_undecodable_bodies(content_type: str, body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_object(content_type, body)


def test_decode_json_accepts_any_value() -> None:
    assert decode_json(b"[1, 2]", what="the patch") == [1, 2]
    with pytest.raises(BadRequest, match="the patch is not valid JSON"):
        decode_json(b"[1,", what="the patch")
