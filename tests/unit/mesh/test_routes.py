"""VirtualService routes: every match kind on raw request parts, route order, rewrites, weights
and the defaults Istio gives (retries, timeout, mirror percentage)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from funcmesh.mesh.routes import (
    DEFAULT_RETRIES,
    CompiledRoute,
    HostRoutes,
    compile_virtual_service,
)
from funcmesh.model.istio_networking import Retries, parse_virtual_service

HOST = "reviews.shop.svc.cluster.local"
Headers = list[tuple[bytes, bytes]]


def vs_object(*http: dict[str, Any], name: str = "reviews", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": list(http), **spec},
    }


def to(subset: str, weight: int | None = None, host: str = "reviews") -> dict[str, Any]:
    entry: dict[str, Any] = {"destination": {"host": host, "subset": subset}}
    return entry if weight is None else {**entry, "weight": weight}


def routes_of(*http: dict[str, Any], name: str = "reviews") -> list[CompiledRoute]:
    return compile_virtual_service(parse_virtual_service(vs_object(*http, name=name)))[HOST]


def host_routes(*http: dict[str, Any]) -> HostRoutes:
    return HostRoutes(routes_of(*http))


def chosen(
    routes: HostRoutes,
    target: bytes = b"/",
    *,
    method: bytes = b"GET",
    headers: Headers | None = None,
    port: int = 80,
) -> str | None:
    """The name of the route a request takes, or None."""
    selected = routes.select(method, target, headers or [], port)
    return None if selected is None else selected.route.name


MATCHES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("uri exact", {"uri": {"exact": "/api"}}, {"target": b"/api"}, True),
    ("uri exact, query ignored", {"uri": {"exact": "/api"}}, {"target": b"/api?x=1"}, True),
    ("uri exact, longer path", {"uri": {"exact": "/api"}}, {"target": b"/api/x"}, False),
    ("uri prefix", {"uri": {"prefix": "/api"}}, {"target": b"/api/v1"}, True),
    ("uri prefix, not segments", {"uri": {"prefix": "/api"}}, {"target": b"/apix"}, True),
    ("uri prefix, other", {"uri": {"prefix": "/api"}}, {"target": b"/web"}, False),
    ("uri regex", {"uri": {"regex": "/v[0-9]+/.*"}}, {"target": b"/v2/items"}, True),
    ("uri regex is full", {"uri": {"regex": "/v[0-9]+"}}, {"target": b"/v2/items"}, False),
    ("uri regex, query", {"uri": {"regex": "/v[0-9]+"}}, {"target": b"/v2?x=1"}, True),
    ("uri regex, text flag", {"uri": {"regex": "(?u)/\\w+"}}, {"target": b"/caf\xc3\xa9"}, True),
    ("uri regex, non-ASCII", {"uri": {"regex": "/café"}}, {"target": b"/caf\xc3\xa9"}, True),
    ("method exact", {"method": {"exact": "POST"}}, {"method": b"POST"}, True),
    ("method other", {"method": {"exact": "POST"}}, {"method": b"GET"}, False),
    ("method case", {"method": {"exact": "POST"}}, {"method": b"post"}, False),
    ("method regex", {"method": {"regex": "PUT|POST"}}, {"method": b"PUT"}, True),
    (
        "header exact",
        {"headers": {"end-user": {"exact": "jason"}}},
        {"headers": [(b"end-user", b"jason")]},
        True,
    ),
    (
        "header name case",
        {"headers": {"End-User": {"exact": "jason"}}},
        {"headers": [(b"END-USER", b"jason")]},
        True,
    ),
    (
        "header value case",
        {"headers": {"end-user": {"exact": "jason"}}},
        {"headers": [(b"end-user", b"Jason")]},
        False,
    ),
    ("header absent", {"headers": {"end-user": {"exact": "jason"}}}, {}, False),
    (
        "header absent, regex .*",
        {"headers": {"end-user": {"regex": ".*"}}},
        {"headers": [(b"other", b"x")]},
        False,
    ),
    (
        "header prefix",
        {"headers": {"x-version": {"prefix": "v2"}}},
        {"headers": [(b"x-version", b"v2.1")]},
        True,
    ),
    (
        "header regex full",
        {"headers": {"x-version": {"regex": "v2"}}},
        {"headers": [(b"x-version", b"v2.1")]},
        False,
    ),
    (
        "header repeated, joined",
        {"headers": {"x-tag": {"exact": "a,b"}}},
        {"headers": [(b"x-tag", b"a"), (b"X-Tag", b"b")]},
        True,
    ),
    (
        "two headers, both hold",
        {"headers": {"a": {"exact": "1"}, "b": {"exact": "2"}}},
        {"headers": [(b"b", b"2"), (b"a", b"1")]},
        True,
    ),
    (
        "two headers, one holds",
        {"headers": {"a": {"exact": "1"}, "b": {"exact": "2"}}},
        {"headers": [(b"a", b"1")]},
        False,
    ),
    ("query exact", {"queryParams": {"v": {"exact": "2"}}}, {"target": b"/x?a=1&v=2"}, True),
    ("query absent", {"queryParams": {"v": {"exact": "2"}}}, {"target": b"/x?a=2"}, False),
    ("query no query", {"queryParams": {"v": {"exact": "2"}}}, {"target": b"/x"}, False),
    ("query first wins", {"queryParams": {"v": {"exact": "2"}}}, {"target": b"/?v=1&v=2"}, False),
    (
        "query decoded",
        {"queryParams": {"q": {"exact": "a b/c"}}},
        {"target": b"/?q=a%20b%2Fc"},
        True,
    ),
    ("query no value", {"queryParams": {"debug": {"exact": ""}}}, {"target": b"/?debug"}, True),
    ("query prefix", {"queryParams": {"v": {"prefix": "2"}}}, {"target": b"/?v=2.5"}, True),
    ("query regex", {"queryParams": {"id": {"regex": "[0-9]+"}}}, {"target": b"/?id=42"}, True),
    (
        "query regex full",
        {"queryParams": {"id": {"regex": "[0-9]+"}}},
        {"target": b"/?id=4a"},
        False,
    ),
    ("port", {"port": 8080}, {"port": 8080}, True),
    ("port other", {"port": 8080}, {"port": 80}, False),
    ("port unknown", {"port": 8080}, {"port": 0}, False),
    (
        "all conditions",
        {"uri": {"prefix": "/api"}, "method": {"exact": "GET"}, "headers": {"a": {"exact": "1"}}},
        {"target": b"/api/x", "headers": [(b"a", b"1")]},
        True,
    ),
    (
        "all conditions, one fails",
        {"uri": {"prefix": "/api"}, "method": {"exact": "GET"}, "headers": {"a": {"exact": "1"}}},
        {"target": b"/api/x", "method": b"POST", "headers": [(b"a", b"1")]},
        False,
    ),
]


@pytest.mark.parametrize(
    ("match", "request_parts", "expected"),
    [pytest.param(m, r, e, id=case) for case, m, r, e in MATCHES],
)
def test_a_match_holds_or_not(
    match: dict[str, Any], request_parts: dict[str, Any], expected: bool
) -> None:
    routes = host_routes({"name": "matched", "match": [match], "route": [to("v1")]})
    assert (chosen(routes, **request_parts) == "matched") is expected


def test_any_match_block_of_a_route_selects_it() -> None:
    routes = host_routes(
        {
            "name": "either",
            "match": [{"uri": {"prefix": "/a"}}, {"headers": {"x": {"exact": "1"}}}],
            "route": [to("v1")],
        }
    )
    assert chosen(routes, b"/a/1") == "either"
    assert chosen(routes, b"/b", headers=[(b"x", b"1")]) == "either"
    assert chosen(routes, b"/b") is None


def test_the_first_route_that_matches_wins_and_a_route_without_match_takes_the_rest() -> None:
    jason = {"headers": {"end-user": {"exact": "jason"}}}
    routes = host_routes(
        {"name": "jason", "match": [jason], "route": [to("v2")]},
        {"name": "api", "match": [{"uri": {"prefix": "/api"}}], "route": [to("v3")]},
        {"name": "default", "route": [to("v1")]},
        {"name": "never", "match": [{"uri": {"prefix": "/"}}], "route": [to("v4")]},
    )
    assert chosen(routes, b"/api", headers=[(b"end-user", b"jason")]) == "jason"
    assert chosen(routes, b"/api") == "api"
    assert chosen(routes, b"/other") == "default"


def test_routes_of_several_virtual_services_are_ordered_by_namespace_and_name() -> None:
    later = routes_of({"name": "b-route", "route": [to("v1")]}, name="b")
    earlier = routes_of(
        {"name": "a-api", "match": [{"uri": {"prefix": "/api"}}], "route": [to("v1")]},
        {"name": "a-web", "match": [{"uri": {"prefix": "/web"}}], "route": [to("v1")]},
        name="a",
    )
    routes = HostRoutes([*later, *earlier])
    assert [r.name for r in routes.routes] == ["a-api", "a-web", "b-route"]
    assert chosen(routes, b"/web") == "a-web"
    assert chosen(routes, b"/other") == "b-route"


REWRITES = [
    ("prefix", {"prefix": "/api"}, "/v2", b"/api/items?x=1", b"/v2/items?x=1"),
    ("prefix, whole path", {"prefix": "/api"}, "/v2", b"/api", b"/v2"),
    ("prefix to root", {"prefix": "/api/"}, "/", b"/api/items", b"/items"),
    ("exact", {"exact": "/old"}, "/new", b"/old?x=1&y=2", b"/new?x=1&y=2"),
    ("regex", {"regex": "/old/.*"}, "/new", b"/old/a/b?q", b"/new?q"),
    ("no uri match", None, "/new", b"/anything/here?k=v", b"/new?k=v"),
]


@pytest.mark.parametrize(
    ("uri", "rewrite", "original", "expected"),
    [pytest.param(u, w, o, e, id=case) for case, u, w, o, e in REWRITES],
)
def test_rewrite_uri(
    uri: dict[str, str] | None, rewrite: str, original: bytes, expected: bytes
) -> None:
    match = [{"uri": uri}] if uri else [{"method": {"exact": "GET"}}]
    routes = host_routes({"match": match, "rewrite": {"uri": rewrite}, "route": [to("v1")]})
    selected = routes.select(b"GET", original, [], 80)
    assert selected is not None
    assert selected.target(original) == expected


def test_without_rewrite_the_target_is_the_original_object() -> None:
    original = b"/api/items?x=1"
    selected = host_routes({"route": [to("v1")]}).select(b"GET", original, [], 80)
    assert selected is not None
    assert selected.target(original) is original


def test_a_90_10_split_lands_within_half_a_percent() -> None:
    (route,) = routes_of({"route": [to("v1", 90), to("v2", 10)]})
    draws = random.Random(5)
    picked = [route.pick(draws.random()).subset for _ in range(100_000)]
    assert abs(picked.count("v2") / len(picked) - 0.10) < 0.005


@pytest.mark.parametrize(
    ("draw", "expected"),
    [(0.0, "v1"), (0.8999, "v1"), (0.9, "v2"), (0.9999999, "v2")],
)
def test_pick_by_cumulative_weights(draw: float, expected: str) -> None:
    (route,) = routes_of({"route": [to("v1", 90), to("v2", 10)]})
    assert route.pick(draw).subset == expected


def test_a_zero_weight_destination_is_never_picked() -> None:
    (route,) = routes_of({"route": [to("v1", 0), to("v2", 100)]})
    assert {route.pick(draw / 100).subset for draw in range(100)} == {"v2"}


def test_a_lone_destination_is_always_picked() -> None:
    (route,) = routes_of({"route": [to("v1")]})
    assert route.destinations[0].weight == 100
    assert {route.pick(draw / 10).subset for draw in range(10)} == {"v1"}


def test_destinations_are_qualified_with_the_virtual_service_namespace() -> None:
    (route,) = routes_of(
        {
            "route": [
                to("v1", 50),
                {
                    "destination": {"host": "ratings.other.svc", "port": {"number": 9080}},
                    "weight": 30,
                },
                {"destination": {"host": "api.example.com"}, "weight": 20},
            ],
            "mirror": {"host": "reviews", "subset": "shadow"},
        }
    )
    assert [(d.host, d.service, d.port) for d in route.destinations] == [
        ("reviews.shop.svc.cluster.local", ("shop", "reviews"), None),
        ("ratings.other.svc.cluster.local", ("other", "ratings"), 9080),
        ("api.example.com", None, None),
    ]
    assert route.mirror is not None
    assert (route.mirror.host, route.mirror.subset, route.mirror.weight) == (HOST, "shadow", 100)
    assert route.virtual_service == ("shop", "reviews")


def test_an_undefined_subset_is_still_compiled() -> None:
    (route,) = routes_of({"route": [to("no-such-subset")]})
    assert route.pick(0.5).subset == "no-such-subset"


@pytest.mark.parametrize(
    ("retries", "expected"),
    [
        (None, DEFAULT_RETRIES),
        ({"attempts": 0}, None),
        (
            {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"},
            Retries(attempts=3, per_try_timeout_s=2.0, retry_on=("5xx", "reset")),
        ),
        (
            {"attempts": 4},
            Retries(attempts=4, per_try_timeout_s=None, retry_on=("connect-failure", "reset")),
        ),
    ],
)
def test_retries(retries: dict[str, Any] | None, expected: Retries | None) -> None:
    extra = {} if retries is None else {"retries": retries}
    (route,) = routes_of({"route": [to("v1")], **extra})
    assert route.retries == expected


def test_the_default_retries_are_two_attempts_on_connection_failures() -> None:
    expected = Retries(attempts=2, per_try_timeout_s=None, retry_on=("connect-failure", "reset"))
    assert expected == DEFAULT_RETRIES


@pytest.mark.parametrize(("timeout", "expected"), [(None, None), ("0s", None), ("1.5s", 1.5)])
def test_timeout(timeout: str | None, expected: float | None) -> None:
    extra = {} if timeout is None else {"timeout": timeout}
    (route,) = routes_of({"route": [to("v1")], **extra})
    assert route.timeout_s == expected


@pytest.mark.parametrize(
    ("extra", "mirrored", "percent"),
    [
        ({}, False, 0.0),
        ({"mirror": {"host": "reviews"}}, True, 100.0),
        ({"mirror": {"host": "reviews"}, "mirrorPercentage": {"value": 5}}, True, 5.0),
    ],
)
def test_mirror_percent(extra: dict[str, Any], mirrored: bool, percent: float) -> None:
    (route,) = routes_of({"route": [to("v1")], **extra})
    assert (route.mirror is not None) is mirrored
    assert route.mirror_percent == percent


def test_every_host_of_a_virtual_service_gets_its_routes() -> None:
    obj = vs_object({"route": [to("v1")]}, hosts=["reviews", "reviews.example.com", "*.test"])
    compiled = compile_virtual_service(parse_virtual_service(obj))
    assert sorted(compiled) == ["*.test", "reviews.example.com", HOST]
    assert {len(routes) for routes in compiled.values()} == {1}


def test_fault_rewrite_authority_and_header_operations_are_carried() -> None:
    (route,) = routes_of(
        {
            "route": [to("v1")],
            "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 10}}},
            "rewrite": {"authority": "ratings"},
            "headers": {"request": {"set": {"X-A": "1"}}, "response": {"remove": ["x-b"]}},
        }
    )
    assert route.fault is not None
    assert (route.fault.abort_status, route.fault.abort_percent) == (503, 10.0)
    assert route.rewrite_authority == "ratings"
    assert route.request_headers.operations.set == (("x-a", "1"),)
    assert route.response_headers.operations.remove == ("x-b",)


def test_header_operations_remove_then_set_every_value_then_add() -> None:
    (route,) = routes_of(
        {
            "route": [to("v1")],
            "headers": {
                "request": {
                    "remove": ["X-Gone"],
                    "set": {"x-set": "new"},
                    "add": {"x-added": "a"},
                }
            },
        }
    )
    headers = [
        (b"Host", b"web"),
        (b"x-gone", b"1"),
        (b"X-Set", b"old-1"),
        (b"x-added", b"kept"),
        (b"x-set", b"old-2"),
    ]
    assert route.request_headers.apply(headers) == [
        (b"Host", b"web"),
        (b"x-added", b"kept"),
        (b"x-set", b"new"),
        (b"x-added", b"a"),
    ]
    assert route.request_headers.active
    assert not route.response_headers.active
    assert route.response_headers.apply(headers) == headers
