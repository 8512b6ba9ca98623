"""The machine's real kubectl changes objects of a real ``funcmesh up``: ``kubectl apply`` of a
changed Deployment or Service (kubectl sends a strategic merge patch with ``$setElementOrder``
and ``$patch: delete``), ``kubectl patch`` of one container, and ``kubectl apply`` of a changed
Function (kubectl sends custom resources a JSON merge patch). Each change must be "configured"
and in effect: new pods with the new environment and arguments, the VIP on the new port.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import Daemon

KUBECTL = Path("/usr/bin/kubectl")
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
DEADLINE_S = 30.0
# The pod says what it was started with, then serves HTTP on its pod IP.
SCRIPT = (
    'echo "greeting=$GREETING extra=$EXTRA a=$A args=$*"; '
    'exec python3 -m http.server "$PORT" --bind "$HOST"'
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

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "--cache-dir",
             str(self.home / "cache"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=False,
        )  # fmt: skip

    def ok(self, *args: str, stdin: str | None = None) -> str:
        result = self.run(*args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def apply(self, *manifests: dict[str, Any]) -> list[str]:
        """``kubectl apply -f -`` of the manifests; its output lines."""
        return self.ok("apply", "-f", "-", stdin=yaml.safe_dump_all(manifests)).splitlines()

    def json(self, *args: str) -> Any:
        return json.loads(self.ok("get", *args, "-o", "json"))


@pytest.fixture
def kubectl(daemon: Daemon, tmp_path: Path) -> Kubectl:
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(kubeconfig=daemon.home / "kubeconfig", home=home)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def deployment(name: str, *, replicas: int, env: dict[str, str], args: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": ["sh", "-c", SCRIPT, "sh"],
                            "args": args,
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/", "port": "http"},
                                "periodSeconds": 1,
                            },
                        }
                    ],
                },
            },
        },
    }


def rolled_out_pods(kubectl: Kubectl, name: str, count: int) -> list[str]:
    """The pod names once the rollout is done and only ``count`` pods are left."""
    kubectl.ok("rollout", "status", f"deployment/{name}", f"--timeout={int(DEADLINE_S)}s")

    def names() -> list[str]:
        pods = kubectl.json("pods", "-l", f"app={name}")["items"]
        return [pod["metadata"]["name"] for pod in pods]

    found: list[str] = wait_for(lambda: len(n := names()) == count and n, f"{count} pods")
    return found


def started_with(kubectl: Kubectl, pod: str) -> str:
    """What the pod printed first: its environment and arguments."""

    def line() -> str:
        found = [entry for entry in kubectl.ok("logs", pod).splitlines() if "greeting=" in entry]
        return "greeting=" + found[0].partition("greeting=")[2] if found else ""

    first: str = wait_for(line, f"the first log line of {pod}")
    return first


def test_kubectl_apply_of_a_changed_deployment(kubectl: Kubectl) -> None:
    first = deployment(
        "changing", replicas=1, env={"GREETING": "hello", "EXTRA": "1"}, args=["one"]
    )
    assert kubectl.apply(first) == ["deployment.apps/changing created"]
    [pod] = rolled_out_pods(kubectl, "changing", 1)
    assert started_with(kubectl, pod) == "greeting=hello extra=1 a= args=one"

    changed = deployment("changing", replicas=2, env={"GREETING": "bonjour"}, args=["two", "3"])
    assert kubectl.apply(changed) == ["deployment.apps/changing configured"]

    pods = rolled_out_pods(kubectl, "changing", 2)
    assert pod not in pods
    for new in pods:
        assert started_with(kubectl, new) == "greeting=bonjour extra= a= args=two 3"
    stored = kubectl.json("deployment", "changing")
    assert stored["spec"]["replicas"] == 2
    [container] = stored["spec"]["template"]["spec"]["containers"]
    assert container["env"] == [{"name": "GREETING", "value": "bonjour"}]
    assert container["args"] == ["two", "3"]
    assert container["ports"][0]["containerPort"] == 8000

    assert kubectl.apply(changed) == ["deployment.apps/changing unchanged"]
    kubectl.ok("delete", "deployment", "changing")


def test_kubectl_patch_merges_into_one_container(kubectl: Kubectl) -> None:
    kubectl.apply(deployment("patched", replicas=1, env={"GREETING": "hi"}, args=["x"]))
    [pod] = rolled_out_pods(kubectl, "patched", 1)
    before = kubectl.json("deployment", "patched")["spec"]["template"]["spec"]["containers"][0]

    patch = (
        '{"spec":{"template":{"spec":{"containers":'
        '[{"name":"web","env":[{"name":"A","value":"1"}]}]}}}}'
    )
    assert kubectl.ok("patch", "deployment", "patched", "-p", patch).strip() == (
        "deployment.apps/patched patched"
    )

    [container] = kubectl.json("deployment", "patched")["spec"]["template"]["spec"]["containers"]
    assert container == {**before, "env": [*before["env"], {"name": "A", "value": "1"}]}
    [new] = rolled_out_pods(kubectl, "patched", 1)
    assert new != pod
    assert started_with(kubectl, new) == "greeting=hi extra= a=1 args=x"
    kubectl.ok("delete", "deployment", "patched")


def http_status(url: str) -> int | None:
    """The status of GET ``url``; None when nothing listens there."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:
        return None


def service(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "served"},
        "spec": {"selector": {"app": "served"}, "ports": ports},
    }


def test_kubectl_apply_of_a_service_with_changed_ports(kubectl: Kubectl) -> None:
    web = deployment("served", replicas=1, env={}, args=[])
    http = {"name": "http", "port": 8081, "targetPort": "http"}
    assert kubectl.apply(web, service([http])) == [
        "deployment.apps/served created",
        "service/served created",
    ]
    vip = kubectl.json("service", "served")["spec"]["clusterIP"]
    wait_for(lambda: http_status(f"http://{vip}:8081/") == 200, "the VIP on port 8081")

    alt = {"name": "alt", "port": 8083, "targetPort": 8000}
    changed = [{**http, "port": 8082}, alt]
    assert kubectl.apply(web, service(changed))[1] == "service/served configured"

    spec = kubectl.json("service", "served")["spec"]
    assert spec["clusterIP"] == vip
    ports = [(p["name"], p["port"], p["targetPort"], p["protocol"]) for p in spec["ports"]]
    assert ports == [("http", 8082, "http", "TCP"), ("alt", 8083, 8000, "TCP")]
    header, row = kubectl.ok("get", "service", "served").splitlines()
    assert row.split()[4] == "8082/TCP,8083/TCP"
    wait_for(lambda: http_status(f"http://{vip}:8082/") == 200, "the VIP on port 8082")
    wait_for(lambda: http_status(f"http://{vip}:8083/") == 200, "the VIP on port 8083")
    wait_for(lambda: http_status(f"http://{vip}:8081/") is None, "port 8081 to close")
    kubectl.ok("delete", "service", "served")
    kubectl.ok("delete", "deployment", "served")


FUNCTION = """
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: applied
spec:
  runtime: {runtime}
  handler: applied.handler
  function-content-type: text
  deps: ""
  function: |
    def handler(event, context):
        return "{answer}"
"""


def test_kubectl_apply_and_patch_of_a_changed_function(daemon: Daemon, kubectl: Kubectl) -> None:
    """kubectl sends a Function (a custom resource) a JSON merge patch on apply, and a strategic
    merge patch on ``kubectl patch``: funcmesh takes both."""
    manifest = FUNCTION.format(runtime=RUNTIME, answer="first")
    assert kubectl.ok("apply", "-f", "-", stdin=manifest).strip() == (
        "function.kubeless.io/applied created"
    )
    call = f"{daemon.gateway_url}/function/applied"
    wait_for(lambda: httpx.get(call, timeout=30).text == "first", "the first version")

    changed = manifest.replace('"first"', '"second"')
    assert kubectl.ok("apply", "-f", "-", stdin=changed).strip() == (
        "function.kubeless.io/applied configured"
    )
    wait_for(lambda: httpx.get(call, timeout=30).text == "second", "the second version")

    patched = kubectl.ok("patch", "function", "applied", "-p", '{"spec":{"timeout":"7"}}')
    assert patched.strip() == "function.kubeless.io/applied patched"
    spec = kubectl.json("function", "applied")["spec"]
    assert (spec["timeout"], spec["handler"]) == ("7", "applied.handler")
    kubectl.ok("delete", "function", "applied")
