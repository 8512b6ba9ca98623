"""``expose deployment``: the Service kubectl expose would make, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.cli.expose import ExposeFlags, build_service
from funcmesh.errors import Invalid


def deployment(*ports: dict[str, Any], **selector: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {
            "selector": selector or {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "c", "ports": list(ports)}]}},
        },
    }


def test_the_first_container_port_and_the_deployment_selector_and_labels() -> None:
    service = build_service(deployment({"containerPort": 8000}), ExposeFlags())
    assert service == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
        "spec": {
            "selector": {"app": "web"},
            "type": "ClusterIP",
            "ports": [{"port": 8000, "protocol": "TCP", "targetPort": 8000}],
        },
    }


def test_flags_override_port_target_name_and_more() -> None:
    flags = ExposeFlags(
        name="front",
        port=80,
        target_port="http",
        protocol="TCP",
        cluster_ip="None",
        session_affinity="ClientIP",
        selector="app=web,track=stable",
        labels="team=a",
    )
    service = build_service(deployment({"containerPort": 8000}), flags)
    assert service["metadata"] == {"name": "front", "labels": {"team": "a"}}
    assert service["spec"] == {
        "selector": {"app": "web", "track": "stable"},
        "type": "ClusterIP",
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}],
        "clusterIP": "None",
        "sessionAffinity": "ClientIP",
    }


def test_several_container_ports_become_named_ports() -> None:
    service = build_service(
        deployment({"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}),
        ExposeFlags(target_port="9000"),
    )
    assert service["spec"]["ports"] == [
        {"name": "port-1", "port": 80, "protocol": "TCP", "targetPort": 9000},
        {"name": "port-2", "port": 53, "protocol": "UDP", "targetPort": 9000},
    ]


@pytest.mark.parametrize(
    ("obj", "flags", "message"),
    [
        (deployment(), ExposeFlags(), "couldn't find port via --port flag or introspection"),
        (
            deployment({"containerPort": 1}, matchExpressions=[{"key": "a", "operator": "In"}]),
            ExposeFlags(),
            "matchExpressions",
        ),
        (deployment({"containerPort": 1}), ExposeFlags(selector="a!=b"), "k=v pairs"),
        (deployment({"containerPort": 1}), ExposeFlags(target_port="70000"), "1-65535"),
    ],
)
def test_what_cannot_be_exposed(obj: dict[str, Any], flags: ExposeFlags, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        build_service(obj, flags)


def test_a_headless_service_needs_no_port() -> None:
    service = build_service(deployment(), ExposeFlags(cluster_ip="None"))
    assert "ports" not in service["spec"]
