"""What cluster DNS a workload pod gets, decided from where the DNS server answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from funcmesh.runtime.workload_dns import ClusterDns, pod_nameserver


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        ([("127.0.0.1", 5353), ("127.96.0.10", 53)], "127.96.0.10"),  # kube-dns served
        ([("127.0.0.1", 5353)], None),  # not root: no port 53, no resolv.conf
        ([("127.0.0.53", 53), ("127.96.0.10", 53)], "127.96.0.10"),
        ([("127.0.0.53", 53)], "127.0.0.53"),  # --dns-addr on port 53 will do
        ([("0.0.0.0", 53)], "127.0.0.1"),
        ([("::", 53)], "::1"),
    ],
)
def test_the_nameserver_a_pod_resolv_conf_names(
    addresses: list[tuple[str, int]], expected: str | None
) -> None:
    assert pod_nameserver(addresses, kube_dns_ip="127.96.0.10") == expected


def test_every_pod_gets_the_variables_the_function_shims_read() -> None:
    dns = ClusterDns(server="127.0.0.1:5353")

    assert dns.environment("team") == {
        "FUNCMESH_DNS_SERVER": "127.0.0.1:5353",
        "FUNCMESH_DNS_SEARCH": "team.svc.cluster.local svc.cluster.local cluster.local",
    }


@pytest.mark.parametrize(
    "dns",
    [
        ClusterDns(server="127.0.0.1:5353"),  # not root
        ClusterDns(server="127.0.0.1:5353", etc_root=Path("/x")),  # root, kube-dns not served
        ClusterDns(server="127.0.0.1:5353", nameserver="127.96.0.10"),
    ],
)
def test_without_root_or_a_port_53_pods_keep_the_machines_files(dns: ClusterDns) -> None:
    assert dns.pod_etc(namespace="default", pod="web-1", ip="127.128.0.9") is None


def test_a_pods_files_are_written_for_it_and_removed(tmp_path: Path) -> None:
    dns = ClusterDns(server="127.0.0.1:5353", nameserver="127.96.0.10", etc_root=tmp_path)
    etc = dns.pod_etc(namespace="team", pod="web-1", ip="127.128.0.9")
    assert etc is not None

    etc.write()

    assert etc.directory == tmp_path / "team_web-1"
    assert etc.hostname == "web-1"
    assert etc.dns_config["nameservers"] == ["127.96.0.10"]
    resolv = (etc.directory / "resolv.conf").read_text()
    assert resolv.splitlines() == [
        "search team.svc.cluster.local svc.cluster.local cluster.local",
        "nameserver 127.96.0.10",
        "options ndots:5",
    ]
    hosts = etc.directory / "hosts"
    assert hosts.read_text().endswith("127.128.0.9\tweb-1\n")
    assert hosts.stat().st_mode & 0o777 == 0o644  # the pod's user (nobody) reads them
    etc.remove()
    assert not etc.directory.exists()
