"""Istio's objects: valid examples from Istio's docs parse; each bad input is refused by field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.istio_destinations import parse_destination_rule, parse_gateway
from funcmesh.model.istio_networking import parse_virtual_service
from funcmesh.model.istio_security import parse_authorization_policy, parse_peer_authentication

Parser = Callable[[dict[str, Any]], Any]
NET, SEC = "networking.istio.io", "security.istio.io"


def obj(kind: str, spec: dict[str, Any], *, version: str = "v1") -> dict[str, Any]:
    group = SEC if kind in ("AuthorizationPolicy", "PeerAuthentication") else NET
    return {
        "apiVersion": f"{group}/{version}",
        "kind": kind,
        "metadata": {"name": "example", "namespace": "default"},
        "spec": spec,
    }


def vs(*http: dict[str, Any], version: str = "v1", **spec: Any) -> dict[str, Any]:
    spec = {"hosts": ["reviews"], "http": list(http), **spec}
    return obj("VirtualService", spec, version=version)


def route(*destinations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"route": list(destinations) or [{"destination": {"host": "reviews"}}], **extra}


def dest(subset: str, weight: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"destination": {"host": "reviews", "subset": subset}}
    return entry if weight is None else {**entry, "weight": weight}


CANARY = vs(route(dest("v1", 90), dest("v2", 10)))
HEADER_MATCH = vs(
    {
        "match": [{"headers": {"end-user": {"exact": "jason"}}, "uri": {"prefix": "/api"}}],
        **route(dest("v2")),
    },
    route(dest("v1")),
)
RETRIES = vs(
    route(
        dest("v1"),
        timeout="10s",
        retries={"attempts": 3, "perTryTimeout": "2s", "retryOn": "gateway-error,connect-failure"},
    )
)
FAULT = vs(
    route(
        dest("v1"),
        fault={
            "delay": {"percentage": {"value": 0.1}, "fixedDelay": "5s"},
            "abort": {"percentage": {"value": 10}, "httpStatus": 400},
        },
        rewrite={"uri": "/v1/api"},
        headers={"request": {"set": {"X-Test": "1"}}, "response": {"remove": ["Server"]}},
        mirror={"host": "reviews", "subset": "v3"},
        mirrorPercentage={"value": 50.0},
    ),
    gateways=["bookinfo-gateway", "mesh"],
    version="v1beta1",
)
DESTINATION_RULE = obj(
    "DestinationRule",
    {
        "host": "reviews",
        "trafficPolicy": {
            "loadBalancer": {"simple": "LEAST_REQUEST"},
            "outlierDetection": {
                "consecutive5xxErrors": 7,
                "interval": "5m",
                "baseEjectionTime": "15m",
                "maxEjectionPercent": 50,
            },
            "connectionPool": {
                "tcp": {"maxConnections": 100},
                "http": {"http1MaxPendingRequests": 10, "maxRequestsPerConnection": 1},
            },
        },
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {
                "name": "v2",
                "labels": {"version": "v2"},
                "trafficPolicy": {
                    "loadBalancer": {
                        "consistentHash": {"httpCookie": {"name": "u", "ttl": "0s", "path": "/"}}
                    }
                },
            },
        ],
    },
    version="v1alpha3",
)
GATEWAY = obj(
    "Gateway",
    {
        "selector": {"istio": "ingressgateway"},
        "servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}],
    },
)
ALLOW = obj(
    "AuthorizationPolicy",
    {
        "selector": {"matchLabels": {"app": "httpbin"}},
        "action": "ALLOW",
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/sleep"]}}],
                "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"], "ports": ["8000"]}}],
                "when": [{"key": "request.headers[X-Version]", "values": ["v1"]}],
            }
        ],
    },
)
DENY = obj(
    "AuthorizationPolicy",
    {
        "action": "DENY",
        "rules": [{"from": [{"source": {"notNamespaces": ["foo"], "ipBlocks": ["10.0.0.0/8"]}}]}],
    },
    version="v1beta1",
)
PEER = obj(
    "PeerAuthentication",
    {
        "selector": {"matchLabels": {"app": "reviews"}},
        "mtls": {"mode": "STRICT"},
        "portLevelMtls": {"8080": {"mode": "DISABLE"}},
    },
)


@pytest.mark.parametrize(
    ("parse", "manifest", "check"),
    [
        (
            parse_virtual_service,
            CANARY,
            lambda s: [d.weight for d in s.http[0].route] == [90, 10]
            and s.http[0].route[1].destination.subset == "v2",
        ),
        (
            parse_virtual_service,
            HEADER_MATCH,
            lambda s: s.http[0].match[0].headers[0][0] == "end-user"
            and s.http[0].match[0].uri.kind == "prefix"
            and s.http[1].route[0].weight == 100,
        ),
        (
            parse_virtual_service,
            RETRIES,
            lambda s: s.http[0].timeout_s == 10
            and s.http[0].retries.attempts == 3
            and s.http[0].retries.per_try_timeout_s == 2
            and s.http[0].retries.retry_on == ("gateway-error", "connect-failure"),
        ),
        (
            parse_virtual_service,
            FAULT,
            lambda s: s.http[0].fault.delay_s == 5
            and s.http[0].fault.delay_percent == 0.1
            and s.http[0].fault.abort_status == 400
            and s.http[0].rewrite_uri == "/v1/api"
            and s.http[0].request_headers.set == (("x-test", "1"),)
            and s.http[0].mirror.subset == "v3"
            and s.http[0].mirror_percent == 50
            and s.gateways == ("bookinfo-gateway", "mesh"),
        ),
        (
            parse_destination_rule,
            DESTINATION_RULE,
            lambda s: s.traffic_policy.load_balancer.simple == "LEAST_REQUEST"
            and s.traffic_policy.outlier_detection.consecutive_5xx_errors == 7
            and s.traffic_policy.outlier_detection.interval_s == 300
            and s.traffic_policy.connection_pool.max_connections == 100
            and s.subsets[1].traffic_policy.load_balancer.hash_cookie == "u"
            and s.subsets[1].traffic_policy.load_balancer.hash_cookie_path == "/"
            and s.subsets[0].labels == (("version", "v1"),),
        ),
        (
            parse_gateway,
            GATEWAY,
            lambda s: s.servers[0].port == 80 and s.selector == (("istio", "ingressgateway"),),
        ),
        (
            parse_authorization_policy,
            ALLOW,
            lambda s: s.action == "ALLOW"
            and s.rules[0].operations[0].ports.values == ("8000",)
            and s.rules[0].conditions[0].key == "request.headers[x-version]",
        ),
        (
            parse_authorization_policy,
            DENY,
            lambda s: s.action == "DENY"
            and s.rules[0].sources[0].namespaces.not_values == ("foo",),
        ),
        (
            parse_peer_authentication,
            PEER,
            lambda s: s.mode == "STRICT" and s.port_modes == ((8080, "DISABLE"),),
        ),
    ],
    ids=["canary", "header-match", "retries", "fault", "dr", "gateway", "allow", "deny", "pa"],
)
def test_istio_docs_examples_parse(parse: Parser, manifest: dict[str, Any], check: Any) -> None:
    assert check(parse(manifest))


def _with(base: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {**base, "spec": {**base["spec"], **spec}}


UNSUPPORTED = "not supported by funcmesh"


@pytest.mark.parametrize(
    ("parse", "manifest", "field", "words"),
    [
        # weights
        (
            parse_virtual_service,
            vs(route(dest("v1", 90), dest("v2", 20))),
            "spec.http[0].route[*].weight",
            "sum to 110",
        ),
        (
            parse_virtual_service,
            vs(route(dest("v1"), dest("v2"))),
            "spec.http[0].route[*].weight",
            "sum to 0",
        ),
        (
            parse_virtual_service,
            vs(route(dest("v1", 101))),
            "spec.http[0].route[0].weight",
            "between 0 and 100",
        ),
        # regexes, durations, percentages
        (
            parse_virtual_service,
            vs({"match": [{"uri": {"regex": "/a(b"}}], **route()}),
            "spec.http[0].match[0].uri.regex",
            "not a valid regular expression",
        ),
        (
            parse_virtual_service,
            vs({"match": [{"headers": {"x": {"regex": "["}}}], **route()}),
            "spec.http[0].match[0].headers[x].regex",
            "regular expression",
        ),
        (parse_virtual_service, vs(route(timeout="10")), "spec.http[0].timeout", "not a duration"),
        (
            parse_virtual_service,
            vs(route(timeout="1.5 s")),
            "spec.http[0].timeout",
            "not a duration",
        ),
        (
            parse_virtual_service,
            vs(route(retries={"attempts": 2, "perTryTimeout": "0.1ms"})),
            "spec.http[0].retries.perTryTimeout",
            "too short",
        ),
        (
            parse_virtual_service,
            vs(route(fault={"abort": {"httpStatus": 503, "percentage": {"value": 101}}})),
            "spec.http[0].fault.abort.percentage.value",
            "between 0 and 100",
        ),
        (
            parse_virtual_service,
            vs(route(mirror={"host": "a"}, mirrorPercentage={"value": -1})),
            "spec.http[0].mirrorPercentage.value",
            "between 0 and 100",
        ),
        (
            parse_virtual_service,
            vs(route(retries={"attempts": 1, "retryOn": "5xx,sometimes"})),
            "spec.http[0].retries.retryOn",
            'unknown value "sometimes"',
        ),
        (
            parse_virtual_service,
            vs({"match": [{"uri": {"exact": "/a", "prefix": "/"}}], **route()}),
            "spec.http[0].match[0].uri",
            "exactly one",
        ),
        (
            parse_virtual_service,
            vs(route({"destination": {"subset": "v1"}})),
            "spec.http[0].route[0].destination.host",
            "required",
        ),
        (
            parse_virtual_service,
            obj("VirtualService", {"http": [route()]}),
            "spec.hosts",
            "required",
        ),
        (parse_virtual_service, vs(route(timeout=5)), "spec.http[0].timeout", "must be a string"),
        # unknown fields at several depths
        (parse_virtual_service, vs(route(), tcp=[]), "spec.tcp", UNSUPPORTED),
        (parse_virtual_service, vs(route(corsPolicy={})), "spec.http[0].corsPolicy", UNSUPPORTED),
        (
            parse_virtual_service,
            vs({"match": [{"ignoreUriCase": True}], **route()}),
            "spec.http[0].match[0].ignoreUriCase",
            UNSUPPORTED,
        ),
        (
            parse_virtual_service,
            vs(route({"destination": {"host": "a"}, "headers": {}})),
            "spec.http[0].route[0].headers",
            UNSUPPORTED,
        ),
        (
            parse_virtual_service,
            vs(route(fault={"delay": {"exponentialDelay": "1s"}})),
            "spec.http[0].fault.delay.exponentialDelay",
            UNSUPPORTED,
        ),
        (
            parse_destination_rule,
            _with(DESTINATION_RULE, exportTo=["."]),
            "spec.exportTo",
            UNSUPPORTED,
        ),
        (
            parse_destination_rule,
            _with(DESTINATION_RULE, trafficPolicy={"tls": {"mode": "ISTIO_MUTUAL"}}),
            "spec.trafficPolicy.tls",
            UNSUPPORTED,
        ),
        (
            parse_destination_rule,
            _with(
                DESTINATION_RULE, trafficPolicy={"connectionPool": {"http": {"idleTimeout": "1s"}}}
            ),
            "spec.trafficPolicy.connectionPool.http.idleTimeout",
            UNSUPPORTED,
        ),
        # DestinationRule values
        (
            parse_destination_rule,
            _with(DESTINATION_RULE, trafficPolicy={"loadBalancer": {"simple": "LEAST_CONN"}}),
            "spec.trafficPolicy.loadBalancer.simple",
            "LEAST_CONN not supported",
        ),
        (
            parse_destination_rule,
            _with(DESTINATION_RULE, trafficPolicy={"outlierDetection": {"interval": "soon"}}),
            "spec.trafficPolicy.outlierDetection.interval",
            "not a duration",
        ),
        (
            parse_destination_rule,
            _with(
                DESTINATION_RULE, trafficPolicy={"outlierDetection": {"maxEjectionPercent": 150}}
            ),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "between 0 and 100",
        ),
        (
            parse_destination_rule,
            _with(DESTINATION_RULE, subsets=[{"name": "v1"}, {"name": "v1"}]),
            "spec.subsets[1].name",
            "defined twice",
        ),
        (
            parse_destination_rule,
            _with(DESTINATION_RULE, trafficPolicy={"loadBalancer": {"consistentHash": {}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "exactly one",
        ),
        # Gateway
        (
            parse_gateway,
            _with(GATEWAY, servers=[{"port": {"number": 70000}, "hosts": ["*"]}]),
            "spec.servers[0].port.number",
            "between 1 and 65535",
        ),
        (
            parse_gateway,
            _with(
                GATEWAY,
                servers=[
                    {
                        "port": {"number": 443, "protocol": "HTTPS"},
                        "hosts": ["*"],
                        "tls": {"mode": "MUTUAL"},
                    }
                ],
            ),
            "spec.servers[0].tls.mode",
            "MUTUAL not supported",
        ),
        # security
        (
            parse_authorization_policy,
            _with(ALLOW, action="CUSTOM"),
            "spec.action",
            "CUSTOM not supported",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, action="AUDIT"),
            "spec.action",
            "AUDIT not supported",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, provider={"name": "ext"}),
            "spec.provider",
            UNSUPPORTED,
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"from": [{"source": {"requestPrincipals": ["*"]}}]}]),
            "spec.rules[0].from[0].source.requestPrincipals",
            UNSUPPORTED,
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"from": [{"source": {"ipBlocks": ["10.0.0.300"]}}]}]),
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "not an IP address",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}]),
            "spec.rules[0].when[0].key",
            UNSUPPORTED,
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"to": [{"operation": {"ports": ["http"]}}]}]),
            "spec.rules[0].to[0].operation.ports[0]",
            "not a port",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"from": [{"source": {}}]}]),
            "spec.rules[0].from[0].source",
            "must not be empty",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"to": [{"operation": {}}]}]),
            "spec.rules[0].to[0].operation",
            "must not be empty",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"to": [{"operation": {"paths": ["/foo/{*}.txt"]}}]}]),
            "spec.rules[0].to[0].operation.paths[0]",
            "not a valid path template",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"to": [{"operation": {"notPaths": ["/{**}/x/{*}"]}}]}]),
            "spec.rules[0].to[0].operation.notPaths[0]",
            "not a valid path template",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"when": [{"key": "source.ip", "values": ["10.0.0.0/33"]}]}]),
            "spec.rules[0].when[0].values[0]",
            "not an IP address",
        ),
        (
            parse_authorization_policy,
            _with(ALLOW, rules=[{"when": [{"key": "destination.port", "values": ["0"]}]}]),
            "spec.rules[0].when[0].values[0]",
            "not a port",
        ),
        (
            parse_peer_authentication,
            _with(PEER, mtls={"mode": "SOMETIMES"}),
            "spec.mtls.mode",
            'unknown value "SOMETIMES"',
        ),
        (
            parse_peer_authentication,
            _with(PEER, selector=None),
            "spec.portLevelMtls",
            "needs a selector",
        ),
    ],
)
def test_bad_input_names_the_field(
    parse: Parser, manifest: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(Invalid) as caught:
        parse(manifest)
    causes = {cause.field: cause.message for cause in caught.value.causes}
    assert field in causes, causes
    assert words in causes[field]
    assert field in str(caught.value)


def test_every_problem_is_reported_at_once() -> None:
    manifest = vs(route(dest("v1", 50), dest("v2", 20), timeout="x", corsPolicy={}), tls=[])
    with pytest.raises(Invalid) as caught:
        parse_virtual_service(manifest)
    assert {cause.field for cause in caught.value.causes} == {
        "spec.tls",
        "spec.http[0].corsPolicy",
        "spec.http[0].route[*].weight",
        "spec.http[0].timeout",
    }


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_every_served_version_parses(version: str) -> None:
    assert parse_virtual_service({**CANARY, "apiVersion": f"{NET}/{version}"}).name == "example"


def test_an_unserved_version_is_refused() -> None:
    with pytest.raises(Invalid, match="apiVersion"):
        parse_virtual_service({**CANARY, "apiVersion": f"{NET}/v2"})
