"""Endpoints: what a user may write, and the subsets a Service's pods give (ready or not, named
ports, hostnames), in one canonical form."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.endpoints import (
    EndpointAddress,
    EndpointPort,
    normalise_endpoints,
    parse_endpoints,
    subsets_for,
)
from funcmesh.model.services import normalise_service, parse_service


def pod(
    name: str,
    ip: str,
    *,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    ports: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "labels": {"app": "web"} if labels is None else labels,
        },
        "spec": {"containers": [{"name": "c", "ports": ports or []}], **spec},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def svc(spec: dict[str, Any], name: str = "web") -> Any:
    obj = {"metadata": {"name": name, "namespace": "default"}, "spec": spec}
    return parse_service(normalise_service(obj, None))


def ref(name: str) -> dict[str, str]:
    return {"kind": "Pod", "namespace": "default", "name": name, "uid": f"uid-{name}"}


def test_ready_and_not_ready_pods_in_one_subset_sorted_by_ip() -> None:
    service = svc({"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]})
    pods = [
        pod("b", "127.128.0.10"),
        pod("a", "127.128.0.9"),
        pod("c", "127.128.0.2", ready=False),
        pod("other", "127.128.0.3", labels={"app": "db"}),
        pod("done", "127.128.0.4", phase="Succeeded"),
        pod("noip", ""),
    ]
    subsets, members = subsets_for(service, pods)
    assert subsets == [
        {
            "addresses": [
                {"ip": "127.128.0.9", "targetRef": ref("a")},
                {"ip": "127.128.0.10", "targetRef": ref("b")},
            ],
            "notReadyAddresses": [{"ip": "127.128.0.2", "targetRef": ref("c")}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
    ]
    assert members == {"a", "b", "c"}
    again, _ = subsets_for(service, list(reversed(pods)))
    assert again == subsets  # canonical: the same pods give the same subsets


def test_a_named_target_port_is_looked_up_per_pod_and_pods_without_it_are_left_out() -> None:
    service = svc(
        {
            "selector": {"app": "web"},
            "ports": [
                {"name": "http", "port": 80, "targetPort": "web"},
                {"name": "metrics", "port": 9100, "targetPort": 9100},
            ],
        }
    )
    pods = [
        pod("a", "127.128.0.1", ports=[{"name": "web", "containerPort": 8080}]),
        pod("b", "127.128.0.2", ports=[{"name": "web", "containerPort": 8081}]),
        pod("c", "127.128.0.3", ports=[{"name": "other", "containerPort": 8080}]),
        pod("d", "127.128.0.4", ports=[{"name": "web", "containerPort": 8080, "protocol": "UDP"}]),
    ]
    subsets, _ = subsets_for(service, pods)
    by_ports = {tuple((p.get("name"), p["port"]) for p in s["ports"]): s for s in subsets}
    assert [a["ip"] for a in by_ports[(("http", 8080),)]["addresses"]] == ["127.128.0.1"]
    assert [a["ip"] for a in by_ports[(("http", 8081),)]["addresses"]] == ["127.128.0.2"]
    everyone = ["127.128.0.1", "127.128.0.2", "127.128.0.3", "127.128.0.4"]
    assert [a["ip"] for a in by_ports[(("metrics", 9100),)]["addresses"]] == everyone


def test_hostname_only_when_the_subdomain_names_the_service() -> None:
    service = svc({"clusterIP": "None", "selector": {"app": "web"}})
    pods = [
        pod("a", "127.128.0.1", hostname="alpha", subdomain="web"),
        pod("b", "127.128.0.2", hostname="beta", subdomain="other"),
    ]
    subsets, _ = subsets_for(service, pods)
    assert subsets == [  # headless without ports: addresses only
        {
            "addresses": [
                {"ip": "127.128.0.1", "hostname": "alpha", "targetRef": ref("a")},
                {"ip": "127.128.0.2", "targetRef": ref("b")},
            ]
        }
    ]


def test_publish_not_ready_addresses_lists_every_pod_as_ready() -> None:
    service = svc(
        {"selector": {"app": "web"}, "ports": [{"port": 80}], "publishNotReadyAddresses": True}
    )
    subsets, _ = subsets_for(service, [pod("a", "127.128.0.1", ready=False)])
    assert [a["ip"] for a in subsets[0]["addresses"]] == ["127.128.0.1"]
    assert "notReadyAddresses" not in subsets[0]


def test_no_matching_pod_gives_no_subsets() -> None:
    service = svc({"selector": {"app": "nothing"}, "ports": [{"port": 80}]})
    assert subsets_for(service, [pod("a", "127.128.0.1")]) == ([], frozenset())


def test_user_endpoints_parse_and_get_defaults() -> None:
    obj = {
        "metadata": {"name": "db", "namespace": "default"},
        "subsets": [
            {
                "addresses": [{"ip": "127.0.0.1", "hostname": "primary"}],
                "notReadyAddresses": [{"ip": "::1"}],
                "ports": [{"port": 5432}],
            }
        ],
    }
    normal = normalise_endpoints(obj)
    assert normal["subsets"][0]["ports"] == [{"port": 5432, "protocol": "TCP"}]
    parsed = parse_endpoints(normal)
    assert parsed.subsets[0].ready == (EndpointAddress(ip="127.0.0.1", hostname="primary"),)
    assert parsed.subsets[0].not_ready == (EndpointAddress(ip="::1"),)
    assert parsed.subsets[0].ports == (EndpointPort(name="", port=5432, protocol="TCP"),)


@pytest.mark.parametrize(
    ("subsets", "field", "message"),
    [
        ("all", "subsets", "must be a list"),
        ([{"ports": [{"port": 1}]}], "subsets[0]", "addresses"),
        ([{"addresses": [{"ip": "10.0.0.300"}]}], "subsets[0].addresses[0].ip", "valid IP"),
        ([{"addresses": [{}]}], "subsets[0].addresses[0].ip", "Required"),
        (
            [{"addresses": [{"ip": "1.2.3.4", "hostname": "A_B"}]}],
            "subsets[0].addresses[0].hostname",
            "DNS",
        ),
        (
            [{"addresses": [{"ip": "1.2.3.4"}], "ports": [{"port": 0}]}],
            "subsets[0].ports[0].port",
            "65535",
        ),
        (
            [{"addresses": [{"ip": "1.2.3.4"}], "ports": [{"port": 1}, {"port": 2}]}],
            "subsets[0].ports[0].name",
            "Required",
        ),
        (
            [{"addresses": [{"ip": "1.2.3.4"}], "ports": [{"port": 1, "protocol": "X"}]}],
            "subsets[0].ports[0].protocol",
            "Unsupported",
        ),
    ],
)
def test_bad_endpoints_are_refused(subsets: Any, field: str, message: str) -> None:
    obj = {"metadata": {"name": "db", "namespace": "default"}, "subsets": subsets}
    with pytest.raises(Invalid) as caught:
        normalise_endpoints(obj)
    assert any(
        c.field == field and message in c.message for c in caught.value.causes
    ), caught.value.causes
