"""Secret admission: stringData merged into data, types and their required keys, and error
messages that name keys but never values."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.secrets import admit_secret, secret_value


def secret(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, **fields}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_string_data_is_merged_over_data_and_dropped() -> None:
    admitted = admit_secret(
        secret(data={"a": b64("1"), "b": b64("2")}, stringData={"b": "two", "c": "3"})
    )
    assert admitted["data"] == {"a": b64("1"), "b": b64("two"), "c": b64("3")}
    assert "stringData" not in admitted
    assert admitted["type"] == "Opaque"
    assert secret_value(admitted, "b") == b"two"
    assert secret_value(admitted, "missing") is None


@pytest.mark.parametrize(
    ("fields", "cause"),
    [
        ({"data": {"k": "not base64!"}}, "data[k]: the value must be base64-encoded"),
        ({"data": {"bad key": b64("x")}}, "data[bad key]"),
        ({"stringData": {"k": 1}}, "stringData[k]: the value must be a string"),
        ({"type": "kubernetes.io/tls", "stringData": {"tls.crt": "c"}}, "data[tls.key]"),
        ({"type": "kubernetes.io/basic-auth"}, "needs username or password"),
        ({"data": ["x"]}, "data must be an object"),
    ],
)
def test_invalid_secrets_are_refused(fields: dict[str, Any], cause: str) -> None:
    with pytest.raises(Invalid, match='Secret "s" is invalid') as caught:
        admit_secret(secret(**fields))
    assert cause in str(caught.value)


def test_an_invalid_value_is_not_echoed() -> None:
    with pytest.raises(Invalid) as caught:
        admit_secret(secret(data={"password": "hunter2 is secret"}))
    assert "hunter2" not in str(caught.value)
