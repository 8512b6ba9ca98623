"""Strategic merge patch: the merge keys of each kind and every directive, table-driven.

The kubectl cases are the patches kubectl 1.32 really sends on ``kubectl apply`` of a changed
manifest (captured with ``-v=8``).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.api.patch import STRATEGIC_MERGE_PATCH, apply_patch
from funcmesh.api.status import BadRequest
from funcmesh.api.strategic_merge import MERGE_KEYS, merge_keys_for, strategic_merge_patch
from funcmesh.model.kinds import ALL


def deployment(**pod_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "template": {"spec": pod_spec}},
    }


def pod_spec_of(document: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = document["spec"]["template"]["spec"]
    return spec


WEB = {
    "name": "web",
    "image": "python:3.11",
    "command": ["sh", "-c", "python3 -m http.server $(PORT)"],
    "args": ["--verbose"],
    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
    "ports": [{"containerPort": 8000, "name": "http"}],
    "volumeMounts": [{"mountPath": "/data", "name": "data"}],
}
SIDECAR = {"name": "sidecar", "command": ["sleep", "inf"]}


def patch_deployment(document: dict[str, Any], pod_spec_patch: dict[str, Any]) -> Any:
    patch = {"spec": {"template": {"spec": pod_spec_patch}}}
    return apply_patch(STRATEGIC_MERGE_PATCH, document, patch)


# (what, pod spec before, pod spec patch, pod spec after)
POD_SPEC_CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    (
        "containers merge by name: other fields are kept",
        {"containers": [WEB]},
        {"containers": [{"name": "web", "image": "python:3.12"}]},
        {"containers": [{**WEB, "image": "python:3.12"}]},
    ),
    (
        "a container with a new name is added after the others",
        {"containers": [WEB]},
        {"containers": [SIDECAR]},
        {"containers": [WEB, SIDECAR]},
    ),
    (
        "env merges by name",
        {"containers": [WEB]},
        {"containers": [{"name": "web", "env": [{"name": "B", "value": "3"}, {"name": "C"}]}]},
        {
            "containers": [
                {
                    **WEB,
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "value": "3"},
                        {"name": "C"},
                    ],
                }
            ]
        },
    ),
    (
        "a container's ports merge by containerPort",
        {"containers": [WEB]},
        {"containers": [{"name": "web", "ports": [{"containerPort": 8000, "protocol": "TCP"}]}]},
        {
            "containers": [
                {**WEB, "ports": [{"containerPort": 8000, "name": "http", "protocol": "TCP"}]}
            ]
        },
    ),
    (
        "volumeMounts merge by mountPath",
        {"containers": [WEB]},
        {
            "containers": [
                {"name": "web", "volumeMounts": [{"mountPath": "/data", "readOnly": True}]}
            ]
        },
        {
            "containers": [
                {**WEB, "volumeMounts": [{"mountPath": "/data", "name": "data", "readOnly": True}]}
            ]
        },
    ),
    (
        "command and args are atomic: replaced whole",
        {"containers": [WEB]},
        {"containers": [{"name": "web", "args": ["--quiet"]}]},
        {"containers": [{**WEB, "args": ["--quiet"]}]},
    ),
    (
        "initContainers merge by name, with their env",
        {"initContainers": [{"name": "init", "command": ["true"], "env": [{"name": "X"}]}]},
        {"initContainers": [{"name": "init", "env": [{"name": "Y", "value": "y"}]}]},
        {
            "initContainers": [
                {
                    "name": "init",
                    "command": ["true"],
                    "env": [{"name": "X"}, {"name": "Y", "value": "y"}],
                }
            ]
        },
    ),
    (
        "volumes merge by name",
        {
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "c"}},
            ]
        },
        {"volumes": [{"name": "conf", "configMap": {"name": "d"}}]},
        {
            "volumes": [
                {"name": "data", "emptyDir": {}},
                {"name": "conf", "configMap": {"name": "d"}},
            ]
        },
    ),
    (
        "imagePullSecrets merge by name",
        {"imagePullSecrets": [{"name": "a"}]},
        {"imagePullSecrets": [{"name": "b"}]},
        {"imagePullSecrets": [{"name": "a"}, {"name": "b"}]},
    ),
    (
        "tolerations have no merge key: replaced whole",
        {"tolerations": [{"key": "a", "operator": "Exists"}]},
        {"tolerations": [{"key": "b", "operator": "Exists"}]},
        {"tolerations": [{"key": "b", "operator": "Exists"}]},
    ),
    (
        "$patch: delete removes the element with that key",
        {"containers": [WEB, SIDECAR]},
        {"containers": [{"name": "sidecar", "$patch": "delete"}]},
        {"containers": [WEB]},
    ),
    (
        "$patch: delete of a key that is not there changes nothing",
        {"containers": [WEB]},
        {"containers": [{"name": "gone", "$patch": "delete"}]},
        {"containers": [WEB]},
    ),
    (
        "$patch: delete in a nested list (one env variable)",
        {"containers": [WEB]},
        {"containers": [{"name": "web", "env": [{"name": "A", "$patch": "delete"}]}]},
        {"containers": [{**WEB, "env": [{"name": "B", "value": "2"}]}]},
    ),
    (
        "a $patch: replace element replaces the list with the other elements",
        {"containers": [WEB, SIDECAR]},
        {"containers": [{"name": "only", "command": ["true"]}, {"$patch": "replace"}]},
        {"containers": [{"name": "only", "command": ["true"]}]},
    ),
    (
        "$patch: replace on a map replaces it instead of merging",
        {"containers": [WEB], "securityContext": {"runAsUser": 1, "runAsGroup": 2}},
        {"securityContext": {"$patch": "replace", "runAsUser": 3}},
        {"containers": [WEB], "securityContext": {"runAsUser": 3}},
    ),
    (
        "$patch: delete on a map removes it, as null does",
        {"containers": [WEB], "securityContext": {"runAsUser": 1}, "dnsConfig": {"options": []}},
        {"securityContext": {"$patch": "delete"}, "dnsConfig": None},
        {"containers": [WEB]},
    ),
    (
        "$patch: merge on a map is the default",
        {"containers": [WEB], "securityContext": {"runAsUser": 1}},
        {"securityContext": {"$patch": "merge", "runAsGroup": 2}},
        {"containers": [WEB], "securityContext": {"runAsUser": 1, "runAsGroup": 2}},
    ),
    (
        "null removes a member of a list element",
        {"containers": [WEB]},
        {"containers": [{"name": "web", "image": None, "args": None}]},
        {"containers": [{k: v for k, v in WEB.items() if k not in ("image", "args")}]},
    ),
    (
        "nulls and directives in a new element do not reach the result",
        {"containers": [WEB]},
        {
            "containers": [
                {
                    "name": "new",
                    "image": None,
                    "$setElementOrder/env": [{"name": "X"}],
                    "env": [{"name": "X", "value": "x"}, {"name": "Y", "$patch": "delete"}],
                    "resources": {"limits": {"cpu": "1", "memory": None}},
                }
            ]
        },
        {
            "containers": [
                WEB,
                {
                    "name": "new",
                    "env": [{"name": "X", "value": "x"}],
                    "resources": {"limits": {"cpu": "1"}},
                },
            ]
        },
    ),
    (
        "$setElementOrder orders the merged list",
        {"containers": [WEB, SIDECAR]},
        {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [{"name": "web", "image": "x"}],
        },
        {"containers": [SIDECAR, {**WEB, "image": "x"}]},
    ),
    (
        "$setElementOrder alone reorders what is there",
        {"containers": [WEB, SIDECAR]},
        {"$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}]},
        {"containers": [SIDECAR, WEB]},
    ),
    (
        "$setElementOrder places a new element where it says",
        {"containers": [WEB]},
        {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "web"}],
            "containers": [SIDECAR],
        },
        {"containers": [SIDECAR, WEB]},
    ),
    (
        "elements only the target has keep their place between the patched ones",
        {"containers": [WEB, {"name": "injected"}, SIDECAR]},
        {
            "$setElementOrder/containers": [{"name": "web"}, {"name": "sidecar"}],
            "containers": [{"name": "sidecar", "image": "s"}],
        },
        {"containers": [WEB, {"name": "injected"}, {**SIDECAR, "image": "s"}]},
    ),
    (
        "$setElementOrder of an atomic list is ignored",
        {"tolerations": [{"key": "a"}, {"key": "b"}]},
        {"$setElementOrder/tolerations": [{"key": "b"}, {"key": "a"}]},
        {"tolerations": [{"key": "a"}, {"key": "b"}]},
    ),
    (
        "a value of another type is replaced (nulls of the new map dropped)",
        {"containers": [WEB], "affinity": ["odd"]},
        {"affinity": {"nodeAffinity": {"x": None, "y": 1}}},
        {"containers": [WEB], "affinity": {"nodeAffinity": {"y": 1}}},
    ),
]


@pytest.mark.parametrize(
    ("before", "patch", "after"),
    [case[1:] for case in POD_SPEC_CASES],
    ids=[case[0] for case in POD_SPEC_CASES],
)
def test_pod_spec_of_a_deployment(
    before: dict[str, Any], patch: dict[str, Any], after: dict[str, Any]
) -> None:
    document = deployment(**before)
    frozen_document, frozen_patch = copy.deepcopy(document), copy.deepcopy(patch)

    result = patch_deployment(document, patch)

    assert pod_spec_of(result) == after
    assert (result["spec"]["replicas"], result["metadata"]) == (1, {"name": "web"})
    assert (document, patch) == (frozen_document, frozen_patch)


def test_retain_keys_clears_the_fields_it_does_not_name() -> None:
    document = deployment(containers=[WEB])
    document["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, document, patch)

    assert result["spec"]["strategy"] == {"type": "Recreate"}
    assert pod_spec_of(result) == {"containers": [WEB]}


def test_a_pod_merges_its_spec_as_a_deployment_merges_its_template() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [WEB, SIDECAR]}}
    patch = {"spec": {"containers": [{"name": "web", "env": [{"name": "A", "value": "9"}]}]}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, pod, patch)

    env = [{"name": "A", "value": "9"}, {"name": "B", "value": "2"}]
    assert result["spec"]["containers"] == [{**WEB, "env": env}, SIDECAR]


SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "targetPort": 8000, "protocol": "TCP"},
            {"name": "admin", "port": 9000, "protocol": "TCP"},
        ],
    },
}


def test_service_ports_merge_by_port() -> None:
    patch = {"spec": {"ports": [{"port": 80, "targetPort": 8080}]}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, SERVICE, patch)

    assert result["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        {"name": "admin", "port": 9000, "protocol": "TCP"},
    ]
    assert result["spec"]["selector"] == {"app": "web"}


def test_endpoints_subsets_are_replaced_whole() -> None:
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 9}]}],
    }
    patch = {"subsets": [{"addresses": [{"ip": "127.0.0.2"}]}]}

    result = apply_patch(STRATEGIC_MERGE_PATCH, endpoints, patch)

    assert result["subsets"] == [{"addresses": [{"ip": "127.0.0.2"}]}]


@pytest.mark.parametrize(
    ("before", "patch", "after"),
    [
        (["a", "b"], {"finalizers": ["c", "a"]}, ["b", "c", "a"]),
        (["a", "b", "c"], {"$deleteFromPrimitiveList/finalizers": ["b", "x"]}, ["a", "c"]),
        (
            ["a", "b"],
            {
                "$setElementOrder/finalizers": ["c", "b", "a"],
                "finalizers": ["c"],
                "$deleteFromPrimitiveList/finalizers": ["a"],
            },
            ["c", "b"],
        ),
        (["a", "b"], {"finalizers": ["z", {"$patch": "replace"}]}, ["z"]),
        (["a"], {"finalizers": None}, None),
    ],
)
def test_finalizers_merge_as_a_set(before: list[str], patch: dict[str, Any], after: Any) -> None:
    document = {"apiVersion": "v1", "kind": "Secret", "metadata": {"finalizers": before}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, document, {"metadata": patch})

    assert result["metadata"].get("finalizers") == after


def test_owner_references_merge_by_uid() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1"}
    document = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"ownerReferences": [owner]}}
    patch = {"metadata": {"ownerReferences": [{"uid": "u1", "controller": True}]}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, document, patch)

    assert result["metadata"]["ownerReferences"] == [{**owner, "controller": True}]


ENV_A9 = [{"name": "A", "value": "9"}]


def test_a_function_merges_its_deployment_as_a_deployment() -> None:
    function = {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": "hello", "finalizers": ["a"]},
        "spec": {
            "handler": "hello.handler",
            "deployment": {"spec": {"template": {"spec": {"containers": [WEB]}}}},
            "service": {"ports": [{"port": 8080, "name": "http-function-port"}]},
            "horizontalPodAutoscaler": {"spec": {"metrics": [{"type": "Resource"}]}},
        },
    }
    patch = {
        "metadata": {"finalizers": ["b"]},
        "spec": {
            "deployment": {
                "spec": {"template": {"spec": {"containers": [{"name": "web", "env": ENV_A9}]}}}
            },
            "service": {"ports": [{"port": 8080, "targetPort": 8080}]},
            "horizontalPodAutoscaler": {"spec": {"metrics": [{"type": "Pods"}]}},
        },
    }

    result = apply_patch(STRATEGIC_MERGE_PATCH, function, patch)

    spec = result["spec"]
    containers = spec["deployment"]["spec"]["template"]["spec"]["containers"]
    assert containers == [{**WEB, "env": [*ENV_A9, {"name": "B", "value": "2"}]}]
    assert spec["service"]["ports"] == [
        {"port": 8080, "name": "http-function-port", "targetPort": 8080}
    ]
    assert spec["horizontalPodAutoscaler"]["spec"]["metrics"] == [{"type": "Pods"}]
    assert spec["handler"] == "hello.handler"
    assert result["metadata"]["finalizers"] == ["a", "b"]


def test_a_kind_without_merge_keys_replaces_its_lists_and_merges_its_maps() -> None:
    trigger = {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "HTTPTrigger",
        "metadata": {"name": "t", "labels": {"a": "1"}},
        "spec": {"function-name": "hello", "path": "x", "hosts": ["a.example", "b.example"]},
    }
    patch = {"metadata": {"labels": {"b": "2"}}, "spec": {"hosts": ["c.example"], "path": None}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, trigger, patch)

    assert result["metadata"]["labels"] == {"a": "1", "b": "2"}
    assert result["spec"] == {"function-name": "hello", "hosts": ["c.example"]}


def test_the_scale_subresource_takes_a_strategic_patch() -> None:
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 1}}

    assert apply_patch(STRATEGIC_MERGE_PATCH, scale, {"spec": {"replicas": 3}}) == {
        **scale,
        "spec": {"replicas": 3},
    }


def test_every_kind_with_lists_of_its_own_is_a_served_kind() -> None:
    served = {(rt.api_version, rt.kind) for rt in ALL}
    assert set(MERGE_KEYS) <= served
    assert merge_keys_for("example.com/v1", "Thing") == {
        "metadata.finalizers": "",
        "metadata.ownerReferences": "uid",
    }


def test_kubectl_apply_of_a_changed_deployment() -> None:
    """The patch kubectl apply sent after env A and replicas changed."""
    document = deployment(containers=[{**WEB, "env": [{"name": "A", "value": "1"}]}])
    patch = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "web"}],
                    "containers": [
                        {
                            "$setElementOrder/env": [{"name": "A"}],
                            "env": [{"name": "A", "value": "2"}],
                            "name": "web",
                        }
                    ],
                }
            },
        },
    }

    result = apply_patch(STRATEGIC_MERGE_PATCH, document, patch)

    assert result["spec"]["replicas"] == 2
    assert pod_spec_of(result)["containers"] == [{**WEB, "env": [{"name": "A", "value": "2"}]}]
    assert result["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/last-applied-configuration": "{}"
    }


def test_kubectl_apply_of_a_service_with_a_changed_port() -> None:
    """The patch kubectl apply sent after port 80 became 81: add 81, delete 80."""
    patch = {
        "spec": {
            "$setElementOrder/ports": [{"port": 81}, {"port": 9000}],
            "ports": [
                {"name": "http", "port": 81, "targetPort": 8000},
                {"$patch": "delete", "port": 80},
            ],
        }
    }

    result = apply_patch(STRATEGIC_MERGE_PATCH, SERVICE, patch)

    assert result["spec"]["ports"] == [
        {"name": "http", "port": 81, "targetPort": 8000},
        {"name": "admin", "port": 9000, "protocol": "TCP"},
    ]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"$patch": "delete"}, "cannot delete the whole object"),
        ({"spec": {"$patch": "frobnicate"}}, 'unknown "\\$patch: frobnicate"'),
        (
            {"spec": {"$sortOrder/x": []}},
            'unknown strategic merge patch directive "\\$sortOrder/x"',
        ),
        ({"spec": {"$setElementOrder/": []}}, "must name a list"),
        ({"spec": {"$setElementOrder/template": {"name": "x"}}}, "must name a list"),
        ({"spec": {"$retainKeys": "type"}}, "must be a list of field names"),
        ({"spec": {"$retainKeys": ["replicas"], "paused": True}}, '"paused" is in the patch'),
    ],
)
def test_malformed_directives_in_maps_are_bad_requests(patch: dict[str, Any], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        apply_patch(STRATEGIC_MERGE_PATCH, deployment(containers=[WEB]), patch)


@pytest.mark.parametrize(
    ("pod_spec_patch", "message"),
    [
        ({"containers": ["web"]}, 'containers": element 0 is not an object'),
        ({"containers": [{"image": "x"}]}, 'element 0 has no "name", the merge key'),
        ({"containers": [{"$patch": "delete"}]}, 'element 0 has no "name"'),
        ({"containers": [{"name": "web", "$patch": "replace"}]}, "must have no other fields"),
        ({"containers": [{"name": "web", "$patch": "nope"}]}, 'unknown "\\$patch: nope"'),
        (
            {"containers": [{"name": "web", "env": [{"value": "1"}]}]},
            'containers.env": element 0 has no "name"',
        ),
        (
            {"$setElementOrder/containers": [{"name": "web"}], "containers": [SIDECAR]},
            "'sidecar' is in the patch but not in",
        ),
        ({"$setElementOrder/containers": ["web"]}, 'entry must give "name"'),
        ({"tolerations": [{"key": "a", "$patch": "delete"}]}, "this list has no merge key"),
    ],
)
def test_malformed_list_patches_are_bad_requests(
    pod_spec_patch: dict[str, Any], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        patch_deployment(deployment(containers=[WEB]), pod_spec_patch)


@pytest.mark.parametrize(
    ("metadata_patch", "message"),
    [
        ({"finalizers": [{"name": "a"}]}, "set of strings or numbers"),
        ({"$deleteFromPrimitiveList/finalizers": [["a"]]}, "must list strings or numbers"),
        ({"$setElementOrder/finalizers": [{"a": 1}]}, "must list its values"),
        ({"$setElementOrder/finalizers": ["a"], "finalizers": ["b"]}, "'b' is in the patch"),
    ],
)
def test_malformed_set_patches_are_bad_requests(
    metadata_patch: dict[str, Any], message: str
) -> None:
    document = {"apiVersion": "v1", "kind": "Secret", "metadata": {"finalizers": ["a"]}}
    with pytest.raises(BadRequest, match=message):
        apply_patch(STRATEGIC_MERGE_PATCH, document, {"metadata": metadata_patch})


def test_a_replace_of_the_whole_object_keeps_only_the_patch() -> None:
    result = strategic_merge_patch(
        {"kind": "Secret", "data": {"a": "YQ=="}},
        {"$patch": "replace", "kind": "Secret", "stringData": {"b": "c"}},
        merge_keys=merge_keys_for("v1", "Secret"),
    )

    assert result == {"kind": "Secret", "stringData": {"b": "c"}}


def test_merge_keys_compare_as_json_values() -> None:
    """Port 80 is the port 80.0 of a patch, but the string "80" is another port."""
    patch = {"spec": {"ports": [{"port": 80.0, "name": "web"}, {"port": "80", "name": "odd"}]}}

    result = apply_patch(STRATEGIC_MERGE_PATCH, SERVICE, patch)

    assert [(p["port"], p["name"]) for p in result["spec"]["ports"]] == [
        (80.0, "web"),
        (9000, "admin"),
        ("80", "odd"),
    ]
