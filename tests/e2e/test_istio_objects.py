"""Istio's objects as Istio's docs write them: ``kubectl apply -f`` (the machine's real kubectl)
and ``funcmesh apply -f`` store them under any served version, ``kubectl get`` shows Istio's
columns, and an object with a bad field is refused with 422 naming it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, api_client

KUBECTL = Path("/usr/bin/kubectl")

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        not KUBECTL.exists(), reason="needs the machine's kubectl at /usr/bin/kubectl"
    ),
]

# From Istio's docs (traffic shifting, request routing, authorization), unchanged
CANARY_YAML = """\
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v3
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  trafficPolicy:
    loadBalancer:
      simple: RANDOM
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["foo"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: STRICT
"""

GATEWAY_YAML = """\
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: bookinfo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 8080
      name: http
      protocol: HTTP
    hosts:
    - "*"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bookinfo
spec:
  hosts:
  - "*"
  gateways:
  - bookinfo-gateway
  http:
  - match:
    - uri:
        prefix: /productpage
    route:
    - destination:
        host: productpage
        port:
          number: 9080
    timeout: 10s
    retries:
      attempts: 3
      perTryTimeout: 2s
"""


def kubectl(
    daemon: Daemon, home: Path, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(daemon.home / "kubeconfig"), "--cache-dir",
         str(home / "cache"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_kubectl_serves_istio_versions(daemon: Daemon, tmp_path: Path) -> None:
    versions = kubectl(daemon, tmp_path, "api-versions").stdout.split()
    for version in (
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
        "security.istio.io/v1",
        "security.istio.io/v1beta1",
    ):
        assert version in versions


def test_kubectl_apply_and_get_istio_objects(daemon: Daemon, tmp_path: Path) -> None:
    manifest = tmp_path / "canary.yaml"
    manifest.write_text(CANARY_YAML)
    out = kubectl(daemon, tmp_path, "apply", "-f", str(manifest)).stdout
    assert "virtualservice.networking.istio.io/reviews created" in out
    assert "peerauthentication.security.istio.io/default created" in out
    again = kubectl(daemon, tmp_path, "apply", "-f", str(manifest)).stdout
    assert "virtualservice.networking.istio.io/reviews unchanged" in again

    table = rows(kubectl(daemon, tmp_path, "get", "virtualservices").stdout)
    assert table[0] == ["NAME", "GATEWAYS", "HOSTS", "AGE"]
    assert table[1][:2] == ["reviews", '["reviews"]']
    assert rows(kubectl(daemon, tmp_path, "get", "dr").stdout)[1][:2] == ["reviews", "reviews"]
    assert rows(kubectl(daemon, tmp_path, "get", "authorizationpolicies").stdout)[1][:2] == [
        "deny-foo",
        "DENY",
    ]
    assert rows(kubectl(daemon, tmp_path, "get", "pa").stdout)[1][:2] == ["default", "STRICT"]

    # stored once, served under every version, each in its own apiVersion
    for version in ("v1", "v1beta1", "v1alpha3"):
        resource = f"virtualservices.{version}.networking.istio.io"
        got = kubectl(
            daemon,
            tmp_path,
            "get",
            resource,
            "reviews",
            "-o",
            "jsonpath={.apiVersion} {.spec.http[1].route[1].weight}",
        )
        assert got.stdout == f"networking.istio.io/{version} 10"


def test_funcmesh_apply_and_get_istio_objects(daemon: Daemon, tmp_path: Path) -> None:
    manifest = tmp_path / "gateway.yaml"
    manifest.write_text(GATEWAY_YAML)
    daemon.run("apply", "-f", str(manifest))
    table = rows(daemon.run("get", "virtualservices", "bookinfo").stdout)
    assert table[1][:3] == ["bookinfo", '["bookinfo-gateway"]', '["*"]']
    assert rows(kubectl(daemon, tmp_path, "get", "gateways").stdout)[1][0] == "bookinfo-gateway"


def test_an_unsupported_field_is_refused_with_422_naming_it(daemon: Daemon, tmp_path: Path) -> None:
    bad = CANARY_YAML.split("---")[0].replace("  - route:", "  - corsPolicy: {}\n    route:")
    bad = bad.replace("weight: 10", "weight: 20")
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(bad.replace("name: reviews", "name: bad-reviews", 1))
    result = kubectl(daemon, tmp_path, "apply", "-f", str(manifest), check=False)
    assert result.returncode != 0
    assert "spec.http[1].corsPolicy" in result.stderr
    assert "sum to 110, not 100" in result.stderr

    with api_client(daemon) as client:
        response = client.post(
            "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices",
            json={
                "apiVersion": "networking.istio.io/v1beta1",
                "kind": "VirtualService",
                "metadata": {"name": "bad"},
                "spec": {
                    "hosts": ["a"],
                    "http": [{"route": [{"destination": {"host": "a"}}], "timeout": "10"}],
                },
            },
        )
        assert response.status_code == 422
        causes = response.json()["details"]["causes"]
        assert [cause["field"] for cause in causes] == ["spec.http[0].timeout"]
        assert (
            client.get(
                "/apis/networking.istio.io/v1/namespaces/default/virtualservices/bad"
            ).status_code
            == 404
        )
