"""Kubernetes REST paths and the verbs of requests."""

from __future__ import annotations

import pytest

from funcmesh.api.paths import ResourcePath, parse_resource_path, verb_for
from funcmesh.api.status import MethodNotAllowed
from funcmesh.errors import NotFound
from funcmesh.model.kinds import FUNCTION, NAMESPACE, POD

K = ("kubeless.io", "v1beta1")
CORE = ("", "v1")


@pytest.mark.parametrize(
    ("group_version", "path", "expected"),
    [
        (K, "functions", ResourcePath(rt=FUNCTION, namespace=None)),
        (K, "namespaces/default/functions", ResourcePath(rt=FUNCTION, namespace="default")),
        (K, "namespaces/ns1/functions/f", ResourcePath(rt=FUNCTION, namespace="ns1", name="f")),
        (
            K,
            "namespaces/a/functions/f/status",
            ResourcePath(rt=FUNCTION, namespace="a", name="f", subresource="status"),
        ),
        (K, "watch/namespaces/a/functions", ResourcePath(rt=FUNCTION, namespace="a", watch=True)),
        (CORE, "namespaces", ResourcePath(rt=NAMESPACE, namespace=None)),
        (CORE, "namespaces/team", ResourcePath(rt=NAMESPACE, namespace=None, name="team")),
        (
            CORE,
            "namespaces/team/status",
            ResourcePath(rt=NAMESPACE, namespace=None, name="team", subresource="status"),
        ),
        (CORE, "namespaces/team/pods", ResourcePath(rt=POD, namespace="team")),
        (
            CORE,
            "namespaces/team/pods/p/log",
            ResourcePath(rt=POD, namespace="team", name="p", subresource="log"),
        ),
        (CORE, "pods", ResourcePath(rt=POD, namespace=None)),
    ],
)
def test_parse_resource_path(
    group_version: tuple[str, str], path: str, expected: ResourcePath
) -> None:
    assert parse_resource_path(*group_version, path.split("/"), path="/x") == expected


@pytest.mark.parametrize(
    ("group_version", "path"),
    [
        (K, "widgets"),
        (K, "functions/f"),  # a namespaced object needs its namespace
        (K, "namespaces/a/functions/f/status/extra"),
        (K, "namespaces//functions"),
        (CORE, "functions"),  # served by another group
        (("example.com", "v1"), "things"),
        (K, ""),
    ],
)
def test_unknown_paths_are_not_found(group_version: tuple[str, str], path: str) -> None:
    with pytest.raises(NotFound, match="/the/path"):
        parse_resource_path(*group_version, path.split("/"), path="/the/path")


@pytest.mark.parametrize(
    ("method", "path", "watch", "verb"),
    [
        ("GET", ResourcePath(rt=FUNCTION, namespace="a"), False, "list"),
        ("GET", ResourcePath(rt=FUNCTION, namespace="a"), True, "watch"),
        ("GET", ResourcePath(rt=FUNCTION, namespace="a", watch=True), False, "watch"),
        ("GET", ResourcePath(rt=FUNCTION, namespace="a", name="f"), False, "get"),
        ("POST", ResourcePath(rt=FUNCTION, namespace="a"), False, "create"),
        ("PUT", ResourcePath(rt=FUNCTION, namespace="a", name="f"), False, "update"),
        ("PATCH", ResourcePath(rt=FUNCTION, namespace="a", name="f"), False, "patch"),
        ("DELETE", ResourcePath(rt=FUNCTION, namespace="a", name="f"), False, "delete"),
        ("GET", ResourcePath(rt=POD, namespace=None), False, "list"),
        ("DELETE", ResourcePath(rt=POD, namespace="a", name="p"), False, "delete"),
    ],
)
def test_verbs(method: str, path: ResourcePath, watch: bool, verb: str) -> None:
    assert verb_for(method, path, watch_requested=watch) == verb


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("POST", ResourcePath(rt=FUNCTION, namespace="a", name="f"), "not supported"),
        ("PUT", ResourcePath(rt=FUNCTION, namespace="a"), "not supported"),
        ("PUT", ResourcePath(rt=POD, namespace="a", name="p"), "read-only"),
        ("PATCH", ResourcePath(rt=POD, namespace="a", name="p"), "read-only"),
        ("POST", ResourcePath(rt=FUNCTION, namespace=None), "inside a namespace"),
        (
            "DELETE",
            ResourcePath(rt=FUNCTION, namespace="a", name="f", subresource="status"),
            "functions/status",
        ),
        ("OPTIONS", ResourcePath(rt=FUNCTION, namespace="a"), "not supported"),
    ],
)
def test_verbs_that_are_not_allowed(method: str, path: ResourcePath, message: str) -> None:
    with pytest.raises(MethodNotAllowed, match=message):
        verb_for(method, path, watch_requested=False)
