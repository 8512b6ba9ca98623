"""The HTTPTrigger route table: host matching, longest path prefix, whole segments, and the
routes built from triggers and their basic-auth Secrets."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from funcmesh.discovery.routes import HttpRoute, RouteTable, build_route
from funcmesh.model.http_triggers import parse_http_trigger


def route(name: str, host: str = "", path: str = "/") -> HttpRoute:
    return HttpRoute(
        namespace="default", trigger=name, function=name, host=host, path=path,
        cors_enable=False, realm=f"default/{name}",
    )  # fmt: skip


TABLE = [
    route("root-any"),
    route("api-any", path="/api"),
    route("shop-root", host="shop.test"),
    route("shop-api", host="shop.test", path="/api"),
    route("shop-api-v2", host="shop.test", path="/api/v2"),
    route("shop-slash", host="shop.test", path="/files/"),
]


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("shop.test", "/", "shop-root"),
        ("SHOP.test:8080", "/api", "shop-api"),
        ("shop.test", "/api/x", "shop-api"),
        ("shop.test", "/api/v2/x", "shop-api-v2"),
        ("shop.test", "/api/v20", "shop-api"),  # whole segments only
        ("shop.test", "/apix", "shop-root"),
        ("shop.test", "/files/a", "shop-slash"),
        ("other.test", "/api/x", "api-any"),
        ("other.test", "/apix", "root-any"),
        ("", "/anything", "root-any"),
    ],
)
def test_match_prefers_the_host_then_the_longest_prefix(
    host: str, path: str, expected: str
) -> None:
    table = RouteTable()
    table.replace(TABLE)
    found = table.match(host, path)
    assert found is not None
    assert found.trigger == expected


def test_an_empty_table_matches_nothing_and_is_false() -> None:
    table = RouteTable()
    assert not table
    assert table.match("shop.test", "/") is None
    table.replace([route("only", host="shop.test", path="/api")])
    assert table
    assert table.match("shop.test", "/other") is None
    assert table.match("other.test", "/api") is None


def trigger(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "HTTPTrigger",
        "metadata": {"name": "t", "namespace": "ns"},
        "spec": {"function-name": "f", **spec},
    }


def secret(auth: bytes | None) -> dict[str, Any]:
    data = {} if auth is None else {"auth": base64.b64encode(auth).decode()}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": data}


def test_build_route_normalises_host_and_path() -> None:
    built = build_route(parse_http_trigger(trigger(**{"host-name": "A.Test", "path": "x"})), {})
    assert (built.host, built.path, built.realm) == ("a.test", "/x", "ns/t")
    assert built.auth is None
    assert not built.auth_problem


@pytest.mark.parametrize(
    ("secrets", "problem"),
    [
        ({}, "does not exist"),
        ({("ns", "s"): secret(None)}, 'has no key "auth"'),
        ({("ns", "s"): secret(b"user:plain\n")}, "not an htpasswd file"),
    ],
)
def test_an_unusable_basic_auth_secret_is_a_problem(
    secrets: dict[tuple[str, str], Any], problem: str
) -> None:
    built = build_route(parse_http_trigger(trigger(**{"basic-auth-secret": "s"})), secrets)
    assert built.auth is None
    assert problem in built.auth_problem


def test_basic_auth_users_come_from_the_secret() -> None:
    sha_bar = b"{SHA}Ys23Ag/5IOWqZCw9QGaVDdHwH00="
    secrets = {("ns", "s"): secret(b"foo:" + sha_bar + b"\n")}
    built = build_route(parse_http_trigger(trigger(**{"basic-auth-secret": "s"})), secrets)
    assert built.auth is not None
    assert built.auth.verify("foo", "bar")
