"""Services: Kubernetes' defaults, its validation messages, the immutable ClusterIP, typed view."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.services import (
    ServicePort,
    normalise_service,
    parse_service,
)


def service(spec: dict[str, Any], name: str = "web", **metadata: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", **metadata},
        "spec": spec,
    }


def test_a_minimal_service_gets_kubernetes_defaults() -> None:
    normal = normalise_service(service({"selector": {"app": "web"}, "ports": [{"port": 80}]}), None)
    assert normal["spec"] == {
        "type": "ClusterIP",
        "selector": {"app": "web"},
        "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}],
        "sessionAffinity": "None",
        "clusterIP": "",  # left for the allocator
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    assert normal["status"] == {"loadBalancer": {}}


def test_client_ip_affinity_gets_the_default_timeout() -> None:
    spec = {"ports": [{"port": 80}], "sessionAffinity": "ClientIP"}
    normal = normalise_service(service(spec), None)
    assert normal["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert parse_service(normal).affinity_timeout_s == 10800


def test_named_and_numeric_target_ports() -> None:
    spec = {
        "clusterIP": "127.96.3.4",
        "ports": [
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "admin", "port": 81, "targetPort": "9000", "protocol": "UDP"},
        ],
    }
    parsed = parse_service(normalise_service(service(spec), None))
    assert parsed.ports == (
        ServicePort(name="http", protocol="TCP", port=80, target_port="web"),
        ServicePort(name="admin", protocol="UDP", port=81, target_port=9000),
    )
    assert parsed.cluster_ip == "127.96.3.4"
    assert not parsed.headless
    assert parsed.selector is None  # no selector: the user writes the Endpoints


def test_headless_and_external_name() -> None:
    headless = parse_service(
        normalise_service(service({"clusterIP": "None", "selector": {"a": "b"}}), None)
    )
    assert headless.headless
    assert headless.cluster_ip is None
    assert headless.selector == (("a", "b"),)
    external = normalise_service(
        service({"type": "ExternalName", "externalName": "example.com", "clusterIP": ""}), None
    )
    assert "clusterIP" not in external["spec"]
    assert parse_service(external).external_name == "example.com"


def test_an_empty_selector_means_no_selector() -> None:
    normal = normalise_service(service({"ports": [{"port": 80}], "selector": {}}), None)
    assert "selector" not in normal["spec"]


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"type": "Magic", "ports": [{"port": 1}]}, "spec.type", "Unsupported value"),
        ({}, "spec.ports", "Required value"),
        ({"ports": [{"port": 0}]}, "spec.ports[0].port", "between 1 and 65535"),
        ({"ports": [{"port": 70000}]}, "spec.ports[0].port", "between 1 and 65535"),
        ({"ports": [{"port": "80"}]}, "spec.ports[0].port", "between 1 and 65535"),
        ({"ports": [{"name": "a"}]}, "spec.ports[0].port", "Required value"),
        ({"ports": [{"port": 1}, {"port": 2, "name": "b"}]}, "spec.ports[0].name", "Required"),
        (
            {"ports": [{"port": 1, "name": "a"}, {"port": 2, "name": "a"}]},
            "spec.ports[1].name",
            "Duplicate",
        ),
        (
            {"ports": [{"port": 1, "name": "a"}, {"port": 1, "name": "b"}]},
            "spec.ports[1]",
            "Duplicate value: 1/TCP",
        ),
        ({"ports": [{"port": 1, "protocol": "ICMP"}]}, "spec.ports[0].protocol", "Unsupported"),
        ({"ports": [{"port": 1, "targetPort": "Web_Port"}]}, "spec.ports[0].targetPort", "name"),
        ({"ports": [{"port": 1, "targetPort": 99999}]}, "spec.ports[0].targetPort", "65535"),
        ({"ports": [{"port": 1, "nodePort": 30080}]}, "spec.ports[0].nodePort", "ClusterIP"),
        ({"ports": [{"port": 1}], "selector": {"a": "b c"}}, "spec.selector", "label value"),
        ({"ports": [{"port": 1}], "sessionAffinity": "Cookie"}, "spec.sessionAffinity", "Unsupp"),
        (
            {
                "ports": [{"port": 1}],
                "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}},
            },
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
            "must be > 0",
        ),
        ({"type": "ExternalName"}, "spec.externalName", "Required value"),
        ({"type": "ExternalName", "externalName": "no way"}, "spec.externalName", "DNS name"),
        (
            {"type": "ExternalName", "externalName": "a.b", "clusterIP": "127.96.0.9"},
            "spec.clusterIP",
            "ExternalName",
        ),
        ({"ports": [{"port": 1}], "clusterIP": "127.96.0.300"}, "spec.clusterIP", "valid IP"),
        ({"ports": [{"port": 1}], "clusterIP": "127.096.0.3"}, "spec.clusterIP", "valid IP"),
        (
            {"ports": [{"port": 1}], "clusterIP": "127.96.0.3", "clusterIPs": ["127.96.0.4"]},
            "spec.clusterIPs",
            "must match clusterIP",
        ),
        (
            {"ports": [{"port": 1}], "clusterIPs": ["127.96.0.4", "fd00::4"]},
            "spec.clusterIPs",
            "dual-stack",
        ),
        (
            {"type": "NodePort", "ports": [{"port": 1}], "clusterIP": "None"},
            "spec.clusterIP",
            "NodePort",
        ),
        ({"ports": [{"port": 1}], "externalIPs": ["nope"]}, "spec.externalIPs", "IP addresses"),
    ],
)
def test_bad_services_are_refused_naming_the_field(
    spec: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(Invalid) as caught:
        normalise_service(service(spec), None)
    assert any(
        c.field == field and message in c.message for c in caught.value.causes
    ), caught.value.causes
    assert str(caught.value).startswith('Service "web" is invalid: ')


def test_a_service_name_must_be_a_dns1035_label() -> None:
    with pytest.raises(Invalid, match="DNS-1035"):
        normalise_service(service({"ports": [{"port": 1}]}, name="1web"), None)


def test_the_cluster_ip_is_immutable_and_kept_when_left_out() -> None:
    old = normalise_service(service({"ports": [{"port": 80}], "clusterIP": "127.96.1.1"}), None)
    kept = normalise_service(service({"ports": [{"port": 81}]}), copy.deepcopy(old))
    assert kept["spec"]["clusterIP"] == "127.96.1.1"
    assert kept["spec"]["clusterIPs"] == ["127.96.1.1"]
    changed = service({"ports": [{"port": 80}], "clusterIP": "127.96.1.2"})
    with pytest.raises(Invalid, match="field is immutable"):
        normalise_service(changed, old)
    to_headless = service({"ports": [{"port": 80}], "clusterIP": "None"})
    with pytest.raises(Invalid, match="field is immutable"):
        normalise_service(to_headless, old)


def test_changing_to_external_name_drops_the_cluster_ip_and_back_needs_a_new_one() -> None:
    old = normalise_service(service({"ports": [{"port": 80}], "clusterIP": "127.96.1.1"}), None)
    spec = copy.deepcopy(old["spec"]) | {"type": "ExternalName", "externalName": "db.example.org"}
    external = normalise_service(service(spec), old)
    assert "clusterIP" not in external["spec"]
    back = normalise_service(service({"ports": [{"port": 80}]}), external)
    assert back["spec"]["clusterIP"] == ""  # the allocator gives a new one


def test_the_owning_function_is_read_from_owner_references() -> None:
    owners = [{"apiVersion": "kubeless.io/v1beta1", "kind": "Function", "name": "hello"}]
    obj = service(
        {"ports": [{"port": 8080}], "selector": {"function": "hello"}}, ownerReferences=owners
    )
    parsed = parse_service(normalise_service(obj, None))
    assert parsed.function == "hello"
    assert parsed.selects({"function": "hello", "other": "x"})
    assert not parsed.selects({"function": "bye"})
