"""Service VIPs through a real ``funcmesh up``: Services and Endpoints applied as YAML, a backend
the test runs, and the VIP of a function's Service.

The daemon allocates ClusterIPs from its own /24 (``FUNCMESH_SERVICE_CIDR``, see conftest), so
VIPs of parallel test daemons never meet; ports are above 1024 so that no root is needed. Run as
root with ``nft`` installed, the daemon forwards plain Services by kernel NAT (an nftables table
of its own) and the tests here check that path, its table's life, and the daemon path too
(``FUNCMESH_VIP_NAT=off``); elsewhere every VIP is a listener in the daemon.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, start_daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
VIP_PORT = 8088
NFT = shutil.which("nft", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
KERNEL_NAT = os.geteuid() == 0 and NFT is not None
needs_kernel_nat = pytest.mark.skipif(
    not KERNEL_NAT, reason="kernel NAT needs root and nft (apt-get install nftables)"
)


@pytest.fixture(scope="module")
def userspace_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose every VIP is a listener in the daemon, root or not."""
    home = tmp_path_factory.mktemp("funcmesh-userspace")
    running = start_daemon(
        home / "home", log_path=home / "daemon.log", extra_env={"FUNCMESH_VIP_NAT": "off"}
    )
    try:
        yield running
    finally:
        assert running.stop() == 0, running.log_tail()


def nat_table(service_cidr: str) -> str | None:
    """``nft list table ip funcmesh_<cidr>`` (the name docs/service-vips.md gives), or None."""
    if NFT is None:
        return None
    name = "funcmesh_" + re.sub(r"[./]", "_", service_cidr)
    listed = subprocess.run([NFT, "list", "table", "ip", name], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else None


class Backend:
    """An HTTP server on a pod-style address that answers its name and the path."""

    def __init__(self, name: str, *, port: int = 0) -> None:
        self.name = name
        self.ip = f"127.133.{random.randint(0, 255)}.{random.randint(1, 254)}"
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"{backend.name} {self.path}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.ip, port), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


StartBackend = Callable[..., Backend]


@pytest.fixture
def backends() -> Iterator[StartBackend]:
    started: list[Backend] = []

    def start(name: str, port: int = 0) -> Backend:
        backend = Backend(name, port=port)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.stop()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def answers(url: str) -> bool:
    try:
        get(url)
    except OSError:
        return False
    return True


def refuses(ip: str, port: int) -> bool:
    started = time.monotonic()
    try:
        socket.create_connection((ip, port), timeout=5).close()
    except ConnectionRefusedError:
        assert time.monotonic() - started < 1.0, "the refusal was not at once"
        return True
    return False


def cluster_ip(daemon: Daemon, name: str) -> str:
    service = json.loads(daemon.run("get", "service", name, "-o", "json").stdout)
    ip = service["spec"]["clusterIP"]
    assert isinstance(ip, str)
    return ip


def service_yaml(name: str, *, selector: str | None = None) -> str:
    """A Service with one port, VIP_PORT -> 80 (the Endpoints say the real port)."""
    lines = [
        "apiVersion: v1",
        "kind: Service",
        "metadata:",
        f"  name: {name}",
        "spec:",
        *([f"  selector: {{app: {selector}}}"] if selector else []),
        "  ports:",
        "  - name: http",
        f"    port: {VIP_PORT}",
        "    targetPort: 80",
    ]
    return "\n".join(lines) + "\n"


def endpoints_yaml(name: str, backends: list[Backend]) -> str:
    addresses = "".join(f"  - ip: {b.ip}\n" for b in backends)
    assert len({b.port for b in backends}) == 1
    return f"""
apiVersion: v1
kind: Endpoints
metadata:
  name: {name}
subsets:
- addresses:
{addresses}  ports:
  - name: http
    port: {backends[0].port}
"""


def apply(daemon: Daemon, tmp_path: Path, text: str) -> None:
    path = tmp_path / f"manifest-{random.randint(0, 1 << 30)}.yaml"
    path.write_text(text)
    daemon.run("apply", "-f", str(path))


def test_a_service_without_selector_forwards_to_the_endpoints_the_user_wrote(
    daemon: Daemon, tmp_path: Path, backends: StartBackend
) -> None:
    one = backends("one")
    two = backends("two", one.port)  # one subset: every address serves the same port
    apply(daemon, tmp_path, service_yaml("manual"))
    ip = cluster_ip(daemon, "manual")
    assert ip.startswith(daemon.service_cidr.rsplit(".", 1)[0] + ".")
    assert refuses(ip, VIP_PORT)  # no Endpoints yet: refused at once, not left hanging

    apply(daemon, tmp_path, endpoints_yaml("manual", [one, two]))
    url = f"http://{ip}:{VIP_PORT}/some/path"
    wait_until(lambda: answers(url), "the VIP to answer")
    # kernel NAT picks an endpoint at random per connection: 24 calls miss one with p = 1e-7
    assert {get(url) for _ in range(24)} == {"one /some/path", "two /some/path"}

    apply(daemon, tmp_path, endpoints_yaml("manual", [one]))  # two is gone
    wait_until(lambda: {get(url) for _ in range(4)} == {"one /some/path"}, "two to leave")

    daemon.run("delete", "endpoints", "manual")
    wait_until(lambda: refuses(ip, VIP_PORT), "the VIP to refuse again")
    daemon.run("delete", "service", "manual")


def test_a_service_whose_selector_matches_nothing_refuses_connections(
    daemon: Daemon, tmp_path: Path
) -> None:
    apply(daemon, tmp_path, service_yaml("lonely", selector="nothing-has-this"))
    ip = cluster_ip(daemon, "lonely")

    time.sleep(0.2)  # let the endpoints controller and the feed run: still nothing to reach
    assert refuses(ip, VIP_PORT)
    daemon.run("delete", "service", "lonely")


FUNCTION_YAML = """
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: vipfn
  annotations:
    autoscaling.funcmesh.io/scale-to-zero-after: 1s
spec:
  runtime: {runtime}
  handler: vipfn.handler
  function-content-type: text
  function: |
    def handler(event, context):
        return 'vipfn at ' + event['extensions']['request'].path
"""


def function_pods(daemon: Daemon) -> list[str]:
    rows = daemon.run("get", "pods").stdout.splitlines()[1:]
    return [row.split()[0] for row in rows if row.startswith("vipfn-")]


def function_ready(daemon: Daemon) -> bool:
    function = json.loads(daemon.run("get", "function", "vipfn", "-o", "json").stdout)
    conditions = function.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_the_vip_of_a_function_calls_it_cold_start_included(daemon: Daemon, tmp_path: Path) -> None:
    apply(daemon, tmp_path, FUNCTION_YAML.format(runtime=RUNTIME))
    wait_until(lambda: function_ready(daemon), "the function to be ready", timeout_s=30)
    ip = cluster_ip(daemon, "vipfn")  # the Service every Function gets, port 8080
    wait_until(lambda: not function_pods(daemon), "the function to scale to zero")

    assert get(f"http://{ip}:8080/hello?x=1") == "vipfn at /hello"
    assert len(function_pods(daemon)) == 1  # the call started it

    daemon.run("delete", "function", "vipfn")
    wait_until(lambda: refuses(ip, 8080), "the function's VIP to go with it")


SYSTEM_PYTHON = "/usr/bin/python3"  # workloads of a root daemon run as nobody: not the venv's
POD_SERVER = (
    "import os, http.server as h\n"
    "class Name(h.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = os.environ['POD_NAME'].encode()\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "    def log_message(self, *args):\n"
    "        pass\n"
    "h.ThreadingHTTPServer((os.environ['HOST'], int(os.environ['PORT'])), Name).serve_forever()\n"
)
DEPLOYMENT_YAML = """
apiVersion: apps/v1
kind: Deployment
metadata: {{name: names}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: names}}}}
  template:
    metadata: {{labels: {{app: names}}}}
    spec:
      containers:
      - name: names
        command: [{python}, -c, {server}]
        ports: [{{name: http, containerPort: 8000}}]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: names}}
spec:
  selector: {{app: names}}
  ports: [{{name: http, port: {port}, targetPort: http}}]
"""


def calls_through(url: str, stop: threading.Event, answers: list[str], failures: list[str]) -> None:
    """One caller, a new connection per call, until ``stop``."""
    while not stop.is_set():
        try:
            answers.append(get(url))
        except (OSError, http.client.HTTPException) as exc:  # refused, cut, or a broken answer
            failures.append(repr(exc))


def deployment_manifest() -> str:
    return DEPLOYMENT_YAML.format(
        python=SYSTEM_PYTHON, server=json.dumps(POD_SERVER), port=VIP_PORT
    )


def pod_ips(daemon: Daemon, service: str) -> set[str]:
    """The ready addresses of the Service's Endpoints."""
    result = daemon.run("get", "endpoints", service, "-o", "json", check=False)
    if result.returncode != 0:
        return set()
    subsets = json.loads(result.stdout).get("subsets") or []
    return {a["ip"] for subset in subsets for a in subset.get("addresses") or []}


needs_system_python = pytest.mark.skipif(
    not Path(SYSTEM_PYTHON).exists(), reason=f"needs {SYSTEM_PYTHON}"
)


@pytest.fixture(scope="module", params=["kernel NAT", "VIP listener"])
def either_path(request: pytest.FixtureRequest) -> tuple[str, Daemon]:
    """The module's daemon (kernel NAT when root and nft), and one with FUNCMESH_VIP_NAT=off."""
    if request.param == "kernel NAT" and not KERNEL_NAT:
        pytest.skip("kernel NAT needs root and nft (apt-get install nftables)")
    fixture = "daemon" if request.param == "kernel NAT" else "userspace_daemon"
    return request.param, request.getfixturevalue(fixture)


@needs_system_python
def test_a_deployment_pod_deleted_under_load_costs_at_most_the_call_in_flight(
    either_path: tuple[str, Daemon], tmp_path: Path
) -> None:
    path, daemon = either_path
    apply(daemon, tmp_path, deployment_manifest())
    ip = cluster_ip(daemon, "names")
    url = f"http://{ip}:{VIP_PORT}/"
    wait_until(lambda: answers(url) and len({get(url) for _ in range(4)}) == 2, "both pods")
    first_pods = {get(url) for _ in range(4)}
    table = nat_table(daemon.service_cidr)
    if path == "kernel NAT":  # the Service's port is a DNAT rule to both pods
        assert table is not None
        assert re.search(
            rf"ip daddr {re.escape(ip)} tcp dport {VIP_PORT} dnat .*random mod 2", table
        )
    else:
        assert table is None  # FUNCMESH_VIP_NAT=off: the daemon changes no firewall

    stop, seen, failures = threading.Event(), list[str](), list[str]()
    caller = threading.Thread(target=calls_through, args=(url, stop, seen, failures))
    caller.start()
    try:
        wait_until(lambda: len(seen) > 20, "calls to flow")
        deleted = sorted(first_pods)[0]
        daemon.run("delete", "pod", deleted)
        wait_until(lambda: len(set(seen[-20:]) - first_pods) > 0, "the replacement pod")
        calls_after = len(seen)
        wait_until(lambda: len(seen) > calls_after + 20, "calls to go on")
    finally:
        stop.set()
        caller.join()

    assert len(failures) <= 1, failures  # one caller: at most its one call in flight
    assert deleted not in seen[-20:]
    daemon.run("delete", "deployment", "names")
    daemon.run("delete", "service", "names")


@needs_kernel_nat
@needs_system_python
def test_the_kernel_rules_live_with_the_daemon_and_a_restart_after_sigkill_replaces_them(
    tmp_path: Path,
) -> None:
    cidr = f"127.{random.randint(97, 126)}.{random.randint(0, 255)}.0/24"
    home, env = tmp_path / "home", {"FUNCMESH_SERVICE_CIDR": cidr}
    first = start_daemon(home, log_path=tmp_path / "first.log", extra_env=env)
    try:
        apply(first, tmp_path, deployment_manifest())
        ip = cluster_ip(first, "names")
        wait_until(lambda: answers(f"http://{ip}:{VIP_PORT}/"), "the VIP to answer", 30)
        wait_until(lambda: len(pod_ips(first, "names")) == 2, "two ready pods", 30)
        old_pods = pod_ips(first, "names")
        table = nat_table(cidr)
        assert table is not None
        assert f"ip daddr {ip} tcp dport {VIP_PORT} dnat" in table
        assert old_pods <= set(re.findall(r"127\.128\.\d+\.\d+", table))
    finally:
        first.stop(signal.SIGKILL)  # no chance to clean up: the table stays behind
    leftover = nat_table(cidr)
    assert leftover is not None
    assert f"ip daddr {ip} tcp dport" in leftover

    second = start_daemon(home, log_path=tmp_path / "second.log", extra_env=env)
    try:
        wait_until(lambda: len(pod_ips(second, "names") - old_pods) == 2, "two new pods", 30)
        wait_until(lambda: answers(f"http://{ip}:{VIP_PORT}/"), "the VIP to answer", 30)
        table = nat_table(cidr)
        assert table is not None
        assert f"ip daddr {ip} tcp dport {VIP_PORT} dnat" in table
        assert not old_pods & set(re.findall(r"127\.128\.\d+\.\d+", table))  # replaced
    finally:
        assert second.stop() == 0, second.log_tail()
    assert nat_table(cidr) is None  # SIGTERM: the table went with the daemon
    assert refuses(ip, VIP_PORT)
