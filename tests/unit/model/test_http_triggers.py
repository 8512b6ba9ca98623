"""HTTPTrigger parsing: Kubeless's fields, defaults and the errors for bad ones."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.http_triggers import normalise_host, parse_http_trigger


def trigger(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "HTTPTrigger",
        "metadata": {"name": "t"},
        "spec": spec,
    }


def test_kubeless_fields_parse() -> None:
    parsed = parse_http_trigger(
        trigger(**{
            "function-name": "f", "host-name": "Test.Domain", "path": "echo",
            "basic-auth-secret": "auth", "tls-secret": "tls", "cors-enable": True,
            "gateway": "nginx",
        })
    )  # fmt: skip
    assert parsed.namespace == "default"
    assert (parsed.function_name, parsed.host, parsed.path) == ("f", "test.domain", "/echo")
    assert (parsed.basic_auth_secret, parsed.tls_secret, parsed.cors_enable) == (
        "auth",
        "tls",
        True,
    )


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        ({}, "spec.function-name: function-name is required"),
        ({"function-name": "F_x"}, "spec.function-name"),
        ({"function-name": "f", "host-name": "bad host"}, "spec.host-name"),
        ({"function-name": "f", "path": "a?b"}, "spec.path"),
        ({"function-name": "f", "cors-enable": "yes"}, "spec.cors-enable"),
        ({"function-name": "f", "tls-secret": 3}, "spec.tls-secret: tls-secret must be a string"),
    ],
)
def test_bad_fields_are_named(spec: dict[str, Any], cause: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_http_trigger(trigger(**spec))
    assert cause in str(caught.value)


@pytest.mark.parametrize(
    ("host", "expected"),
    [("A.test", "a.test"), ("a.test:8080", "a.test"), ("[::1]:80", "[::1]"), (" x ", "x")],
)
def test_hosts_are_matched_lower_case_without_port(host: str, expected: str) -> None:
    assert normalise_host(host) == expected
