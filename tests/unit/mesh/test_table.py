"""The mesh table: which routes bind to the mesh and to the gateway's hosts, which
DestinationRule applies, who is told about changes, and that cached answers follow changes."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.mesh.table import MeshTable
from funcmesh.model.istio_destinations import (
    DestinationRuleSpec,
    GatewaySpec,
    parse_destination_rule,
    parse_gateway,
)
from funcmesh.model.istio_networking import VirtualServiceSpec, parse_virtual_service
from funcmesh.model.istio_security import parse_authorization_policy, parse_peer_authentication

NET = "networking.istio.io/v1"


def envelope(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    group = "security.istio.io/v1" if kind.endswith(("Policy", "Authentication")) else NET
    return {
        "apiVersion": group,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def vs(
    name: str,
    hosts: list[str],
    *,
    namespace: str = "shop",
    gateways: list[str] | None = None,
    destination: str = "reviews",
) -> VirtualServiceSpec:
    spec: dict[str, Any] = {
        "hosts": hosts,
        "http": [{"name": name, "route": [{"destination": {"host": destination}}]}],
    }
    if gateways is not None:
        spec["gateways"] = gateways
    return parse_virtual_service(envelope("VirtualService", name, namespace, spec))


def dr(name: str, host: str, *, namespace: str = "shop") -> DestinationRuleSpec:
    spec = {"host": host, "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}
    return parse_destination_rule(envelope("DestinationRule", name, namespace, spec))


def gw(
    name: str, hosts: list[str], *, namespace: str = "istio-system", tls: bool = False
) -> GatewaySpec:
    server: dict[str, Any] = {"port": {"number": 80, "protocol": "HTTP"}, "hosts": hosts}
    if tls:
        server = {
            "port": {"number": 443, "protocol": "HTTPS"},
            "hosts": hosts,
            "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"},
        }
    return parse_gateway(envelope("Gateway", name, namespace, {"servers": [server]}))


def names(routes: Any) -> list[str] | None:
    return None if routes is None else [route.name for route in routes.routes]


REVIEWS = "reviews.shop.svc.cluster.local"


@pytest.mark.parametrize(
    ("gateways", "on_mesh", "on_gateway"),
    [
        (None, True, False),
        ([], True, False),
        (["mesh"], True, False),
        (["istio-system/public"], False, True),
        (["mesh", "istio-system/public"], True, True),
        (["public"], False, False),  # "public" is shop/public, which does not exist
    ],
)
def test_mesh_and_gateway_binding(
    gateways: list[str] | None, on_mesh: bool, on_gateway: bool
) -> None:
    table = MeshTable()
    table.put_gateway(gw("public", ["*"]))
    table.put_virtual_service(vs("both", ["reviews", REVIEWS], gateways=gateways))
    assert (table.mesh_routes(REVIEWS) is not None) is on_mesh
    assert (table.gateway_routes(REVIEWS, tls=False) is not None) is on_gateway


def test_a_gateway_name_without_namespace_is_the_virtual_service_namespace() -> None:
    table = MeshTable()
    table.put_gateway(gw("public", ["shop.example.com"], namespace="shop"))
    table.put_virtual_service(vs("front", ["shop.example.com"], gateways=["public"]))
    assert names(table.gateway_routes("shop.example.com", tls=False)) == ["front"]
    assert table.mesh_routes("shop.example.com") is None


@pytest.mark.parametrize(
    ("server_host", "vs_namespace", "admitted"),
    [
        ("shop.example.com", "shop", True),
        ("shop.example.com", "other", True),
        ("*/shop.example.com", "other", True),
        ("shop/shop.example.com", "shop", True),
        ("shop/shop.example.com", "other", False),
        ("./shop.example.com", "istio-system", True),
        ("./shop.example.com", "shop", False),
        ("shop/*", "shop", True),
        ("shop/*.example.com", "other", False),
        ("*.example.com", "other", True),
        ("*.example.org", "shop", False),
    ],
)
def test_server_hosts_admit_virtual_services_by_namespace(
    server_host: str, vs_namespace: str, admitted: bool
) -> None:
    table = MeshTable()
    table.put_gateway(gw("public", [server_host]))
    table.put_virtual_service(
        vs("front", ["shop.example.com"], namespace=vs_namespace, gateways=["istio-system/public"])
    )
    found = table.gateway_routes("shop.example.com", tls=False)
    assert (found is not None) is admitted


@pytest.mark.parametrize(
    ("vs_hosts", "authority", "expected"),
    [
        (["shop.example.com"], "shop.example.com", True),
        (["shop.example.com"], "cart.example.com", False),
        (["*.example.com"], "cart.example.com", True),
        (["*.example.com"], "example.com", False),
        (["*"], "anything.test", True),
        (["Shop.Example.com"], "shop.example.com", True),
    ],
)
def test_virtual_service_hosts_must_name_the_authority(
    vs_hosts: list[str], authority: str, expected: bool
) -> None:
    table = MeshTable()
    table.put_gateway(gw("public", ["*"]))
    table.put_virtual_service(vs("front", vs_hosts, gateways=["istio-system/public"]))
    assert (table.gateway_routes(authority, tls=False) is not None) is expected


def test_tls_servers_bind_the_tls_listener_and_http_servers_the_plain_one() -> None:
    table = MeshTable()
    table.put_gateway(gw("secure", ["secure.example.com"], tls=True))
    table.put_gateway(gw("plain", ["plain.example.com"]))
    table.put_virtual_service(
        vs("secure", ["secure.example.com"], gateways=["istio-system/secure"])
    )
    table.put_virtual_service(vs("plain", ["plain.example.com"], gateways=["istio-system/plain"]))
    assert names(table.gateway_routes("secure.example.com", tls=True)) == ["secure"]
    assert table.gateway_routes("secure.example.com", tls=False) is None
    assert names(table.gateway_routes("plain.example.com", tls=False)) == ["plain"]
    assert table.gateway_routes("plain.example.com", tls=True) is None


def test_routes_of_several_virtual_services_for_one_host_are_ordered() -> None:
    table = MeshTable()
    table.put_virtual_service(vs("zeta", ["reviews"]))
    table.put_virtual_service(vs("alpha", ["reviews.shop.svc.cluster.local"]))
    table.put_virtual_service(vs("beta", ["reviews.shop.svc"], namespace="aaa"))
    table.put_virtual_service(vs("other", ["ratings"]))
    table.put_virtual_service(vs("wild", ["*.svc.cluster.local"], namespace="zzz"))
    assert names(table.mesh_routes(REVIEWS)) == ["beta", "alpha", "zeta", "wild"]
    assert names(table.mesh_routes("ratings.shop.svc.cluster.local")) == ["other", "wild"]
    assert names(table.mesh_routes("x.example.com")) is None


def test_mesh_routes_are_cached_until_a_change() -> None:
    table = MeshTable()
    table.put_virtual_service(vs("first", ["reviews"]))
    routes = table.mesh_routes(REVIEWS)
    assert routes is not None
    assert table.mesh_routes(REVIEWS) is routes
    assert table.mesh_routes("ratings.shop.svc.cluster.local") is None
    table.put_virtual_service(vs("second", ["reviews", "ratings"]))
    assert names(table.mesh_routes(REVIEWS)) == ["first", "second"]
    assert names(table.mesh_routes("ratings.shop.svc.cluster.local")) == ["second"]
    table.put_virtual_service(vs("second", ["ratings"]))
    assert names(table.mesh_routes(REVIEWS)) == ["first"]
    table.remove_virtual_service("shop", "first")
    assert table.mesh_routes(REVIEWS) is None


def test_gateway_routes_follow_gateway_changes() -> None:
    table = MeshTable()
    table.put_virtual_service(vs("front", ["shop.example.com"], gateways=["istio-system/public"]))
    assert table.gateway_routes("shop.example.com", tls=False) is None
    table.put_gateway(gw("public", ["shop.example.com"]))
    assert names(table.gateway_routes("shop.example.com", tls=False)) == ["front"]
    table.put_gateway(gw("public", ["other.example.com"]))
    assert table.gateway_routes("shop.example.com", tls=False) is None
    table.put_gateway(gw("public", ["*.example.com"]))
    assert names(table.gateway_routes("shop.example.com", tls=False)) == ["front"]
    table.remove_gateway("istio-system", "public")
    assert table.gateway_routes("shop.example.com", tls=False) is None


def test_has_gateways_tells_whether_any_gateway_is_stored() -> None:
    table = MeshTable()
    assert not table.has_gateways
    table.put_gateway(gw("public", ["*"]))
    assert table.has_gateways
    table.remove_gateway("istio-system", "public")
    assert not table.has_gateways


def test_the_gateway_cache_is_bounded() -> None:
    table = MeshTable()
    table.put_gateway(gw("public", ["*"]))
    table.put_virtual_service(vs("front", ["*"], gateways=["istio-system/public"]))
    for i in range(5000):
        assert table.gateway_routes(f"h{i}.test", tls=False) is not None
    assert len(table._gateway_cache) <= 4096


@pytest.mark.parametrize(
    ("rules", "client", "expected"),
    [
        ([("a", "reviews", "shop")], None, "a"),
        ([("a", "reviews.other.svc.cluster.local", "other")], None, None),
        ([("a", "reviews.shop.svc.cluster.local", "other")], None, "a"),
        # the client's namespace first, then the service's, then by (namespace, name)
        (
            [("s", "reviews", "shop"), ("c", REVIEWS, "client"), ("x", REVIEWS, "aaa")],
            "client",
            "c",
        ),
        ([("s", "reviews", "shop"), ("x", REVIEWS, "aaa")], "client", "s"),
        ([("z", REVIEWS, "zzz"), ("x", REVIEWS, "aaa")], "client", "x"),
        ([("b", "reviews", "shop"), ("a", "reviews", "shop")], None, "a"),
        # wildcard hosts apply; an exact host wins within one namespace
        ([("w", "*.shop.svc.cluster.local", "shop")], None, "w"),
        ([("w", "*.svc.cluster.local", "shop"), ("e", "reviews", "shop")], None, "e"),
        ([("w", "*", "client"), ("e", "reviews", "shop")], "client", "w"),
    ],
)
def test_destination_rule_precedence(
    rules: list[tuple[str, str, str]], client: str | None, expected: str | None
) -> None:
    table = MeshTable()
    for name, host, namespace in rules:
        table.put_destination_rule(dr(name, host, namespace=namespace))
    found = table.destination_rule(REVIEWS, client_namespace=client)
    assert (found.name if found else None) == expected


def test_destination_rules_follow_changes() -> None:
    table = MeshTable()
    assert table.destination_rule(REVIEWS) is None
    table.put_destination_rule(dr("reviews", "reviews"))
    found = table.destination_rule(REVIEWS)
    assert found is not None
    assert table.destination_rule(REVIEWS) is found
    table.put_destination_rule(dr("reviews", "ratings"))
    assert table.destination_rule(REVIEWS) is None
    assert table.destination_rule("ratings.shop.svc.cluster.local") is not None
    table.remove_destination_rule("shop", "reviews")
    assert table.destination_rule("ratings.shop.svc.cluster.local") is None


def test_service_rules_answer_for_a_service_and_follow_changes() -> None:
    table = MeshTable()
    nothing = table.service_rules("shop", "reviews")
    assert nothing == (REVIEWS, None, None)
    assert table.service_rules("shop", "reviews") is nothing  # cached
    table.put_virtual_service(vs("first", ["reviews"]))
    host, routes, rule = table.service_rules("shop", "reviews")
    assert host == REVIEWS
    assert names(routes) == ["first"]
    assert rule is None
    table.put_destination_rule(dr("reviews", "reviews"))
    assert table.service_rules("shop", "reviews").destination_rule is not None
    table.remove_virtual_service("shop", "first")
    table.remove_destination_rule("shop", "reviews")
    assert table.service_rules("shop", "reviews") == (REVIEWS, None, None)


def test_has_rules_and_hosts_with_rules() -> None:
    table = MeshTable()
    table.put_virtual_service(vs("reviews", ["reviews"]))
    table.put_virtual_service(vs("front", ["ratings"], gateways=["istio-system/public"]))
    table.put_virtual_service(vs("ext", ["api.example.com"]))
    table.put_destination_rule(dr("details", "details.other.svc"))
    assert table.has_rules("shop", "reviews")
    assert not table.has_rules("shop", "ratings")  # bound to a gateway only
    assert table.has_rules("other", "details")
    assert not table.has_rules("shop", "details")
    assert table.hosts_with_rules() == {("shop", "reviews"), ("other", "details")}
    table.put_destination_rule(dr("all-of-shop", "*.shop.svc.cluster.local"))
    assert table.has_rules("shop", "anything")
    table.remove_virtual_service("shop", "reviews")
    table.remove_destination_rule("shop", "all-of-shop")
    assert not table.has_rules("shop", "reviews")
    assert table.hosts_with_rules() == {("other", "details")}


def test_listeners_are_told_which_services_may_have_changed() -> None:
    table = MeshTable()
    told: list[set[tuple[str, str]]] = []
    unsubscribe = table.subscribe(told.append)
    table.put_virtual_service(vs("reviews", ["reviews", "api.example.com"]))
    table.put_virtual_service(vs("reviews", ["ratings"]))
    table.put_virtual_service(vs("reviews", ["ratings"]))  # the same again: no change
    table.put_destination_rule(dr("details", "details.other.svc"))
    table.put_virtual_service(vs("ext", ["api.example.com"]))  # names no Service
    table.put_virtual_service(vs("wild", ["*.shop.svc.cluster.local"]))
    table.put_gateway(gw("public", ["*"]))
    table.remove_destination_rule("shop", "details")
    table.remove_virtual_service("shop", "reviews")
    unsubscribe()
    table.put_virtual_service(vs("later", ["later"]))
    assert told == [
        {("shop", "reviews")},
        {("shop", "reviews"), ("shop", "ratings")},
        {("other", "details")},
        set(),  # a wildcard: possibly any Service
        {("other", "details")},
        {("shop", "ratings")},
    ]


def test_a_broken_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    table = MeshTable()
    told: list[set[tuple[str, str]]] = []

    def broken(_: set[tuple[str, str]]) -> None:
        raise RuntimeError("boom")

    table.subscribe(broken)
    table.subscribe(told.append)
    table.put_virtual_service(vs("reviews", ["reviews"]))
    assert told == [{("shop", "reviews")}]
    assert "listener failed" in caplog.text


def test_unknown_destinations() -> None:
    table = MeshTable()
    spec = parse_virtual_service(
        envelope(
            "VirtualService",
            "reviews",
            "shop",
            {
                "hosts": ["reviews"],
                "http": [
                    {
                        "route": [
                            {"destination": {"host": "reviews"}, "weight": 50},
                            {"destination": {"host": "gone"}, "weight": 25},
                            {"destination": {"host": "api.example.com"}, "weight": 25},
                        ],
                        "mirror": {"host": "shadow.other.svc"},
                    }
                ],
            },
        )
    )
    table.put_virtual_service(spec)
    existing = {("shop", "reviews")}
    found = table.unknown_destinations("shop", "reviews", lambda ns, n: (ns, n) in existing)
    assert found == ["gone.shop.svc.cluster.local", "shadow.other.svc.cluster.local"]
    assert table.unknown_destinations("shop", "missing", lambda ns, n: False) == []


def test_listings_and_security_policies() -> None:
    table = MeshTable()
    table.put_virtual_service(vs("reviews", ["reviews"]))
    table.put_destination_rule(dr("reviews", "reviews"))
    table.put_gateway(gw("public", ["*"]))
    allow = parse_authorization_policy(
        envelope("AuthorizationPolicy", "allow", "shop", {"action": "ALLOW"})
    )
    strict = parse_peer_authentication(
        envelope("PeerAuthentication", "strict", "shop", {"mtls": {"mode": "STRICT"}})
    )
    table.put_authorization_policy(allow)
    table.put_peer_authentication(strict)
    assert [v.name for v in table.virtual_services()] == ["reviews"]
    assert [d.name for d in table.destination_rules()] == ["reviews"]
    assert [g.name for g in table.gateways()] == ["public"]
    assert table.authorization_policies("shop") == [allow]
    assert table.authorization_policies("other") == []
    assert table.peer_authentications("shop") == [strict]
    table.remove_authorization_policy("shop", "allow")
    table.remove_peer_authentication("shop", "strict")
    assert table.authorization_policies("shop") == []
    assert table.peer_authentications("shop") == []


def test_peer_authentication_changes_are_told_to_subscribers_as_any_service() -> None:
    table = MeshTable()
    told: list[set[tuple[str, str]]] = []
    table.subscribe(told.append)
    strict = parse_peer_authentication(
        envelope("PeerAuthentication", "strict", "shop", {"mtls": {"mode": "STRICT"}})
    )
    table.put_peer_authentication(strict)
    table.put_peer_authentication(strict)  # unchanged: nothing to tell
    table.remove_peer_authentication("shop", "strict")
    table.remove_peer_authentication("shop", "strict")
    assert told == [set(), set()]


def test_whether_any_authorization_policy_is_stored() -> None:
    table = MeshTable()
    assert not table.has_authorization_policies
    allow = parse_authorization_policy(
        envelope("AuthorizationPolicy", "allow", "shop", {"action": "ALLOW"})
    )
    table.put_authorization_policy(allow)
    assert table.has_authorization_policies
    table.remove_authorization_policy("shop", "allow")
    assert not table.has_authorization_policies
