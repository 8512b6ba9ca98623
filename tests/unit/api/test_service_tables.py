"""Services and Endpoints print as kubectl prints them (pkg/printers/internalversion)."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.api.tables import table
from funcmesh.model.kinds import ENDPOINTS, SERVICE
from funcmesh.model.objects import parse_rfc3339

NOW_S = parse_rfc3339("2024-06-01T12:00:00Z")
CREATED = "2024-06-01T11:59:00Z"


def cells(rt: Any, obj: dict[str, Any]) -> dict[str, Any]:
    rendered = table(rt, [obj], now_s=NOW_S)
    names = [c["name"] for c in rendered["columnDefinitions"]]
    return dict(zip(names, rendered["rows"][0]["cells"], strict=True))


def service(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = {"metadata": {"name": "web", "creationTimestamp": CREATED}, "spec": spec}
    if status is not None:
        obj["status"] = status
    return obj


def test_service_columns_and_the_wide_selector() -> None:
    rendered = table(SERVICE, [], now_s=NOW_S)
    columns = [(c["name"], c["priority"]) for c in rendered["columnDefinitions"]]
    assert columns == [
        ("Name", 0),
        ("Type", 0),
        ("Cluster-IP", 0),
        ("External-IP", 0),
        ("Port(s)", 0),
        ("Age", 0),
        ("Selector", 1),
    ]


@pytest.mark.parametrize(
    ("spec", "status", "expected"),
    [
        (
            {
                "type": "ClusterIP",
                "clusterIPs": ["127.96.4.2"],
                "ports": [{"port": 8080, "protocol": "TCP"}],
                "selector": {"function": "hello", "app": "x"},
            },
            None,
            ["web", "ClusterIP", "127.96.4.2", "<none>", "8080/TCP", "60s", "app=x,function=hello"],
        ),
        (
            {
                "type": "NodePort",
                "clusterIPs": ["127.96.4.3"],
                "ports": [
                    {"port": 80, "nodePort": 30080, "protocol": "TCP"},
                    {"port": 53, "protocol": "UDP"},
                ],
                "externalIPs": ["192.0.2.1"],
            },
            None,
            ["web", "NodePort", "127.96.4.3", "192.0.2.1", "80:30080/TCP,53/UDP", "60s", "<none>"],
        ),
        (
            {"type": "ClusterIP", "clusterIPs": ["None"]},
            None,
            ["web", "ClusterIP", "None", "<none>", "<none>", "60s", "<none>"],
        ),
        (
            {"type": "ExternalName", "externalName": "db.example.org", "ports": []},
            None,
            ["web", "ExternalName", "<none>", "db.example.org", "<none>", "60s", "<none>"],
        ),
        (
            {"type": "LoadBalancer", "clusterIPs": ["127.96.4.4"], "ports": [{"port": 443}]},
            {"loadBalancer": {}},
            ["web", "LoadBalancer", "127.96.4.4", "<pending>", "443/TCP", "60s", "<none>"],
        ),
        (
            {"type": "LoadBalancer", "clusterIPs": ["127.96.4.4"], "ports": [{"port": 443}]},
            {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}, {"hostname": "lb.example"}]}},
            ["web", "LoadBalancer", "127.96.4.4", "203.0.113.10,...", "443/TCP", "60s", "<none>"],
        ),
    ],
)
def test_service_rows(
    spec: dict[str, Any], status: dict[str, Any] | None, expected: list[str]
) -> None:
    assert list(cells(SERVICE, service(spec, status)).values()) == expected


def endpoints(subsets: list[dict[str, Any]] | None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": "web", "creationTimestamp": CREATED}}
    if subsets is not None:
        obj["subsets"] = subsets
    return obj


def addresses(*ips: str) -> list[dict[str, str]]:
    return [{"ip": ip} for ip in ips]


@pytest.mark.parametrize(
    ("subsets", "expected"),
    [
        (None, "<none>"),
        (
            [{"addresses": addresses("127.128.0.5", "127.128.0.9"), "ports": [{"port": 8080}]}],
            "127.128.0.5:8080,127.128.0.9:8080",
        ),
        (
            [
                {
                    "addresses": addresses("127.128.0.1", "127.128.0.2", "127.128.0.3"),
                    "ports": [{"port": 80}, {"port": 443}],
                }
            ],
            "127.128.0.1:80,127.128.0.2:80,127.128.0.3:80 + 3 more...",
        ),
        ([{"addresses": addresses("127.128.0.1", "::1")}], "127.128.0.1,::1"),
        (
            [{"addresses": addresses("::1"), "ports": [{"port": 80}]}],
            "[::1]:80",
        ),
        ([{"notReadyAddresses": addresses("127.128.0.1"), "ports": [{"port": 80}]}], ""),
    ],
)
def test_endpoints_rows(subsets: list[dict[str, Any]] | None, expected: str) -> None:
    assert cells(ENDPOINTS, endpoints(subsets)) == {
        "Name": "web",
        "Endpoints": expected,
        "Age": "60s",
    }
