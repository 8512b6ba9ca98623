"""The machine's real kubectl against a real ``funcmesh up``: discovery, functions, pods, delete.

kubectl reads the kubeconfig the daemon wrote (server, CA, token) and gets its tables from the
daemon; the function it lists is one the daemon really runs, and the pods are its instances.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import Daemon, alive

KUBECTL = Path("/usr/bin/kubectl")
KUBECTL_TIMEOUT_S = 30.0
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
CODE = (
    "import os\n\ndef handler(event, context):\n"
    "    return '%s %d' % (os.environ['POD_NAME'], os.getpid())\n"
)

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        not KUBECTL.exists(), reason="needs the machine's kubectl at /usr/bin/kubectl"
    ),
]


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path
    home: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "--cache-dir",
             str(self.home / "cache"), *args],
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_S,
            env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=False,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout


@pytest.fixture
def kubectl(daemon: Daemon, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(kubeconfig=daemon.home / "kubeconfig", home=home)


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


def test_api_versions_lists_kubeless(kubectl: Kubectl) -> None:
    versions = kubectl.ok("api-versions").split()

    assert "kubeless.io/v1beta1" in versions
    assert "v1" in versions


def test_a_deployed_function_and_its_pods_through_kubectl(
    daemon: Daemon, kubectl: Kubectl, tmp_path: Path
) -> None:
    source = tmp_path / "viewed.py"
    source.write_text(CODE)
    daemon.run(
        "function", "deploy", "viewed", "--runtime", RUNTIME, "--handler", "viewed.handler",
        "--from-file", str(source),
    )  # fmt: skip

    header, *functions = rows(kubectl.ok("get", "functions"))
    assert header == ["NAME", "RUNTIME", "HANDLER", "STATUS", "AGE"]
    assert ["viewed", RUNTIME, "viewed.handler", "Ready"] in [row[:4] for row in functions]

    manifest = yaml.safe_load(kubectl.ok("get", "function", "viewed", "-o", "yaml"))
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeless.io/v1beta1", "Function")
    assert manifest["spec"]["handler"] == "viewed.handler"
    assert manifest["spec"]["function"] == CODE
    assert manifest["metadata"]["labels"]["function"] == "viewed"
    [ready] = [c for c in manifest["status"]["conditions"] if c["type"] == "Ready"]
    assert ready["status"] == "True"

    pod, pid = httpx.get(f"{daemon.gateway_url}/function/viewed", timeout=30).text.split()
    header, *pods = rows(kubectl.ok("get", "pods", "-l", "function=viewed"))
    assert header == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [row[:3] for row in pods] == [[pod, "1/1", "Running"]]

    deleted = kubectl.ok("delete", "function", "viewed")

    assert deleted.strip() == 'function.kubeless.io "viewed" deleted'
    missing = kubectl.run("get", "function", "viewed")
    assert missing.returncode == 1
    assert 'functions.kubeless.io "viewed" not found' in missing.stderr

    def pods_gone() -> bool:
        return kubectl.ok("get", "pods", "-l", "function=viewed", "-o", "name") == ""

    wait_until(pods_gone, "the function's pods are gone")
    wait_until(lambda: not alive({int(pid)}), "the instance's process is gone")
    assert httpx.get(f"{daemon.gateway_url}/function/viewed").status_code == 404


def test_kubectl_create_secret_is_stored_with_its_values(daemon: Daemon, kubectl: Kubectl) -> None:
    """kubectl's typed client sends the Secret as protobuf; the values must arrive intact."""
    created = kubectl.ok(
        "create", "secret", "generic", "kubectl-db",
        "--from-literal=password=s3cr3t", "--from-literal=user=admin",
    )  # fmt: skip
    assert created.strip() == "secret/kubectl-db created"

    secret = yaml.safe_load(kubectl.ok("get", "secret", "kubectl-db", "-o", "yaml"))
    assert secret["type"] == "Opaque"
    assert secret["data"] == {"password": "czNjcjN0", "user": "YWRtaW4="}
    kubectl.ok("delete", "secret", "kubectl-db")
