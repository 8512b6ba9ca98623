"""A pod's DNS settings and the resolv.conf and hosts files written from them."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.model.pod_dns import (
    cluster_first_config,
    pod_hostname,
    pod_hosts,
    resolv_conf,
    search_domains,
)


def test_the_search_list_is_the_kubelets() -> None:
    assert search_domains("team") == [
        "team.svc.cluster.local",
        "svc.cluster.local",
        "cluster.local",
    ]
    assert search_domains("a", "corp.zone") == ["a.svc.corp.zone", "svc.corp.zone", "corp.zone"]


def test_a_cluster_first_pod_has_this_resolv_conf() -> None:
    config = cluster_first_config("default", "127.96.0.10")

    assert config == {
        "nameservers": ["127.96.0.10"],
        "searches": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        "options": [{"name": "ndots", "value": "5"}],
    }
    assert resolv_conf(config) == (
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 127.96.0.10\n"
        "options ndots:5\n"
    )


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, ""),
        ({"nameservers": ["10.0.0.1"]}, "nameserver 10.0.0.1\n"),
        (  # at most three nameservers: the resolver reads no more
            {"nameservers": ["1.1.1.1", "2.2.2.2", "3.3.3.3", "4.4.4.4"]},
            "nameserver 1.1.1.1\nnameserver 2.2.2.2\nnameserver 3.3.3.3\n",
        ),
        (
            {"options": [{"name": "edns0"}, {"name": "timeout", "value": "2"}]},
            "options edns0 timeout:2\n",
        ),
        (  # garbage from a hand-written object is left out, never written as a broken line
            {
                "nameservers": "10.0.0.1",
                "searches": ["ok.local", 7, "two words", "new\nline", ""],
                "options": [{"value": "1"}, "ndots", {"name": "a b"}, {"name": "x", "value": 3}],
            },
            "search ok.local\noptions x\n",
        ),
    ],
)
def test_resolv_conf_from_any_dns_config(config: dict[str, Any], expected: str) -> None:
    assert resolv_conf(config) == expected


def test_the_hosts_file_names_the_pod_on_its_ip() -> None:
    hosts = pod_hosts(ip="127.128.0.7", pod_name="web-abc-xyz12", namespace="default")

    assert hosts.startswith("# funcmesh-managed hosts file.\n127.0.0.1\tlocalhost\n")
    assert hosts.endswith("\n127.128.0.7\tweb-abc-xyz12\n")


def test_a_hostname_and_subdomain_give_the_fully_qualified_name() -> None:
    hosts = pod_hosts(
        ip="127.128.0.7", pod_name="db-abc-xyz12", namespace="team", hostname="db-0",
        subdomain="db",
    )  # fmt: skip

    assert hosts.endswith("\n127.128.0.7\tdb-0.db.team.svc.cluster.local\tdb-0\n")


@pytest.mark.parametrize(
    ("pod", "hostname", "expected"),
    [
        ("web-abc-xyz12", None, "web-abc-xyz12"),
        ("web-abc-xyz12", "front", "front"),
        ("a" * 62 + "-b", None, "a" * 62),  # 63 characters at most, no trailing dash
    ],
)
def test_the_host_name_of_a_pod(pod: str, hostname: str | None, expected: str) -> None:
    assert pod_hostname(pod, hostname) == expected
