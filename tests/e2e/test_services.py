"""Services through a real ``funcmesh up`` and the CLI as a user types it: the Service every
Function gets, Service YAML (ClusterIP chosen or allocated, headless, ExternalName, user
Endpoints), ``expose deployment``, the errors, and ClusterIPs that survive a restart."""

from __future__ import annotations

import ipaddress
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Daemon, start_daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
CODE = "def handler(event, context):\n    return 'hello'\n"


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def rows(text: str) -> dict[str, list[str]]:
    """Table lines by their first cell."""
    return {line.split()[0]: line.split() for line in text.splitlines()[1:] if line.strip()}


def apply(daemon: Daemon, tmp_path: Path, *objects: dict[str, Any], check: bool = True) -> Any:
    path = tmp_path / f"objects-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return daemon.run("apply", "-f", str(path), check=check)


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def in_range(daemon: Daemon, ip: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(daemon.service_cidr)


def static_ip(daemon: Daemon, offset: int) -> str:
    """An address of the lower band, which the allocator leaves for IPs users choose."""
    return str(ipaddress.ip_network(daemon.service_cidr).network_address + offset)


@pytest.fixture
def hello(daemon: Daemon, tmp_path: Path) -> Iterator[str]:
    code = tmp_path / "hello.py"
    code.write_text(CODE)
    daemon.run(
        "function", "deploy", "hello", "--runtime", RUNTIME, "--handler", "hello.handler",
        "--from-file", str(code),
    )  # fmt: skip
    yield "hello"
    daemon.run("function", "delete", "hello", check=False)


def test_a_deployed_function_has_a_service_with_a_cluster_ip(daemon: Daemon, hello: str) -> None:
    table = rows(daemon.run("get", "services", "-o", "wide").stdout)
    name, kind, cluster_ip, external, ports, _age, selector = table[hello]
    assert (name, kind, external, ports, selector) == (
        hello, "ClusterIP", "<none>", "8080/TCP", f"function={hello}",
    )  # fmt: skip
    assert in_range(daemon, cluster_ip)
    # The Service is owned by the Function: its VIP calls the function through the gateway.
    wait_until(lambda: _status(f"http://{cluster_ip}:8080/") == 200, "the function's VIP answers")

    assert daemon.run("function", "call", hello).stdout.strip() == "hello"  # an instance runs
    pods = rows(daemon.run("get", "pods", "-o", "wide").stdout)
    pod_ip = next(row[5] for pod, row in pods.items() if pod.startswith(hello))
    wait_until(
        lambda: rows(daemon.run("get", "endpoints").stdout).get(hello, ["", ""])[1]
        == f"{pod_ip}:8080",
        "the function's Endpoints list its instance",
    )

    daemon.run("function", "delete", hello)
    wait_until(
        lambda: hello not in rows(daemon.run("get", "services").stdout),
        "the Service goes with its Function",
    )


def test_kube_dns_has_the_range_base_plus_10(daemon: Daemon) -> None:
    table = rows(daemon.run("get", "services", "-n", "kube-system").stdout)
    assert table["kube-dns"][1:5] == ["ClusterIP", static_ip(daemon, 10), "<none>", "53/UDP,53/TCP"]


def test_service_yaml_chosen_ip_headless_external_name_and_user_endpoints(
    daemon: Daemon, tmp_path: Path
) -> None:
    chosen = static_ip(daemon, 5)
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "db"},
        "subsets": [
            {"addresses": [{"ip": "127.0.0.1"}, {"ip": "127.0.0.2"}], "ports": [{"port": 5432}]}
        ],
    }
    apply(
        daemon,
        tmp_path,
        service("web", selector={"app": "web"}, clusterIP=chosen, ports=[{"port": 80}]),
        service("peers", clusterIP="None", selector={"app": "peer"}),
        service("mail", type="ExternalName", externalName="mail.example.org"),
        service("db", ports=[{"port": 5432}]),
        endpoints,
    )
    table = rows(daemon.run("get", "services", "-o", "wide").stdout)
    assert table["web"][1:5] == ["ClusterIP", chosen, "<none>", "80/TCP"]
    assert table["web"][6] == "app=web"
    assert table["peers"][1:5] == ["ClusterIP", "None", "<none>", "<none>"]
    assert table["mail"][1:5] == ["ExternalName", "<none>", "mail.example.org", "<none>"]
    assert table["db"][6] == "<none>"
    assert in_range(daemon, table["db"][2])

    wait_until(lambda: "web" in rows(daemon.run("get", "endpoints").stdout), "web's Endpoints")
    endpoints_table = rows(daemon.run("get", "endpoints").stdout)
    assert endpoints_table["db"][1] == "127.0.0.1:5432,127.0.0.2:5432"  # the user's, kept
    assert endpoints_table["web"][1] == "<none>"  # the selector matches no pod

    updated = service("web", selector={"app": "web"}, ports=[{"port": 81}])  # no clusterIP
    apply(daemon, tmp_path, updated)
    assert rows(daemon.run("get", "services").stdout)["web"][2:5] == [chosen, "<none>", "81/TCP"]
    for name in ("web", "peers", "mail", "db"):
        daemon.run("delete", "service", name)


def test_two_services_asking_for_the_same_cluster_ip_get_409(
    daemon: Daemon, tmp_path: Path
) -> None:
    ip = static_ip(daemon, 6)
    apply(daemon, tmp_path, service("first", clusterIP=ip, ports=[{"port": 80}]))
    result = apply(
        daemon, tmp_path, service("second", clusterIP=ip, ports=[{"port": 80}]), check=False
    )
    assert result.returncode == 1
    assert f"{ip}: provided IP is already allocated (to Service default/first)" in result.stderr
    assert "second" not in rows(daemon.run("get", "services").stdout)

    outside = apply(
        daemon, tmp_path, service("third", clusterIP="10.0.0.1", ports=[{"port": 80}]), check=False
    )
    assert outside.returncode == 1
    assert "provided IP is not in the valid range" in outside.stderr
    changed = apply(
        daemon, tmp_path, service("first", clusterIP=static_ip(daemon, 7), ports=[{"port": 80}]),
        check=False,
    )  # fmt: skip
    assert changed.returncode == 1
    assert "field is immutable" in changed.stderr
    bad = apply(daemon, tmp_path, service("bad", ports=[{"port": 0}]), check=False)
    assert bad.returncode == 1
    assert "spec.ports[0].port" in bad.stderr
    daemon.run("delete", "service", "first")


SERVER = (
    "import os, http.server as h\n"
    "h.HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), h.SimpleHTTPRequestHandler)"
    ".serve_forever()\n"
)
SYSTEM_PYTHON = "/usr/bin/python3"  # workloads of a root daemon run as nobody: not the venv's


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason=f"needs {SYSTEM_PYTHON}")
def test_expose_deployment(daemon: Daemon, tmp_path: Path) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "shop", "labels": {"app": "shop"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {
                    "containers": [
                        {
                            "name": "shop",
                            "image": "python:3",
                            "command": [SYSTEM_PYTHON, "-c", SERVER],
                            "ports": [{"containerPort": 8000, "name": "http"}],
                        }
                    ]
                },
            },
        },
    }
    apply(daemon, tmp_path, deployment)
    out = daemon.run("expose", "deployment", "shop", "--port", "80", "--target-port", "http")
    assert out.stdout.strip() == "service/shop exposed"
    table = rows(daemon.run("get", "services", "-o", "wide").stdout)
    assert table["shop"][4] == "80/TCP"
    assert table["shop"][6] == "app=shop"

    def endpoint_ips() -> list[str]:
        cell = rows(daemon.run("get", "endpoints").stdout).get("shop", ["", ""])[1]
        return sorted(cell.split(","))

    wait_until(lambda: len(endpoint_ips()) == 2, "both replicas are in the Endpoints")
    pods = rows(daemon.run("get", "pods", "-l", "app=shop", "-o", "wide").stdout)
    assert endpoint_ips() == sorted(f"{row[5]}:8000" for row in pods.values())
    vip = f"http://{table['shop'][2]}:80/"
    wait_until(lambda: _status(vip) == 200, "the VIP forwards to a replica")

    introspected = daemon.run("expose", "deployment", "shop", "--name", "shop-direct")
    assert introspected.stdout.strip() == "service/shop-direct exposed"
    assert rows(daemon.run("get", "services").stdout)["shop-direct"][4] == "8000/TCP"
    missing = daemon.run("expose", "deployment", "nowhere", check=False)
    assert missing.returncode == 1
    assert 'deployments.apps "nowhere" not found' in missing.stderr
    for name in ("shop", "shop-direct"):
        daemon.run("delete", "service", name)
    daemon.run("delete", "deployment", "shop")


def _status(url: str) -> int:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no HTTP proxy
    try:
        with direct.open(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


def test_cluster_ips_stay_across_a_restart(tmp_path: Path) -> None:
    home, log = tmp_path / "home", tmp_path / "daemon.log"
    first = start_daemon(home, log_path=log)
    try:
        apply(first, tmp_path, service("kept", ports=[{"port": 80}]))
        before = rows(first.run("get", "services").stdout)["kept"][2]
    finally:
        assert first.stop() == 0
    second = start_daemon(
        home, log_path=log, extra_env={"FUNCMESH_SERVICE_CIDR": first.service_cidr}
    )
    try:
        assert rows(second.run("get", "services").stdout)["kept"][2] == before
        dns = rows(second.run("get", "services", "-n", "kube-system").stdout)
        assert list(dns) == ["kube-dns"]  # not created twice
    finally:
        assert second.stop() == 0
