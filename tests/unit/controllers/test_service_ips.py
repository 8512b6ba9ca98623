"""ClusterIP allocation: inside the range, random in the upper band, never twice, the kube-dns
address kept for kube-dns, a chosen IP checked (422 outside, 409 taken), freed on delete."""

from __future__ import annotations

import ipaddress
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from funcmesh.controllers.service_ips import KUBE_DNS, PENDING_S, ClusterIPs, ServiceRange
from funcmesh.errors import Conflict, Invalid, Unavailable
from funcmesh.model.kinds import SERVICE
from funcmesh.store.feed import Change


def service(name: str, cluster_ip: str = "", namespace: str = "default") -> dict[str, Any]:
    spec: dict[str, Any] = {"ports": [{"port": 80}], "selector": {"app": name}}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def change(kind: str, obj: dict[str, Any]) -> Change:
    return Change(type=kind, resource=SERVICE.key, object=obj, resource_version=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_allocated_ips_are_in_the_upper_band_and_not_handed_out_in_order() -> None:
    ips = ClusterIPs("127.96.0.0/16", rng=random.Random(7))
    got = [ips.admit(service(f"s{i}"), None)["spec"]["clusterIP"] for i in range(20)]
    network = ipaddress.ip_network("127.96.0.0/16")
    assert all(ipaddress.ip_address(ip) in network for ip in got)
    assert all(ipaddress.ip_address(ip) >= ipaddress.ip_address("127.96.1.0") for ip in got)
    assert len(set(got)) == 20
    offsets = [int(ipaddress.ip_address(ip)) for ip in got]
    assert offsets != list(range(offsets[0], offsets[0] + 20))  # random, not "first free"


def test_a_freed_ip_is_not_handed_out_again_at_once() -> None:
    ips = ClusterIPs("127.96.0.0/16", rng=random.Random(11))
    stored = ips.admit(service("a"), None)
    ips.observe(change("ADDED", stored))
    ips.observe(change("DELETED", stored))
    again = ips.admit(service("a"), None)
    assert again["spec"]["clusterIP"] != stored["spec"]["clusterIP"]


def test_the_kube_dns_address_goes_to_kube_dns_only() -> None:
    ips = ClusterIPs("127.97.3.0/28")  # 16 addresses: all of them in the lower band
    given = {ips.admit(service(f"s{i}"), None)["spec"]["clusterIP"] for i in range(13)}
    assert "127.97.3.10" not in given
    assert len(given) == 13  # .1-.14 but .10: the network and broadcast addresses are not used
    with pytest.raises(Unavailable, match="no ClusterIP is left in 127.97.3.0/28"):
        ips.admit(service("one-more"), None)
    dns = service(KUBE_DNS[1], "127.97.3.10", namespace=KUBE_DNS[0])
    assert ips.admit(dns, None)["spec"]["clusterIP"] == "127.97.3.10"


def test_a_chosen_ip_outside_the_range_is_invalid_and_a_taken_one_conflicts() -> None:
    ips = ClusterIPs("127.96.0.0/16")
    with pytest.raises(Invalid, match=r"not in the valid range.*127\.96\.0\.0/16") as caught:
        ips.admit(service("a", "127.95.0.1"), None)
    assert caught.value.causes[0].field == "spec.clusterIPs"
    with pytest.raises(Invalid, match="not in the valid range"):
        ips.admit(service("a", "127.96.255.255"), None)  # the broadcast address
    first = ips.admit(service("a", "127.96.0.50"), None)
    ips.observe(change("ADDED", first))
    with pytest.raises(Conflict, match=r"127\.96\.0\.50: provided IP is already allocated"):
        ips.admit(service("b", "127.96.0.50"), None)


def test_a_pending_ip_is_held_until_stored_or_expired() -> None:
    clock = Clock()
    ips = ClusterIPs("127.96.0.0/16", clock=clock)
    ips.admit(service("a", "127.96.0.60"), None)  # admitted, not stored yet
    with pytest.raises(Conflict):
        ips.admit(service("b", "127.96.0.60"), None)
    assert ips.admit(service("a", "127.96.0.60"), None)  # the same Service asks again: fine
    clock.now += PENDING_S + 1  # its create failed: the IP comes back by itself
    assert ips.admit(service("b", "127.96.0.60"), None)["spec"]["clusterIP"] == "127.96.0.60"


def test_the_same_service_asking_again_gets_its_pending_ip() -> None:
    ips = ClusterIPs("127.96.0.0/16")
    first = ips.admit(service("a"), None)["spec"]["clusterIP"]
    assert ips.admit(service("a"), None)["spec"]["clusterIP"] == first


def test_deleting_frees_and_an_update_keeps_the_ip() -> None:
    ips = ClusterIPs("127.96.0.0/16")
    stored = ips.admit(service("a", "127.96.0.70"), None)
    ips.observe(change("ADDED", stored))
    assert ips.owner_of("127.96.0.70") == ("default", "a")
    updated = ips.admit(service("a"), stored)  # kubectl replace without clusterIP
    assert updated["spec"]["clusterIP"] == "127.96.0.70"
    ips.observe(change("DELETED", stored))
    assert ips.owner_of("127.96.0.70") is None
    assert ips.admit(service("b", "127.96.0.70"), None)["spec"]["clusterIP"] == "127.96.0.70"


def test_load_knows_stored_services_after_a_restart() -> None:
    ips = ClusterIPs("127.96.0.0/24", rng=random.Random(1))
    stored = [service(f"s{i}", f"127.96.0.{i}") for i in range(1, 255) if i not in (10, 200)]
    ips.load(stored)
    assert ips.admit(service("new"), None)["spec"]["clusterIP"] == "127.96.0.200"
    with pytest.raises(Conflict):
        ips.admit(service("other", "127.96.0.5"), None)


def test_headless_and_external_name_services_take_no_ip() -> None:
    ips = ClusterIPs("127.96.0.0/16")
    assert ips.admit(service("h", "None"), None)["spec"]["clusterIP"] == "None"
    external = {"metadata": {"name": "x"}, "spec": {"type": "ExternalName", "externalName": "a.b"}}
    assert "clusterIP" not in ips.admit(external, None)["spec"]


def test_concurrent_admissions_never_share_an_ip() -> None:
    ips = ClusterIPs("127.96.0.0/24", rng=random.Random(3))  # small: collisions would show
    start = threading.Barrier(8)

    def admit_many(worker: int) -> list[str]:
        start.wait()
        return [ips.admit(service(f"w{worker}-{i}"), None)["spec"]["clusterIP"] for i in range(30)]

    with ThreadPoolExecutor(8) as pool:
        got = [ip for batch in pool.map(admit_many, range(8)) for ip in batch]
    assert len(got) == 240
    assert len(set(got)) == 240


def test_ranges_smaller_than_16_addresses_are_refused() -> None:
    with pytest.raises(Invalid, match="too small"):
        ServiceRange("127.96.0.0/29")
    with pytest.raises(Invalid, match="not a network"):
        ServiceRange("127.96.0.1/16")
    assert ServiceRange("127.96.0.0/16").dns_ip == "127.96.0.10"
