"""Istio's access decisions from the examples of its documentation: AuthorizationPolicy scope
and order (allow-nothing, allow-all, deny-all, root namespace, selectors), sources, operations
and ``when`` conditions, the caller without a certificate, the request facts as Istio
normalizes them, and PeerAuthentication's precedence and port-level modes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from funcmesh.mesh.authz import (
    ROOT_NAMESPACE,
    Authorizer,
    Decision,
    Peer,
    RequestFacts,
    namespace_of_principal,
    normalize_path,
)
from funcmesh.mesh.authz_rules import path_template
from funcmesh.mesh.table import MeshTable
from funcmesh.model.istio_security import (
    AuthorizationPolicySpec,
    PeerAuthenticationSpec,
    parse_authorization_policy,
    parse_peer_authentication,
)

SLEEP = "cluster.local/ns/default/sa/sleep"
TESTER = "cluster.local/ns/test/sa/tester"
PROD = "cluster.local/ns/prod-eu/sa/shop"
HTTPBIN = {"app": "httpbin", "version": "v1"}


def envelope(kind: str, name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def ap(name: str, namespace: str = "foo", **spec: Any) -> AuthorizationPolicySpec:
    return parse_authorization_policy(envelope("AuthorizationPolicy", name, namespace, spec))


def pa(name: str, namespace: str = "foo", **spec: Any) -> PeerAuthenticationSpec:
    return parse_peer_authentication(envelope("PeerAuthentication", name, namespace, spec))


def peer(principal: str = "", ip: str = "10.1.2.3") -> Peer:
    return Peer.of(principal, ip)


def req(
    target: str = "/",
    method: str = "GET",
    *,
    port: int = 8000,
    headers: Sequence[tuple[str, str]] = (),
) -> RequestFacts:
    raw = [(name.encode(), value.encode()) for name, value in headers]
    facts = RequestFacts.parse(method.encode(), target.encode(), raw, port=port)
    assert facts is not None
    return facts


def decide(
    policies: list[AuthorizationPolicySpec],
    *,
    peer: Peer,
    request: RequestFacts,
    namespace: str = "foo",
    labels: Mapping[str, str] = HTTPBIN,
) -> Decision:
    authorizer = Authorizer.of(policies)
    return authorizer.decide(namespace=namespace, labels=labels, peer=peer, request=request)


ALLOW_NOTHING = ap("allow-nothing")  # spec: {}
ALLOW_ALL = ap("allow-all", rules=[{}])
DENY_ALL = ap("deny-all", action="DENY", rules=[{}])

# (policies, namespace, labels, allowed, deciding policy)
SCOPE_CASES = {
    "no policy allows": ([], "foo", HTTPBIN, True, None),
    "allow-nothing denies": ([ALLOW_NOTHING], "foo", HTTPBIN, False, None),
    "allow-nothing of another namespace": ([ALLOW_NOTHING], "bar", HTTPBIN, True, None),
    "allow-all allows": ([ALLOW_ALL], "foo", HTTPBIN, True, "foo.allow-all"),
    "deny-all denies": ([DENY_ALL], "foo", HTTPBIN, False, "foo.deny-all"),
    "DENY without rules denies nothing": (
        [ap("deny-nothing", action="DENY")],
        "foo",
        HTTPBIN,
        True,
        None,
    ),
    "DENY before ALLOW": ([ALLOW_ALL, DENY_ALL], "foo", HTTPBIN, False, "foo.deny-all"),
    "root namespace policy, every namespace": (
        [ap("deny-all", ROOT_NAMESPACE, action="DENY", rules=[{}])],
        "bar",
        {},
        False,
        "istio-system.deny-all",
    ),
    "root namespace selector picks version v1 anywhere": (
        [ap("v1-nothing", ROOT_NAMESPACE, selector={"matchLabels": {"version": "v1"}})],
        "bar",
        HTTPBIN,
        False,
        None,
    ),
    "root namespace selector skips version v2": (
        [ap("v1-nothing", ROOT_NAMESPACE, selector={"matchLabels": {"version": "v1"}})],
        "bar",
        {"app": "httpbin", "version": "v2"},
        True,
        None,
    ),
    "selector holds": (
        [ap("httpbin-nothing", selector={"matchLabels": {"app": "httpbin"}})],
        "foo",
        HTTPBIN,
        False,
        None,
    ),
    "selector does not hold": (
        [ap("httpbin-nothing", selector={"matchLabels": {"app": "httpbin"}})],
        "foo",
        {"app": "other"},
        True,
        None,
    ),
    "selector of another namespace": (
        [ap("httpbin-nothing", "bar", selector={"matchLabels": {"app": "httpbin"}})],
        "foo",
        HTTPBIN,
        True,
        None,
    ),
}


@pytest.mark.parametrize(
    ("policies", "namespace", "labels", "allowed", "policy"),
    list(SCOPE_CASES.values()),
    ids=list(SCOPE_CASES),
)
def test_scope_and_order(
    policies: list[AuthorizationPolicySpec],
    namespace: str,
    labels: dict[str, str],
    allowed: bool,
    policy: str | None,
) -> None:
    decision = decide(
        policies, namespace=namespace, labels=labels, peer=peer(SLEEP), request=req("/x")
    )
    assert (decision.allowed, decision.policy) == (allowed, policy)


# Istio's reference example: principal sleep or namespace test; GET /info* or POST /data
HTTPBIN_POLICY = ap(
    "httpbin",
    action="ALLOW",
    rules=[
        {
            "from": [
                {"source": {"principals": [SLEEP]}},
                {"source": {"namespaces": ["test"]}},
            ],
            "to": [
                {"operation": {"methods": ["GET"], "paths": ["/info*"]}},
                {"operation": {"methods": ["POST"], "paths": ["/data"]}},
            ],
        }
    ],
)


def rule_policy(action: str = "ALLOW", **rule: Any) -> AuthorizationPolicySpec:
    return ap("policy", action=action, rules=[rule])


def source(**fields: Any) -> dict[str, Any]:
    return {"from": [{"source": fields}]}


def operation(**fields: Any) -> dict[str, Any]:
    return {"to": [{"operation": fields}]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None) -> Any:
    condition: dict[str, Any] = {"key": key}
    if values is not None:
        condition["values"] = values
    if not_values is not None:
        condition["notValues"] = not_values
    return {"when": [condition]}


# (policy, peer, request, allowed)
RULE_CASES = {
    # Istio's reference example
    "example: sleep GETs /info/x": (HTTPBIN_POLICY, peer(SLEEP), req("/info/x"), True),
    "example: namespace test POSTs /data": (
        HTTPBIN_POLICY,
        peer(TESTER),
        req("/data", "POST"),
        True,
    ),
    "example: sleep POSTs /info": (HTTPBIN_POLICY, peer(SLEEP), req("/info", "POST"), False),
    "example: another caller": (HTTPBIN_POLICY, peer(PROD), req("/info"), False),
    "example: no certificate": (HTTPBIN_POLICY, peer(), req("/info"), False),
    # sources
    'principals ["*"]: any authenticated': (
        rule_policy(**source(principals=["*"])),
        peer(PROD),
        req(),
        True,
    ),
    'principals ["*"]: not the caller without certificate': (
        rule_policy(**source(principals=["*"])),
        peer(),
        req(),
        False,
    ),
    'DENY notPrincipals ["*"]: the caller without certificate': (
        rule_policy("DENY", **source(notPrincipals=["*"])),
        peer(),
        req(),
        False,
    ),
    'DENY notPrincipals ["*"]: not an authenticated caller': (
        rule_policy("DENY", **source(notPrincipals=["*"])),
        peer(SLEEP),
        req(),
        True,
    ),
    "principal suffix": (
        rule_policy(**source(principals=["*/sa/sleep"])),
        peer(SLEEP),
        req(),
        True,
    ),
    "principal prefix": (
        rule_policy(**source(principals=["cluster.local/ns/test/*"])),
        peer(SLEEP),
        req(),
        False,
    ),
    "namespace prefix": (rule_policy(**source(namespaces=["prod-*"])), peer(PROD), req(), True),
    "namespace of a caller without certificate is unknown": (
        rule_policy(**source(namespaces=["*"])),
        peer(),
        req(),
        False,
    ),
    "notNamespaces": (
        rule_policy(**source(notNamespaces=["prod-*"])),
        peer(PROD),
        req(),
        False,
    ),
    "a namespace that does not exist matches nothing (ALLOW)": (
        rule_policy(**source(namespaces=["ghost"])),
        peer(SLEEP),
        req(),
        False,
    ),
    "a namespace that does not exist matches nothing (DENY)": (
        rule_policy("DENY", **source(namespaces=["ghost"])),
        peer(SLEEP),
        req(),
        True,
    ),
    "ipBlocks: in a CIDR block": (
        rule_policy(**source(ipBlocks=["10.1.0.0/16", "192.168.0.4"])),
        peer(ip="10.1.200.7"),
        req(),
        True,
    ),
    "ipBlocks: a single address": (
        rule_policy(**source(ipBlocks=["10.1.0.0/16", "192.168.0.4"])),
        peer(ip="192.168.0.4"),
        req(),
        True,
    ),
    "ipBlocks: outside": (
        rule_policy(**source(ipBlocks=["10.1.0.0/16", "192.168.0.4"])),
        peer(ip="192.168.0.5"),
        req(),
        False,
    ),
    "ipBlocks: an IPv4-mapped IPv6 address": (
        rule_policy(**source(ipBlocks=["10.1.0.0/16"])),
        peer(ip="::ffff:10.1.2.3"),
        req(),
        True,
    ),
    "ipBlocks: IPv6": (
        rule_policy(**source(ipBlocks=["fd00::/8"])),
        peer(ip="fd00::1"),
        req(),
        True,
    ),
    "ipBlocks: unknown address": (
        rule_policy(**source(ipBlocks=["0.0.0.0/0"])),
        peer(ip=""),
        req(),
        False,
    ),
    "DENY notIpBlocks: outside loopback": (
        rule_policy("DENY", **source(notIpBlocks=["127.0.0.0/8"])),
        peer(ip="10.0.0.1"),
        req(),
        False,
    ),
    "DENY notIpBlocks: loopback": (
        rule_policy("DENY", **source(notIpBlocks=["127.0.0.0/8"])),
        peer(ip="127.128.0.9"),
        req(),
        True,
    ),
    "source fields are ANDed": (
        rule_policy(**source(principals=[SLEEP], ipBlocks=["127.0.0.0/8"])),
        peer(SLEEP, ip="10.0.0.1"),
        req(),
        False,
    ),
    # operations
    "DENY path prefix": (
        rule_policy("DENY", **operation(paths=["/admin/*"])),
        peer(SLEEP),
        req("/admin/users"),
        False,
    ),
    "DENY path prefix: not the bare prefix": (
        rule_policy("DENY", **operation(paths=["/admin/*"])),
        peer(SLEEP),
        req("/admin"),
        True,
    ),
    "DENY path prefix: the query is not part of the path": (
        rule_policy("DENY", **operation(paths=["/admin/*"])),
        peer(SLEEP),
        req("/admin/users?page=2"),
        False,
    ),
    "DENY path prefix: dot segments are resolved first": (
        rule_policy("DENY", **operation(paths=["/admin/*"])),
        peer(SLEEP),
        req("/public/../admin/users"),
        False,
    ),
    "DENY path prefix: escaped letters are decoded first": (
        rule_policy("DENY", **operation(paths=["/admin/*"])),
        peer(SLEEP),
        req("/%61dmin/users"),
        False,
    ),
    "DENY path prefix: paths are case-sensitive": (
        rule_policy("DENY", **operation(paths=["/admin/*"])),
        peer(SLEEP),
        req("/ADMIN/users"),
        True,
    ),
    "path exact: query ignored": (
        rule_policy(**operation(paths=["/data"])),
        peer(),
        req("/data?x=1"),
        True,
    ),
    "path exact: longer path": (
        rule_policy(**operation(paths=["/data"])),
        peer(),
        req("/data/1"),
        False,
    ),
    "path suffix": (rule_policy(**operation(paths=["*.html"])), peer(), req("/a/b.html"), True),
    "path presence": (rule_policy(**operation(paths=["*"])), peer(), req("/anything"), True),
    "notPaths": (
        rule_policy(**operation(notPaths=["/private*"])),
        peer(),
        req("/private/x"),
        False,
    ),
    "path template {*}: one segment": (
        rule_policy(**operation(paths=["/foo/{*}"])),
        peer(),
        req("/foo/bar"),
        True,
    ),
    "path template {*}: not two": (
        rule_policy(**operation(paths=["/foo/{*}"])),
        peer(),
        req("/foo/bar/baz"),
        False,
    ),
    "path template {**}: any depth": (
        rule_policy(**operation(paths=["/foo/{*}/bar/{**}"])),
        peer(),
        req("/foo/buzz/bar/baz/qux"),
        True,
    ),
    "methods": (
        rule_policy(**operation(methods=["GET", "HEAD"])),
        peer(),
        req("/", "HEAD"),
        True,
    ),
    "notMethods": (
        rule_policy(**operation(notMethods=["DELETE"])),
        peer(),
        req("/", "DELETE"),
        False,
    ),
    "ports": (rule_policy(**operation(ports=["8080"])), peer(), req(port=8080), True),
    "ports: another port": (rule_policy(**operation(ports=["8080"])), peer(), req(), False),
    "DENY POST on port 8080 (reference example)": (
        rule_policy("DENY", **operation(methods=["POST"], ports=["8080"])),
        peer(SLEEP),
        req("/", "POST", port=8080),
        False,
    ),
    "DENY POST on port 8080: GET passes": (
        rule_policy("DENY", **operation(methods=["POST"], ports=["8080"])),
        peer(SLEEP),
        req("/", "GET", port=8080),
        True,
    ),
    "notPorts": (rule_policy(**operation(notPorts=["9090"])), peer(), req(port=9090), False),
    # when
    "when header prefix": (
        rule_policy(**when("request.headers[X-Token]", ["secret-*"])),
        peer(),
        req(headers=[("x-token", "secret-1")]),
        True,
    ),
    "when header: another value": (
        rule_policy(**when("request.headers[X-Token]", ["secret-*"])),
        peer(),
        req(headers=[("X-TOKEN", "public")]),
        False,
    ),
    "when header: absent": (
        rule_policy(**when("request.headers[X-Token]", ["*"])),
        peer(),
        req(),
        False,
    ),
    "when header: repeated, joined with commas": (
        rule_policy(**when("request.headers[x-group]", ["a,b"])),
        peer(),
        req(headers=[("x-group", "a"), ("X-Group", "b")]),
        True,
    ),
    "when header notValues: absent": (
        rule_policy(**when("request.headers[x-env]", not_values=["prod"])),
        peer(),
        req(),
        True,
    ),
    "when header notValues: the value": (
        rule_policy(**when("request.headers[x-env]", not_values=["prod"])),
        peer(),
        req(headers=[("x-env", "prod")]),
        False,
    ),
    "when source.ip": (
        rule_policy(**when("source.ip", ["10.1.0.0/16"])),
        peer(ip="10.1.0.1"),
        req(),
        True,
    ),
    "when source.namespace": (
        rule_policy(**when("source.namespace", ["test"])),
        peer(TESTER),
        req(),
        True,
    ),
    "when source.principal": (
        rule_policy(**when("source.principal", not_values=[SLEEP])),
        peer(SLEEP),
        req(),
        False,
    ),
    "when destination.port": (
        rule_policy(**when("destination.port", ["8080", "9090"])),
        peer(),
        req(port=9090),
        True,
    ),
    "from, to and when are ANDed: all hold": (
        rule_policy(
            **source(namespaces=["test"]),
            **operation(methods=["GET"]),
            **when("request.headers[x-user]", ["alice"]),
        ),
        peer(TESTER),
        req(headers=[("x-user", "alice")]),
        True,
    ),
    "from, to and when are ANDed: when fails": (
        rule_policy(
            **source(namespaces=["test"]),
            **operation(methods=["GET"]),
            **when("request.headers[x-user]", ["alice"]),
        ),
        peer(TESTER),
        req(headers=[("x-user", "bob")]),
        False,
    ),
}


@pytest.mark.parametrize(
    ("policy", "caller", "request_facts", "allowed"),
    list(RULE_CASES.values()),
    ids=list(RULE_CASES),
)
def test_rules(
    policy: AuthorizationPolicySpec, caller: Peer, request_facts: RequestFacts, allowed: bool
) -> None:
    decision = decide([policy], peer=caller, request=request_facts)
    assert decision.allowed is allowed
    matched = allowed if policy.action == "ALLOW" else not allowed
    assert decision.policy == (f"foo.{policy.name}" if matched else None)


def test_decisions_name_the_policy_and_say_why() -> None:
    policies = [ap("b-readers", rules=[operation(methods=["GET"])]), ap("a-writers", rules=[{}])]
    authorizer = Authorizer.of([*policies, ap("only-tests", rules=[source(namespaces=["x"])])])
    allowed = authorizer.decide(namespace="foo", labels={}, peer=peer(), request=req())
    assert allowed == Decision(
        allowed=True, policy="foo.a-writers", reason="allowed by ALLOW policy foo.a-writers"
    )
    authorizer = Authorizer.of([ap("b-readers", rules=[operation(methods=["GET"])])])
    denied = authorizer.decide(namespace="foo", labels={}, peer=peer(), request=req("/", "PUT"))
    assert denied == Decision(
        allowed=False, policy=None, reason="no ALLOW policy matched (foo.b-readers)"
    )
    authorizer = Authorizer.of([DENY_ALL])
    denied = authorizer.decide(namespace="foo", labels={}, peer=peer(), request=req())
    assert denied.reason == "denied by DENY policy foo.deny-all"


def test_applies_tells_whether_any_policy_concerns_the_workload() -> None:
    authorizer = Authorizer.of([ap("httpbin-only", selector={"matchLabels": {"app": "httpbin"}})])
    assert authorizer.applies(namespace="foo", labels=HTTPBIN)
    assert not authorizer.applies(namespace="foo", labels={"app": "other"})
    assert not authorizer.applies(namespace="bar", labels=HTTPBIN)


def test_decisions_follow_the_table() -> None:
    table = MeshTable()
    authorizer = Authorizer(table)

    def ask() -> Decision:
        return authorizer.decide(namespace="foo", labels=HTTPBIN, peer=peer(SLEEP), request=req())

    assert ask().allowed
    table.put_authorization_policy(DENY_ALL)
    assert ask() == Decision(
        allowed=False, policy="foo.deny-all", reason="denied by DENY policy foo.deny-all"
    )
    table.put_authorization_policy(ap("deny-all", action="DENY", rules=[operation(paths=["/y"])]))
    assert ask().allowed
    table.put_authorization_policy(ALLOW_NOTHING)
    assert not ask().allowed
    table.remove_authorization_policy("foo", "allow-nothing")
    table.remove_authorization_policy("foo", "deny-all")
    assert ask() == Decision(allowed=True, policy=None, reason="no ALLOW policy applies")


# request facts


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/../../b", "/b"),
        ("/a/%2e%2E/b", "/b"),
        ("/%41%7a%2D%5f%7E%30", "/Az-_~0"),
        ("/a%2fb", "/a%2fb"),  # slashes stay encoded (DECODE_AND_MERGE_SLASHES is not default)
        ("/a%20b", "/a%20b"),
        ("/a\\b", "/a/b"),
        ("/a//b", "/a//b"),  # slashes are not merged (MERGE_SLASHES is not default)
        ("/.well-known/x", "/.well-known/x"),
        ("/a%00b", None),
    ],
)
def test_paths_are_normalized_as_istio_does(path: str, normalized: str | None) -> None:
    assert normalize_path(path) == normalized


def test_request_facts_from_raw_parts() -> None:
    facts = RequestFacts.parse(
        b"GET", b"/a/../b?x=1#f", [(b"X-Token", b"t"), (b"x-token", b"u")], port=80, host="h"
    )
    assert facts is not None
    assert (facts.method, facts.path, facts.port, facts.host) == ("GET", "/b", 80, "h")
    assert facts.header("x-token") == "t,u"
    assert facts.header("absent") == ""
    assert RequestFacts.parse(b"get", b"/", port=80) is None  # Istio: 400
    assert RequestFacts.parse(b"GET", b"/a%00", port=80) is None


def test_peers_take_their_namespace_from_their_principal() -> None:
    assert Peer.of(SLEEP, "10.0.0.1") == Peer(principal=SLEEP, namespace="default", ip="10.0.0.1")
    assert Peer.of("", "10.0.0.1").namespace == ""
    assert namespace_of_principal("spiffe://cluster.local/ns/shop/sa/web") == "shop"
    assert namespace_of_principal("example.com/sub") == ""


@pytest.mark.parametrize(
    "path",
    ["/foo/{*}.txt", "/*/baz/{*}", "/{**}/foo/{*}", "/foo/{x}/{*}", "foo/{*}"],
)
def test_invalid_path_templates_are_plain_paths(path: str) -> None:
    assert path_template(path) is None


# PeerAuthentication

MESH_STRICT = pa("default", ROOT_NAMESPACE, mtls={"mode": "STRICT"})
MESH_UNSET = pa("default", ROOT_NAMESPACE, mtls={"mode": "UNSET"})
FOO_DISABLE = pa("default", mtls={"mode": "DISABLE"})
FOO_UNSET = pa("default", mtls={"mode": "UNSET"})
FOO_PERMISSIVE = pa("default", mtls={"mode": "PERMISSIVE"})
HTTPBIN_SELECTOR = {"matchLabels": {"app": "httpbin"}}

# (policies, namespace, labels, port, mode)
MTLS_CASES = {
    "nothing: PERMISSIVE": ([], "foo", HTTPBIN, 80, "PERMISSIVE"),
    "mesh STRICT": ([MESH_STRICT], "foo", HTTPBIN, 80, "STRICT"),
    "mesh UNSET: PERMISSIVE": ([MESH_UNSET], "foo", HTTPBIN, 80, "PERMISSIVE"),
    "namespace over mesh": ([MESH_STRICT, FOO_DISABLE], "foo", HTTPBIN, 80, "DISABLE"),
    "namespace UNSET inherits the mesh": ([MESH_STRICT, FOO_UNSET], "foo", HTTPBIN, 80, "STRICT"),
    "another namespace's policy": ([MESH_STRICT, FOO_DISABLE], "bar", HTTPBIN, 80, "STRICT"),
    "workload over namespace": (
        [FOO_PERMISSIVE, pa("httpbin", selector=HTTPBIN_SELECTOR, mtls={"mode": "STRICT"})],
        "foo",
        HTTPBIN,
        80,
        "STRICT",
    ),
    "workload selector does not hold": (
        [FOO_PERMISSIVE, pa("httpbin", selector=HTTPBIN_SELECTOR, mtls={"mode": "STRICT"})],
        "foo",
        {"app": "other"},
        80,
        "PERMISSIVE",
    ),
    "port level overrides the workload": (
        [
            pa(
                "httpbin",
                selector=HTTPBIN_SELECTOR,
                mtls={"mode": "STRICT"},
                portLevelMtls={"8080": {"mode": "DISABLE"}},
            )
        ],
        "foo",
        HTTPBIN,
        8080,
        "DISABLE",
    ),
    "port level: other ports keep the workload's mode": (
        [
            pa(
                "httpbin",
                selector=HTTPBIN_SELECTOR,
                mtls={"mode": "STRICT"},
                portLevelMtls={"8080": {"mode": "DISABLE"}},
            )
        ],
        "foo",
        HTTPBIN,
        80,
        "STRICT",
    ),
    "workload UNSET inherits the namespace, port level still applies": (
        [
            FOO_DISABLE,
            pa("httpbin", selector=HTTPBIN_SELECTOR, portLevelMtls={"8080": {"mode": "STRICT"}}),
        ],
        "foo",
        HTTPBIN,
        80,
        "DISABLE",
    ),
    "port level UNSET inherits the workload's inherited mode": (
        [
            MESH_STRICT,
            pa("httpbin", selector=HTTPBIN_SELECTOR, portLevelMtls={"8080": {"mode": "UNSET"}}),
        ],
        "foo",
        HTTPBIN,
        8080,
        "STRICT",
    ),
    "two namespace policies: the first by name": (
        [pa("b", mtls={"mode": "STRICT"}), pa("a", mtls={"mode": "DISABLE"})],
        "foo",
        HTTPBIN,
        80,
        "DISABLE",
    ),
    "a selector in the root namespace is ignored": (
        [pa("httpbin", ROOT_NAMESPACE, selector=HTTPBIN_SELECTOR, mtls={"mode": "STRICT"})],
        "foo",
        HTTPBIN,
        80,
        "PERMISSIVE",
    ),
    "mesh policy for a workload of the root namespace": (
        [MESH_STRICT],
        ROOT_NAMESPACE,
        {},
        80,
        "STRICT",
    ),
}


@pytest.mark.parametrize(
    ("policies", "namespace", "labels", "port", "mode"),
    list(MTLS_CASES.values()),
    ids=list(MTLS_CASES),
)
def test_mtls_mode(
    policies: list[PeerAuthenticationSpec],
    namespace: str,
    labels: dict[str, str],
    port: int,
    mode: str,
) -> None:
    authorizer = Authorizer.of(peer_authentications=policies)
    assert authorizer.mtls_mode(namespace=namespace, labels=labels, port=port) == mode


def test_mtls_mode_follows_the_table() -> None:
    table = MeshTable()
    authorizer = Authorizer(table)
    assert authorizer.mtls_mode(namespace="foo", labels=HTTPBIN, port=80) == "PERMISSIVE"
    table.put_peer_authentication(MESH_STRICT)
    assert authorizer.mtls_mode(namespace="foo", labels=HTTPBIN, port=80) == "STRICT"
    table.put_peer_authentication(FOO_DISABLE)
    assert authorizer.mtls_mode(namespace="foo", labels=HTTPBIN, port=80) == "DISABLE"
    table.remove_peer_authentication("foo", "default")
    assert authorizer.mtls_mode(namespace="foo", labels=HTTPBIN, port=80) == "STRICT"
