"""Discovery documents and the OpenAPI description, derived from the kinds registry."""

from __future__ import annotations

from typing import Any

from funcmesh.api.discovery import (
    aggregated_discovery,
    api_group,
    api_group_list,
    api_resource_list,
    version_info,
)
from funcmesh.api.openapi import openapi_document, openapi_root
from funcmesh.model.kinds import ALL


def test_version_claims_kubernetes_1_32() -> None:
    info = version_info()
    assert (info["major"], info["minor"], info["gitVersion"]) == ("1", "32", "v1.32.0")
    assert "/" in info["platform"]


def test_every_named_group_is_listed() -> None:
    groups = {g["name"] for g in api_group_list()["groups"]}
    assert groups == {rt.group for rt in ALL if rt.group}
    assert api_group("") is None
    assert api_group("nope.io") is None


def test_resource_lists_carry_every_kind_and_subresource() -> None:
    for rt in ALL:
        document = api_resource_list(rt.group, rt.version)
        assert document is not None
        (entry,) = [r for r in document["resources"] if r["name"] == rt.plural]
        assert entry["kind"] == rt.kind
        assert entry["singularName"] == rt.singular
        assert entry["namespaced"] == rt.namespaced
    assert api_resource_list("kubeless.io", "v1") is None


def test_aggregated_discovery_separates_core_and_named_groups() -> None:
    core = aggregated_discovery(core=True, version="v2")
    named = aggregated_discovery(core=False, version="v2beta1")
    assert [item["metadata"]["name"] for item in core["items"]] == [""]
    assert named["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    pods = next(r for r in core["items"][0]["versions"][0]["resources"] if r["resource"] == "pods")
    assert pods["verbs"] == ["delete", "get", "list", "watch"]  # deleting a pod stops it
    assert pods["subresources"] == [
        {
            "subresource": "log",
            "responseKind": {"group": "", "version": "v1", "kind": "Pod"},
            "verbs": ["get"],
        }
    ]


def patch_operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path: item["patch"] for path, item in document["paths"].items() if "patch" in item}


def test_openapi_lets_kubectl_rely_on_server_side_validation() -> None:
    root = openapi_root()["paths"]
    assert "apis/kubeless.io/v1beta1" in root
    assert root["api/v1"]["serverRelativeURL"].startswith("/openapi/v3/api/v1?hash=")
    document = openapi_document("kubeless.io", "v1beta1")
    assert document is not None
    patches = patch_operations(document)
    [patch] = [op for path, op in patches.items() if path.endswith("/functions/{name}")]
    assert patch["x-kubernetes-group-version-kind"] == {
        "group": "kubeless.io",
        "version": "v1beta1",
        "kind": "Function",
    }
    assert {"name": "fieldValidation", "in": "query"}.items() <= patch["parameters"][0].items()


def test_openapi_has_no_writes_for_read_only_kinds() -> None:
    document = openapi_document("", "v1")
    assert document is not None
    patched_paths = patch_operations(document)
    assert not any("/pods" in path for path in patched_paths)
    assert any(path.endswith("/namespaces/{name}") for path in patched_paths)
    assert openapi_document("nope.io", "v1") is None
