"""The real kubectl against the API server: discovery, tables, YAML, apply, delete.

kubectl reads the kubeconfig that ``ensure_kubeconfig`` writes (server URL, CA, bearer token),
so these tests also check that file end to end. The machine's ``/usr/bin/kubectl`` is a
dispatcher that picks a kubectl 1.27-1.33 from the server's ``/version``.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from funcmesh.api.pki import ensure_kubeconfig, ensure_pki
from funcmesh.api.providers import ApiProviders
from funcmesh.api.server import ApiServer
from funcmesh.errors import NotFound
from funcmesh.model.function import parse_function
from funcmesh.model.kinds import FUNCTION, ResourceType
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store

KUBECTL = Path("/usr/bin/kubectl")
KUBECTL_TIMEOUT_S = 20.0
POD: RawObject = {
    "metadata": {
        "name": "hello-7x2kq",
        "namespace": "default",
        "creationTimestamp": "2024-01-01T00:00:00Z",
    },
    "spec": {"containers": [{"name": "function"}], "nodeName": "localhost"},
    "status": {
        "phase": "Running",
        "podIP": "127.128.0.7",
        "containerStatuses": [{"name": "function", "ready": True, "restartCount": 2}],
    },
}
FUNCTION_YAML = """\
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: hello
spec:
  runtime: python3.11
  handler: hello.handler
  function: |
    def handler(event, context):
        return "hello"
"""

pytestmark = [
    pytest.mark.kubectl,
    pytest.mark.skipif(
        not KUBECTL.exists(), reason="needs the machine's kubectl at /usr/bin/kubectl"
    ),
]


class Admission:
    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        if rt != FUNCTION:
            return obj
        admitted = copy.deepcopy(obj)
        admitted["metadata"].setdefault("labels", {})["function"] = parse_function(obj).name
        return admitted


class Pods:
    def list_pods(self, namespace: str | None) -> list[RawObject]:
        return [POD] if namespace in (None, "default") else []

    def get_pod(self, namespace: str, name: str) -> RawObject:
        if (namespace, name) != ("default", POD["metadata"]["name"]):
            raise NotFound(f'pods "{name}" not found')
        return POD

    async def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, RawObject]]:
        await asyncio.Event().wait()
        yield "ADDED", POD


class Logs:
    def read_function_log(
        self, namespace: str, name: str, *, tail_lines: int | None, build: bool
    ) -> list[str]:
        return []

    async def follow_function_log(
        self, namespace: str, name: str, *, build: bool
    ) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""

    def read_pod_log(self, namespace: str, pod: str, *, tail_lines: int | None) -> list[str]:
        return ["handled GET / in 0.4 ms"]

    async def follow_pod_log(self, namespace: str, pod: str) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""


class NoStats:
    def function_stats(self, namespace: str, name: str) -> Mapping[str, Any]:
        return {}


class NoConfig:
    def server_config(self) -> Mapping[str, Any]:
        return {}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Kubectl:
    kubeconfig: Path
    home: Path

    async def run(self, *args: str, stdin: str | None = None) -> Result:
        process = await asyncio.create_subprocess_exec(
            str(KUBECTL),
            "--kubeconfig",
            str(self.kubeconfig),
            "--cache-dir",
            str(self.home / "cache"),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        try:
            async with asyncio.timeout(KUBECTL_TIMEOUT_S):
                out, err = await process.communicate(stdin.encode() if stdin else None)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def ok(self, *args: str, stdin: str | None = None) -> str:
        result = await self.run(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture
async def kubectl(tmp_path: Path) -> AsyncIterator[Kubectl]:
    identity = ensure_pki(tmp_path / "pki", hosts=["127.0.0.1"])
    store = await Store.open(tmp_path / "state.db")
    providers = ApiProviders(
        admission=Admission(), pods=Pods(), logs=Logs(), stats=NoStats(), config=NoConfig()
    )
    kubeconfig = tmp_path / "kubeconfig"
    server: ApiServer | None = None
    try:
        # the token must be known before the server starts; the URL after it has a port
        token = ensure_kubeconfig(
            kubeconfig, server_url="https://127.0.0.1:1", ca_pem=identity.ca_pem
        )
        server = ApiServer(
            store=store,
            providers=providers,
            token=token,
            ssl_context=identity.server_ssl_context(),
            host="127.0.0.1",
            port=0,
            gateway_url="http://127.0.0.1:1",
            metrics_registry=prometheus_client.CollectorRegistry(),
            is_ready=lambda: True,
        )
        await server.start()
        url = f"https://127.0.0.1:{server.bound_port}"
        assert ensure_kubeconfig(kubeconfig, server_url=url, ca_pem=identity.ca_pem) == token
        home = tmp_path / "home"
        home.mkdir()
        yield Kubectl(kubeconfig=kubeconfig, home=home)
    finally:
        if server is not None:
            await server.close()
        await store.close()


async def test_api_versions_lists_kubeless(kubectl: Kubectl) -> None:
    versions = (await kubectl.ok("api-versions")).split()
    assert "kubeless.io/v1beta1" in versions
    assert "v1" in versions


async def test_get_functions_prints_the_function_table(kubectl: Kubectl) -> None:
    assert "No resources found" in (await kubectl.run("get", "functions")).stderr
    await kubectl.ok("apply", "-f", "-", stdin=FUNCTION_YAML)
    header, row = (await kubectl.ok("get", "functions")).splitlines()
    assert header.split() == ["NAME", "RUNTIME", "HANDLER", "STATUS", "AGE"]
    assert row.split()[:4] == ["hello", "python3.11", "hello.handler", "Deploying"]


async def test_get_function_as_yaml(kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", "-", stdin=FUNCTION_YAML)
    manifest = await kubectl.ok("get", "function", "hello", "-o", "yaml")
    assert "kind: Function" in manifest
    assert "apiVersion: kubeless.io/v1beta1" in manifest
    assert "handler: hello.handler" in manifest
    assert "function: hello" in manifest  # the label admission added


async def test_apply_twice_configures_the_function(kubectl: Kubectl) -> None:
    created = await kubectl.ok("apply", "-f", "-", stdin=FUNCTION_YAML)
    changed = FUNCTION_YAML.replace("hello.handler", "hello.main")
    configured = await kubectl.ok("apply", "-f", "-", stdin=changed)
    assert created.strip() == "function.kubeless.io/hello created"
    assert configured.strip() == "function.kubeless.io/hello configured"
    handler = await kubectl.ok("get", "function", "hello", "-o", "jsonpath={.spec.handler}")
    assert handler == "hello.main"


async def test_invalid_function_shows_the_causes(kubectl: Kubectl) -> None:
    result = await kubectl.run(
        "apply", "-f", "-", stdin=FUNCTION_YAML.replace("hello.handler", "x")
    )
    assert result.returncode == 1
    assert 'The Function "hello" is invalid' in result.stderr
    assert "spec.handler" in result.stderr


async def test_delete_function(kubectl: Kubectl) -> None:
    await kubectl.ok("apply", "-f", "-", stdin=FUNCTION_YAML)
    deleted = await kubectl.ok("delete", "function", "hello")
    assert deleted.strip() == 'function.kubeless.io "hello" deleted'
    missing = await kubectl.run("get", "function", "hello")
    assert missing.returncode == 1
    assert 'functions.kubeless.io "hello" not found' in missing.stderr


async def test_get_namespaces(kubectl: Kubectl) -> None:
    lines = (await kubectl.ok("get", "ns")).splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AGE"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:]}
    assert rows == {"default": "Active", "kube-public": "Active", "kube-system": "Active"}


async def test_create_label_and_delete_a_namespace(kubectl: Kubectl) -> None:
    assert (await kubectl.ok("create", "namespace", "dev")).strip() == "namespace/dev created"
    await kubectl.ok("label", "namespace", "dev", "team=blue")
    labels = await kubectl.ok("get", "ns", "dev", "-o", "jsonpath={.metadata.labels.team}")
    assert labels == "blue"
    assert (await kubectl.ok("delete", "namespace", "dev")).strip() == 'namespace "dev" deleted'
    assert "dev" not in (await kubectl.ok("get", "ns", "-o", "name")).split()


async def test_get_pods_wide_and_logs(kubectl: Kubectl) -> None:
    header, row = (await kubectl.ok("get", "pods", "-o", "wide")).splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    cells = row.split()
    assert cells[:4] == ["hello-7x2kq", "1/1", "Running", "2"]
    assert cells[5:] == ["127.128.0.7", "localhost"]
    logs = await kubectl.ok("logs", "hello-7x2kq")
    assert logs == "handled GET / in 0.4 ms\n"


async def test_kubectl_is_refused_without_the_token(kubectl: Kubectl) -> None:
    text = kubectl.kubeconfig.read_text()
    token_line = next(line for line in text.splitlines() if "token:" in line)
    kubectl.kubeconfig.write_text(text.replace(token_line, "    token: wrong"))
    result = await kubectl.run("get", "functions")
    assert result.returncode == 1
    assert "You must be logged in to the server" in result.stderr
