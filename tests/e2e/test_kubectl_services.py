"""The machine's real kubectl shows funcmesh's Services and Endpoints as it shows a cluster's:
``kubectl apply`` of a Service, ``kubectl get services -o wide``, ``kubectl get endpoints``."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import Daemon

KUBECTL = Path("/usr/bin/kubectl")
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        not KUBECTL.exists(), reason="needs the machine's kubectl at /usr/bin/kubectl"
    ),
]


def kubectl(daemon: Daemon, home: Path, *args: str) -> str:
    result = subprocess.run(
        [str(KUBECTL), "--kubeconfig", str(daemon.home / "kubeconfig"), "--cache-dir",
         str(home / "cache"), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    return result.stdout


def table(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines()]


def test_kubectl_get_services_wide_and_endpoints(daemon: Daemon, tmp_path: Path) -> None:
    code = tmp_path / "seen.py"
    code.write_text("def handler(event, context):\n    return 'seen'\n")
    daemon.run(
        "function", "deploy", "seen", "--runtime", RUNTIME, "--handler", "seen.handler",
        "--from-file", str(code),
    )  # fmt: skip
    chosen = str(ipaddress.ip_network(daemon.service_cidr).network_address + 8)
    manifest = tmp_path / "service.yaml"
    manifest.write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "kweb"},
                    "spec": {
                        "clusterIP": chosen,
                        "selector": {"app": "kweb"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                    },
                },
                {
                    "apiVersion": "v1",
                    "kind": "Endpoints",
                    "metadata": {"name": "kext"},
                    "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 9}]}],
                },
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "kext"},
                    "spec": {"ports": [{"port": 9}]},
                },
            ]
        )
    )
    home = tmp_path / "kubectl-home"
    home.mkdir()
    applied = kubectl(daemon, home, "apply", "-f", str(manifest))
    assert "service/kweb created" in applied

    header, *services = table(kubectl(daemon, home, "get", "services", "-o", "wide"))
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    by_name = {row[0]: row for row in services}
    assert by_name["kweb"][1:5] == ["ClusterIP", chosen, "<none>", "80/TCP"]
    assert by_name["kweb"][6] == "app=kweb"
    assert by_name["seen"][1] == "ClusterIP"
    assert by_name["seen"][4] == "8080/TCP"
    assert by_name["seen"][6] == "function=seen"

    deadline = time.monotonic() + 10
    while True:
        header, *endpoints = table(kubectl(daemon, home, "get", "endpoints"))
        found = {row[0]: row[1] for row in endpoints}
        if "kweb" in found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert header == ["NAME", "ENDPOINTS", "AGE"]
    assert found["kweb"] == "<none>"
    assert found["kext"] == "127.0.0.1:9"

    dns = table(kubectl(daemon, home, "get", "svc", "kube-dns", "-n", "kube-system"))
    assert dns[1][4] == "53/UDP,53/TCP"

    kubectl(daemon, home, "delete", "-f", str(manifest))
    daemon.run("function", "delete", "seen")
