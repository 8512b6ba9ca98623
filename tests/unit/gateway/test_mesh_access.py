"""The data plane's AuthorizationPolicy check: which member's labels and port a decision uses,
what a denial answers, and the paths Istio refuses before any policy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from funcmesh.gateway.destinations import EndpointBackend
from funcmesh.gateway.mesh_access import Denial, MeshAccess
from funcmesh.gateway.messages import Request
from funcmesh.mesh.authz import Authorizer
from funcmesh.mesh.table import MeshTable
from funcmesh.model.istio_security import parse_authorization_policy

FRONTEND = "cluster.local/ns/default/sa/frontend"


class Function:
    """A function's pool as the gateway sees it (``runtime.pool.FunctionPool``'s shape)."""

    display_name = "default/hello"
    namespace = "default"

    def __init__(self, labels: Mapping[str, str]) -> None:
        self.labels = labels


class Pods:
    def __init__(self, labels: Mapping[str, Mapping[str, str]]) -> None:
        self._labels = labels

    def pod_labels(self, namespace: str, pod: str) -> Mapping[str, str] | None:
        return self._labels.get(pod)


def policy(name: str, spec: dict[str, Any]) -> Any:
    return parse_authorization_policy(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "default"},
            "spec": spec,
        }
    )


def request(target: bytes = b"/", *, principal: str = "") -> Request:
    return Request(
        method=b"GET",
        target=target,
        headers=[(b"Host", b"hello")],
        body=b"",
        keep_alive=True,
        http11=True,
        client_ip=b"127.0.0.1",
        principal=principal,
        mtls=bool(principal),
    )


@pytest.fixture
def table() -> MeshTable:
    return MeshTable()


@pytest.fixture
def access(table: MeshTable) -> MeshAccess:
    return MeshAccess(Authorizer(table), table)


def test_without_policies_everything_goes(access: MeshAccess) -> None:
    assert access.check(Function({}), request(), b"/", service_port=8080) is None


def test_an_allow_policy_selects_by_the_member_labels(table: MeshTable, access: MeshAccess) -> None:
    table.put_authorization_policy(
        policy(
            "frontend-only",
            {
                "selector": {"matchLabels": {"app": "hello"}},
                "rules": [{"from": [{"source": {"principals": [FRONTEND]}}]}],
            },
        )
    )
    hello, other = Function({"app": "hello", "function": "hello"}), Function({"app": "other"})
    denied = Denial(
        status=403,
        body="RBAC: access denied",
        details="rbac_access_denied_matched_policy[none]",
    )
    assert access.check(hello, request(), b"/", service_port=8080) == denied
    assert access.check(hello, request(principal=FRONTEND), b"/", service_port=8080) is None
    assert access.check(other, request(), b"/", service_port=8080) is None


@pytest.mark.parametrize(
    ("backend_port", "service_port", "denied"),
    [(9000, 80, True), (9001, 9000, False)],
)
def test_an_endpoint_is_checked_on_its_own_port(
    table: MeshTable, access: MeshAccess, backend_port: int, service_port: int, denied: bool
) -> None:
    table.put_authorization_policy(
        policy(
            "no-9000",
            {"action": "DENY", "rules": [{"to": [{"operation": {"ports": ["9000"]}}]}]},
        )
    )
    pods = Pods({"web-5d8f7c9b4-x7k2q": {"app": "web"}})
    endpoint = EndpointBackend(
        "default", ("127.128.0.9", backend_port), "web-5d8f7c9b4-x7k2q", pods=pods
    )
    found = access.check(endpoint, request(), b"/", service_port=service_port)
    assert (found is not None) == denied
    if found is not None:
        assert found.details == "rbac_access_denied_matched_policy[default.no-9000]"
    assert endpoint.labels == {"app": "web"}


def test_the_path_sent_is_checked_and_a_bad_one_refused(
    table: MeshTable, access: MeshAccess
) -> None:
    table.put_authorization_policy(
        policy(
            "no-admin",
            {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]},
        )
    )
    hello = Function({"app": "hello"})
    assert access.check(hello, request(b"/public"), b"/admin/x", service_port=8080) is not None
    assert access.check(hello, request(b"/admin/x"), b"/public", service_port=8080) is None
    assert access.check(hello, request(), b"/x/%2e%2e/admin", service_port=8080) is not None
    refused = access.check(hello, request(), b"/a%00b", service_port=8080)
    assert refused is not None
    assert (refused.status, refused.body) == (400, "Bad Request")
