"""Service VIPs through a real ``funcmesh up``: Services and Endpoints applied as YAML, a backend
the test runs, and the VIP of a function's Service.

The daemon allocates ClusterIPs from its own /24 (``FUNCMESH_SERVICE_CIDR``, see conftest), so
VIPs of parallel test daemons never meet; ports are above 1024 so that no root is needed.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
VIP_PORT = 8088


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
    assert {get(url) for _ in range(6)} == {"one /some/path", "two /some/path"}

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
        except OSError as exc:
            failures.append(repr(exc))


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"needs {SYSTEM_PYTHON}")
def test_a_deployment_pod_deleted_under_load_costs_at_most_the_call_in_flight(
    daemon: Daemon, tmp_path: Path
) -> None:
    manifest = DEPLOYMENT_YAML.format(
        python=SYSTEM_PYTHON, server=json.dumps(POD_SERVER), port=VIP_PORT
    )
    apply(daemon, tmp_path, manifest)
    url = f"http://{cluster_ip(daemon, 'names')}:{VIP_PORT}/"
    wait_until(lambda: answers(url) and len({get(url) for _ in range(4)}) == 2, "both pods")
    first_pods = {get(url) for _ in range(4)}

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
