"""Cluster DNS through a real ``funcmesh up``: Services made with the CLI are found with ``dig``
and with ``funcmesh dns lookup`` as a user types them, and follow changes."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest
import yaml

from tests.e2e.conftest import FUNCMESH, Daemon, free_ports, work_dir_for

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
DIG = shutil.which("dig")
pytestmark = pytest.mark.skipif(DIG is None, reason="dig missing: apt-get install bind9-dnsutils")


def dig(daemon: Daemon, *args: str) -> str:
    assert DIG is not None
    command = [DIG, "@127.0.0.1", "-p", str(daemon.dns_port), *args, "+tries=1", "+time=3"]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=20).stdout


def short(daemon: Daemon, *args: str) -> list[str]:
    return sorted(dig(daemon, *args, "+short").split())


def status(daemon: Daemon, name: str) -> str:
    header = [line for line in dig(daemon, name).splitlines() if "status:" in line]
    return header[0].split("status:")[1].split(",")[0].strip()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


def apply(daemon: Daemon, tmp_path: Path, *objects: dict[str, Any]) -> None:
    path = tmp_path / f"objects-{time.monotonic_ns()}.yaml"
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    daemon.run("apply", "-f", str(path))


def cluster_ip(daemon: Daemon, name: str, namespace: str = "default") -> str:
    table = daemon.run("get", "services", "-n", namespace).stdout.splitlines()
    return next(line.split()[2] for line in table[1:] if line.split()[0] == name)


def service(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def test_a_service_is_found_by_dig_and_dns_lookup_and_gone_when_deleted(
    daemon: Daemon, tmp_path: Path
) -> None:
    web = "web.default.svc.cluster.local"
    # no pod matches the selector: DNS answers the ClusterIP all the same
    apply(daemon, tmp_path, service("web", selector={"app": "web"}, ports=[
        {"name": "http", "port": 80, "targetPort": 8080}
    ]))  # fmt: skip
    ip = cluster_ip(daemon, "web")
    wait_until(lambda: short(daemon, web) == [ip], f"{web} resolves to {ip}")

    lookup = daemon.run("dns", "lookup", "web").stdout
    srv = daemon.run("dns", "lookup", "_http._tcp.web", "SRV").stdout

    assert short(daemon, web, "+tcp") == [ip]
    assert f"Address:\t127.0.0.1#{daemon.dns_port}" in lookup
    assert f"Name:\t{web}\nAddress: {ip}" in lookup
    assert f"_http._tcp.{web}\tservice = 0 100 80 {web}." in srv
    assert daemon.run("dns", "lookup", ip).stdout.endswith(f"name = {web}.\n")

    daemon.run("delete", "service", "web")
    wait_until(lambda: status(daemon, web) == "NXDOMAIN", f"{web} is gone")
    gone = daemon.run("dns", "lookup", "web", check=False)
    assert gone.returncode == 1
    assert "** server can't find web: NXDOMAIN" in gone.stdout


def test_a_function_is_found_by_its_name(daemon: Daemon, tmp_path: Path) -> None:
    code = tmp_path / "hello.py"
    code.write_text("def handler(event, context):\n    return 'hello'\n")
    daemon.run(
        "function", "deploy", "hello", "--runtime", RUNTIME, "--handler", "hello.handler",
        "--from-file", str(code),
    )  # fmt: skip
    try:
        wait_until(lambda: "hello" in daemon.run("get", "services").stdout, "hello has a Service")
        ip = cluster_ip(daemon, "hello")

        wait_until(
            lambda: short(daemon, "hello.default.svc.cluster.local") == [ip], "hello resolves"
        )
        assert f"Address: {ip}" in daemon.run("dns", "lookup", "hello.default").stdout
        other = daemon.run("dns", "lookup", "hello", "-n", "elsewhere", check=False)
        assert other.returncode == 1  # the search list of namespace "elsewhere" does not find it
    finally:
        daemon.run("function", "delete", "hello", check=False)


def test_headless_user_endpoints_and_external_names(daemon: Daemon, tmp_path: Path) -> None:
    endpoints = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": "legacy"},
        "subsets": [
            {
                "addresses": [{"ip": "127.128.250.1"}, {"ip": "127.128.250.2"}],
                "ports": [{"name": "pg", "port": 5432}],
            }
        ],
    }
    apply(
        daemon,
        tmp_path,
        service("legacy", clusterIP="None", ports=[{"name": "pg", "port": 5432}]),
        endpoints,
        service("search", type="ExternalName", externalName="search.example.test"),
    )
    name = "legacy.default.svc.cluster.local"

    wait_until(
        lambda: short(daemon, name) == ["127.128.250.1", "127.128.250.2"],
        "the headless Service answers its endpoints",
    )
    assert short(daemon, f"127-128-250-2.{name}") == ["127.128.250.2"]
    assert short(daemon, "search.default.svc.cluster.local", "CNAME") == ["search.example.test."]


def test_the_zone_itself(daemon: Daemon) -> None:
    kube_dns = cluster_ip(daemon, "kube-dns", namespace="kube-system")

    assert short(daemon, "dns-version.cluster.local", "TXT") == ['"1.1.0"']
    assert short(daemon, "cluster.local", "NS") == ["ns.dns.cluster.local."]
    assert short(daemon, "kube-dns.kube-system.svc.cluster.local") == [kube_dns]
    assert status(daemon, "nothing.default.svc.cluster.local") == "NXDOMAIN"


def test_the_banner_names_the_dns_address(daemon: Daemon) -> None:
    addresses = f"127.0.0.1:{daemon.dns_port}"
    if os.geteuid() == 0:  # root also serves the kube-dns Service's address, port 53
        kube_dns = ipaddress.ip_network(daemon.service_cidr).network_address + 10
        addresses += f", {kube_dns}:53"
    assert f"DNS:        {addresses} (UDP and TCP" in daemon.log_tail(200)


def test_the_kube_dns_address_answers_on_port_53(daemon: Daemon) -> None:
    if os.geteuid() != 0:
        pytest.skip("port 53 needs root")
    kube_dns = str(ipaddress.ip_network(daemon.service_cidr).network_address + 10)
    query = dns.message.make_query("kube-dns.kube-system.svc.cluster.local", "A")
    answer = dns.query.udp(query, kube_dns, port=53, timeout=5)
    assert [rrset.to_text().split()[-1] for rrset in answer.answer] == [kube_dns]


def test_a_busy_dns_address_names_its_flag(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        api_port, gateway_port, tls_port = free_ports(3)
        result = subprocess.run(
            [
                FUNCMESH, "up", "--api-addr", f"127.0.0.1:{api_port}",
                "--gateway-addr", f"127.0.0.1:{gateway_port}",
                "--gateway-tls-addr", f"127.0.0.1:{tls_port}",
                "--dns-addr", f"127.0.0.1:{port}",
            ],
            env={
                **os.environ,
                "FUNCMESH_HOME": str(tmp_path / "home"),
                "FUNCMESH_WORK_DIR": str(work_dir_for(tmp_path / "home")),
                "FUNCMESH_SERVICE_CIDR": "127.125.250.0/24",
            },
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    assert result.returncode == 1
    assert f"cannot listen for the DNS server on 127.0.0.1:{port}" in result.stderr
    assert "(see --dns-addr)" in result.stderr
