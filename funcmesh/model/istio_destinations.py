"""Istio's DestinationRule and Gateway: the subset funcmesh serves, as typed values.

A DestinationRule names a host, its subsets (by labels) and the traffic policy for it: the
load balancer (``ROUND_ROBIN``, ``LEAST_REQUEST``, ``RANDOM`` or a consistent hash on a header,
a cookie or the source IP; none: funcmesh's latency-aware default), outlier detection and
connection limits. A Gateway binds host names on ports of funcmesh's gateway. Unknown fields
are refused by name (istio_fields). No I/O here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.model.istio_fields import (
    BOOLEAN,
    INTEGER,
    LABELS,
    STRING,
    STRINGS,
    ListOf,
    Obj,
    Problems,
    dict_of,
    field_of,
    labels_of_map,
    list_of,
    raise_problems,
    spec_problems,
    str_of,
    strings_of,
)
from funcmesh.model.kinds import DESTINATION_RULE, GATEWAY
from funcmesh.model.names import dns1123_label_error
from funcmesh.model.objects import name_of, namespace_of

LOAD_BALANCERS = ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM")
_LATER_LOAD_BALANCERS = ("UNSPECIFIED", "LEAST_CONN", "PASSTHROUGH")
GATEWAY_PROTOCOLS = ("HTTP", "HTTPS")
_LATER_GATEWAY_PROTOCOLS = ("HTTP2", "GRPC", "TCP", "TLS", "MONGO")
GATEWAY_TLS_MODES = ("SIMPLE",)
_LATER_GATEWAY_TLS_MODES = (
    "PASSTHROUGH",
    "MUTUAL",
    "AUTO_PASSTHROUGH",
    "ISTIO_MUTUAL",
    "OPTIONAL_MUTUAL",
)

_TRAFFIC_POLICY = Obj(
    {
        "loadBalancer": Obj(
            {
                "simple": STRING,
                "consistentHash": Obj(
                    {
                        "httpHeaderName": STRING,
                        "httpCookie": Obj({"name": STRING, "path": STRING, "ttl": STRING}),
                        "useSourceIp": BOOLEAN,
                    }
                ),
            }
        ),
        "outlierDetection": Obj(
            {
                "consecutive5xxErrors": INTEGER,
                "consecutiveGatewayErrors": INTEGER,
                "interval": STRING,
                "baseEjectionTime": STRING,
                "maxEjectionPercent": INTEGER,
            }
        ),
        "connectionPool": Obj(
            {
                "http": Obj(
                    {"http1MaxPendingRequests": INTEGER, "maxRequestsPerConnection": INTEGER}
                ),
                "tcp": Obj({"maxConnections": INTEGER}),
            }
        ),
    }
)
DESTINATION_RULE_SHAPE = Obj(
    {
        "host": STRING,
        "trafficPolicy": _TRAFFIC_POLICY,
        "subsets": ListOf(
            Obj({"name": STRING, "labels": LABELS, "trafficPolicy": _TRAFFIC_POLICY})
        ),
    }
)
GATEWAY_SHAPE = Obj(
    {
        "selector": LABELS,
        "servers": ListOf(
            Obj(
                {
                    "name": STRING,
                    "port": Obj({"number": INTEGER, "name": STRING, "protocol": STRING}),
                    "hosts": STRINGS,
                    "tls": Obj(
                        {"httpsRedirect": BOOLEAN, "mode": STRING, "credentialName": STRING}
                    ),
                }
            )
        ),
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancer:
    """One of ``simple`` or a consistent hash key; all empty: the latency-aware default."""

    simple: str = ""
    hash_header: str = ""
    hash_cookie: str = ""
    hash_cookie_ttl_s: float | None = None
    hash_cookie_path: str = ""
    hash_source_ip: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    """Istio's defaults where a field is absent."""

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0  # 0: off
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionPool:
    """None: unlimited (Istio's 2^32-1); ``max_requests_per_connection`` 0: unlimited."""

    http1_max_pending_requests: int | None = None
    max_requests_per_connection: int = 0
    max_connections: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicy:
    load_balancer: LoadBalancer = dataclasses.field(default_factory=LoadBalancer)
    outlier_detection: OutlierDetection | None = None  # None: no outlier detection
    connection_pool: ConnectionPool = dataclasses.field(default_factory=ConnectionPool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    name: str
    labels: tuple[tuple[str, str], ...]
    traffic_policy: TrafficPolicy | None  # None: the rule's


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRuleSpec:
    namespace: str
    name: str
    host: str
    traffic_policy: TrafficPolicy
    subsets: tuple[Subset, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayServer:
    port: int
    port_name: str
    protocol: str
    hosts: tuple[str, ...]  # "host" or "namespace/host", as Istio writes them
    https_redirect: bool
    tls_mode: str  # "" or SIMPLE
    credential_name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySpec:
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]
    servers: tuple[GatewayServer, ...]


def parse_destination_rule(obj: Mapping[str, Any]) -> DestinationRuleSpec:
    """The typed view of a DestinationRule, or Invalid with one cause per problem."""
    spec, problems = spec_problems(obj, DESTINATION_RULE, DESTINATION_RULE_SHAPE)
    host = str_of(spec, "host")
    if not host:
        problems.required("spec.host", "a host")
    policy = _traffic_policy(field_of(spec, "trafficPolicy"), "spec.trafficPolicy", problems)
    subsets = _subsets(list_of(spec, "subsets"), problems)
    raise_problems(problems, obj, DESTINATION_RULE)
    return DestinationRuleSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        host=host,
        traffic_policy=policy or TrafficPolicy(),
        subsets=subsets,
    )


def _subsets(entries: list[Any], problems: Problems) -> tuple[Subset, ...]:
    subsets, seen = [], set()
    for i, entry in enumerate(entries):
        field = f"spec.subsets[{i}]"
        name = str_of(entry, "name")
        if not name:
            problems.required(f"{field}.name", "a name")
        elif error := dns1123_label_error(name):
            problems.add(f"{field}.name", error)
        elif name in seen:
            problems.add(f"{field}.name", f'subset "{name}" is defined twice')
        seen.add(name)
        policy = _traffic_policy(
            field_of(entry, "trafficPolicy"), f"{field}.trafficPolicy", problems
        )
        labels = tuple(sorted(labels_of_map(field_of(entry, "labels")).items()))
        subsets.append(Subset(name=name, labels=labels, traffic_policy=policy))
    return tuple(subsets)


def _traffic_policy(value: object, field: str, problems: Problems) -> TrafficPolicy | None:
    if not isinstance(value, dict):
        return None
    outlier = field_of(value, "outlierDetection")
    return TrafficPolicy(
        load_balancer=_load_balancer(
            dict_of(value, "loadBalancer"), f"{field}.loadBalancer", problems
        ),
        outlier_detection=(
            _outlier_detection(outlier, f"{field}.outlierDetection", problems)
            if isinstance(outlier, dict)
            else None
        ),
        connection_pool=_connection_pool(
            dict_of(value, "connectionPool"), f"{field}.connectionPool", problems
        ),
    )


def _load_balancer(value: dict[str, Any], field: str, problems: Problems) -> LoadBalancer:
    if not value:
        return LoadBalancer()
    if ("simple" in value) == ("consistentHash" in value):
        problems.add(field, "must have exactly one of simple or consistentHash")
        return LoadBalancer()
    if "simple" in value:
        simple = problems.one_of(
            value["simple"], f"{field}.simple", LOAD_BALANCERS, later=_LATER_LOAD_BALANCERS
        )
        return LoadBalancer(simple=simple or "")
    keys = dict_of(value, "consistentHash")
    hash_field = f"{field}.consistentHash"
    if len([key for key, item in keys.items() if item not in (None, False)]) != 1:
        problems.add(
            hash_field, "must have exactly one of httpHeaderName, httpCookie or useSourceIp"
        )
    cookie = dict_of(keys, "httpCookie")
    if "httpCookie" in keys and not str_of(cookie, "name"):
        problems.required(f"{hash_field}.httpCookie.name", "a cookie name")
    return LoadBalancer(
        hash_header=str_of(keys, "httpHeaderName").lower(),
        hash_cookie=str_of(cookie, "name"),
        hash_cookie_path=str_of(cookie, "path"),
        hash_cookie_ttl_s=problems.duration_s(
            cookie.get("ttl"), f"{hash_field}.httpCookie.ttl", minimum_s=0
        ),
        hash_source_ip=keys.get("useSourceIp") is True,
    )


def _outlier_detection(value: dict[str, Any], field: str, problems: Problems) -> OutlierDetection:
    default = OutlierDetection()
    errors_5xx = problems.count(value.get("consecutive5xxErrors"), f"{field}.consecutive5xxErrors")
    errors_gateway = problems.count(
        value.get("consecutiveGatewayErrors"), f"{field}.consecutiveGatewayErrors"
    )
    interval = problems.duration_s(value.get("interval"), f"{field}.interval")
    ejection = problems.duration_s(value.get("baseEjectionTime"), f"{field}.baseEjectionTime")
    percent = problems.count(
        value.get("maxEjectionPercent"), f"{field}.maxEjectionPercent", maximum=100
    )
    return OutlierDetection(
        consecutive_5xx_errors=default.consecutive_5xx_errors if errors_5xx is None else errors_5xx,
        consecutive_gateway_errors=errors_gateway or 0,
        interval_s=interval or default.interval_s,
        base_ejection_time_s=ejection or default.base_ejection_time_s,
        max_ejection_percent=default.max_ejection_percent if percent is None else percent,
    )


def _connection_pool(value: dict[str, Any], field: str, problems: Problems) -> ConnectionPool:
    http, tcp = dict_of(value, "http"), dict_of(value, "tcp")
    pending = problems.count(
        http.get("http1MaxPendingRequests"), f"{field}.http.http1MaxPendingRequests", minimum=1
    )
    per_connection = problems.count(
        http.get("maxRequestsPerConnection"), f"{field}.http.maxRequestsPerConnection"
    )
    connections = problems.count(
        tcp.get("maxConnections"), f"{field}.tcp.maxConnections", minimum=1
    )
    return ConnectionPool(
        http1_max_pending_requests=pending,
        max_requests_per_connection=per_connection or 0,
        max_connections=connections,
    )


def parse_gateway(obj: Mapping[str, Any]) -> GatewaySpec:
    """The typed view of a Gateway, or Invalid with one cause per problem."""
    spec, problems = spec_problems(obj, GATEWAY, GATEWAY_SHAPE)
    entries = list_of(spec, "servers")
    if not entries:
        problems.required("spec.servers", "at least one server")
    servers = tuple(
        _server(entry, f"spec.servers[{i}]", problems) for i, entry in enumerate(entries)
    )
    raise_problems(problems, obj, GATEWAY)
    return GatewaySpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        selector=tuple(sorted(labels_of_map(field_of(spec, "selector")).items())),
        servers=servers,
    )


def _server(value: object, field: str, problems: Problems) -> GatewayServer:
    port = dict_of(value, "port")
    if "number" not in port:
        problems.required(f"{field}.port.number", "a port number")
    hosts = strings_of(value, "hosts")
    if not hosts:
        problems.required(f"{field}.hosts", "at least one host")
    tls = dict_of(value, "tls")
    protocol = problems.one_of(
        port.get("protocol", "HTTP"),
        f"{field}.port.protocol",
        GATEWAY_PROTOCOLS,
        later=_LATER_GATEWAY_PROTOCOLS,
    )
    mode = problems.one_of(
        tls.get("mode"), f"{field}.tls.mode", GATEWAY_TLS_MODES, later=_LATER_GATEWAY_TLS_MODES
    )
    if mode == "SIMPLE" and not str_of(tls, "credentialName"):
        problems.required(f"{field}.tls.credentialName", "a credentialName (a TLS Secret)")
    return GatewayServer(
        port=problems.port(port.get("number"), f"{field}.port.number") or 0,
        port_name=str_of(port, "name"),
        protocol=protocol or "HTTP",
        hosts=hosts,
        https_redirect=tls.get("httpsRedirect") is True,
        tls_mode=mode or "",
        credential_name=str_of(tls, "credentialName"),
    )
