"""Processes that funcmesh starts find Services by name, through a real ``funcmesh up``: Python
and Node functions (the names shims, any user), workloads and ``funcmesh exec`` (their own
resolv.conf in a private mount namespace, when the daemon is root), and the Kubernetes service
variables in all of them.

One daemon for the module: the function ``hello`` and the workload Service ``web`` are made
once; every test names its own callers."""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Daemon, random_service_cidr, start_daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
SYSTEM_PYTHON = "/usr/bin/python3"  # workloads of a root daemon run as nobody: not the venv's
WEB_PORT = 8081
DEADLINE_S = 30.0
HELLO = "def handler(event, context):\n    return 'hello from the hello function'\n"
PYTHON_CALLER = """\
import os
import urllib.request


def handler(event, context):
    with urllib.request.urlopen("http://hello:8080", timeout=10) as answer:
        body = answer.read().decode()
    return f"{body}|{os.environ['HELLO_SERVICE_HOST']}|{os.environ['HELLO_SERVICE_PORT']}"
"""
NODE_CALLER = """\
const http = require('http');

module.exports = {
  handler: () => new Promise((resolve, reject) => {
    http.get('http://hello.default:8080', (answer) => {
      let body = '';
      answer.on('data', (chunk) => { body += chunk; });
      answer.on('end', () => resolve(
        `${body}|${process.env.HELLO_SERVICE_HOST}|${process.env.HELLO_SERVICE_PORT}`));
    }).on('error', reject);
  }),
};
"""
WEB_SERVER = """\
import http.server, os
class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("web " + os.environ["POD_NAME"]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Web).serve_forever()
"""
CLIENT_SCRIPT = f"""\
getent hosts web.default.svc.cluster.local
echo "short: `getent hosts web`"
{SYSTEM_PYTHON} -c 'import urllib.request; print("answer:", urllib.request.urlopen("http://web:{WEB_PORT}/", timeout=10).read().decode())'
echo "hello=$HELLO_SERVICE_HOST:$HELLO_SERVICE_PORT"
echo "host=`hostname`"
exec sleep 3600
"""  # noqa: E501 - one line of shell

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a private resolv.conf needs a root daemon (mount namespaces)"
)
needs_system_python = pytest.mark.skipif(
    not Path(SYSTEM_PYTHON).exists(), reason=f"needs {SYSTEM_PYTHON}"
)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get_json(daemon: Daemon, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(daemon.run("get", *args, "-o", "json").stdout)
    return document


def cluster_ip(daemon: Daemon, service: str) -> str:
    return str(get_json(daemon, "service", service)["spec"]["clusterIP"])


def kube_dns_ip(daemon: Daemon) -> str:
    return str(ipaddress.ip_network(daemon.service_cidr).network_address + 10)


def deploy_function(
    daemon: Daemon, directory: Path, name: str, code: str, *, runtime: str, suffix: str = "py"
) -> None:
    path = directory / f"{name}.{suffix}"
    path.write_text(code)
    result = daemon.run(
        "function", "deploy", name, "--runtime", runtime, "--handler", f"{name}.handler",
        "--from-file", str(path),
    )  # fmt: skip
    assert result.stdout.splitlines()[-1] == f"Function {name} is ready", result.stdout


def call(daemon: Daemon, name: str) -> str:
    answer = httpx.get(f"{daemon.gateway_url}/function/{name}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.text


def pods_of(daemon: Daemon, deployment: str) -> list[dict[str, Any]]:
    pods: list[dict[str, Any]] = get_json(daemon, "pods", "-l", f"app={deployment}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def running_pod(daemon: Daemon, deployment: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pods = pods_of(daemon, deployment)
        ready = [p for p in pods if p["status"]["containerStatuses"][0]["ready"]]
        return ready[0] if ready else None

    pod: dict[str, Any] = wait_for(check, f"a ready pod of {deployment}")
    return pod


def run_workload(daemon: Daemon, name: str, script: str, *, port: int | None = None) -> None:
    # No $(...) in scripts: funcmesh expands $(VAR) in commands as Kubernetes does.
    args = ["run", name, "--labels", f"app={name}", "--command", f"sh -c {shlex.quote(script)}"]
    if port is not None:
        args += ["--port", str(port)]
    daemon.run(*args)


def pod_log(daemon: Daemon, pod: dict[str, Any]) -> str:
    return daemon.run("logs", pod["metadata"]["name"]).stdout


@pytest.fixture(scope="module")
def hello(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The function every caller asks for by name; its ClusterIP."""
    deploy_function(daemon, tmp_path_factory.mktemp("hello"), "hello", HELLO, runtime=RUNTIME)
    return cluster_ip(daemon, "hello")


@pytest.fixture(scope="module")
def web(daemon: Daemon, hello: str) -> Iterator[str]:
    """A workload behind the Service ``web`` (port 8081): its ClusterIP, once it has a ready
    endpoint. After ``hello``, so that its Service is in the workloads' environment."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"needs {SYSTEM_PYTHON}")
    run_workload(daemon, "web", f"exec {SYSTEM_PYTHON} -c {shlex.quote(WEB_SERVER)}", port=8000)
    daemon.run("expose", "deployment", "web", "--port", str(WEB_PORT), "--target-port", "8000")

    def endpoints_ready() -> bool:
        subsets = get_json(daemon, "endpoints", "web").get("subsets") or []
        return any(subset.get("addresses") for subset in subsets)

    wait_for(endpoints_ready, "a ready endpoint of web")
    yield cluster_ip(daemon, "web")
    daemon.run("delete", "deployment", "web")
    daemon.run("delete", "service", "web")


def test_a_python_function_calls_another_by_its_short_name(
    daemon: Daemon, hello: str, tmp_path: Path
) -> None:
    deploy_function(daemon, tmp_path, "pycaller", PYTHON_CALLER, runtime=RUNTIME)

    answer = call(daemon, "pycaller")

    assert answer == f"hello from the hello function|{hello}|8080"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_a_node_function_calls_another_by_name_and_namespace(
    daemon: Daemon, hello: str, tmp_path: Path
) -> None:
    config = daemon.run("get-server-config").stdout.splitlines()[1]
    [node] = [r for r in config.split(": ", 1)[1].split(", ") if r.startswith("nodejs")]
    deploy_function(daemon, tmp_path, "nodecaller", NODE_CALLER, runtime=node, suffix="js")

    answer = call(daemon, "nodecaller")

    assert answer == f"hello from the hello function|{hello}|8080"


@needs_root
@needs_system_python
def test_a_workload_resolves_services_with_its_own_resolv_conf(
    daemon: Daemon, hello: str, web: str
) -> None:
    run_workload(daemon, "resolver", CLIENT_SCRIPT)
    pod = running_pod(daemon, "resolver")
    name = pod["metadata"]["name"]

    log = wait_for(lambda: "host=" in (text := pod_log(daemon, pod)) and text, "its output")

    lines = [line.split() for line in log.splitlines()]
    assert [web, "web.default.svc.cluster.local"] in lines
    assert ["short:", web, "web.default.svc.cluster.local"] in lines
    assert ["answer:", "web", running_pod(daemon, "web")["metadata"]["name"]] in lines
    assert [f"hello={hello}:8080"] in lines
    assert [f"host={name}"] in lines
    assert pod["spec"]["dnsPolicy"] == "ClusterFirst"
    assert pod["spec"]["dnsConfig"] == {
        "nameservers": [kube_dns_ip(daemon)],
        "searches": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        "options": [{"name": "ndots", "value": "5"}],
    }
    daemon.run("delete", "deployment", "resolver")


@needs_root
@needs_system_python
def test_exec_gives_the_command_the_pods_dns_settings(daemon: Daemon, web: str) -> None:
    run_workload(daemon, "execed", "exec sleep 3600")
    pod = running_pod(daemon, "execed")
    name = pod["metadata"]["name"]

    by_name = daemon.run("exec", name, "--", "getent", "hosts", "web.default.svc.cluster.local")
    resolv_conf = daemon.run("exec", name, "--", "cat", "/etc/resolv.conf").stdout
    hostname = daemon.run("exec", name, "--", "hostname").stdout

    assert by_name.stdout.split() == [web, "web.default.svc.cluster.local"]
    assert f"nameserver {kube_dns_ip(daemon)}\n" in resolv_conf
    assert "options ndots:5\n" in resolv_conf
    assert hostname == f"{name}\n"
    assert socket.gethostname() != name  # the machine's stays as it was
    daemon.run("delete", "deployment", "execed")


@needs_root
@needs_system_python
def test_the_service_variables_of_a_workload(daemon: Daemon, hello: str, web: str) -> None:
    run_workload(daemon, "envshow", "exec sleep 3600")
    pod = running_pod(daemon, "envshow")

    env = daemon.run("exec", pod["metadata"]["name"], "--", "env").stdout.splitlines()

    assert f"HELLO_SERVICE_HOST={hello}" in env
    assert "HELLO_SERVICE_PORT=8080" in env
    assert f"WEB_SERVICE_HOST={web}" in env
    assert f"FUNCMESH_DNS_SERVER=127.0.0.1:{daemon.dns_port}" in env
    daemon.run("delete", "deployment", "envshow")


@needs_root
def test_without_the_kube_dns_address_workloads_keep_the_machines_resolv_conf(
    tmp_path: Path,
) -> None:
    """Another process holds the kube-dns address: a resolv.conf naming it would break every
    lookup of the pods, so they get none, and the daemon's log says why."""
    cidr = random_service_cidr()
    kube_dns = str(ipaddress.ip_network(cidr).network_address + 10)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((kube_dns, 53))
        running = start_daemon(
            tmp_path / "home",
            log_path=tmp_path / "daemon.log",
            extra_env={"FUNCMESH_SERVICE_CIDR": cidr},
        )
        try:
            run_workload(running, "plain", "exec sleep 3600")
            pod = running_pod(running, "plain")
            resolv_conf = running.run(
                "exec", pod["metadata"]["name"], "--", "cat", "/etc/resolv.conf"
            )
        finally:
            code = running.stop()
    assert code == 0, running.log_tail()
    assert "dnsConfig" not in pod["spec"]
    assert resolv_conf.stdout == Path("/etc/resolv.conf").read_text()
    assert "workloads keep the machine's /etc/resolv.conf" in running.log_tail(400)
