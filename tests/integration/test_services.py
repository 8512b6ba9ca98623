"""Services against a real SQLite store: ClusterIPs that survive restarts and concurrent creates,
the kube-dns Service, the Service every Function gets, and the ServiceTable the DNS server and
the VIP listeners read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.function_services import FunctionServices
from funcmesh.controllers.service_ips import ClusterIPs, ensure_kube_dns
from funcmesh.discovery.service_feed import ServiceFeed
from funcmesh.discovery.services import ServiceTable
from funcmesh.errors import Conflict, NotFound, Unavailable
from funcmesh.model.kinds import ENDPOINTS, EVENT, FUNCTION, SERVICE
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store

SMALL_RANGE = "127.99.1.0/28"  # 14 usable addresses, .10 kept for kube-dns: 13 to allocate


def service(name: str, cluster_ip: str = "", **spec: Any) -> RawObject:
    body: dict[str, Any] = {"ports": [{"port": 80}], "selector": {"app": name}, **spec}
    if cluster_ip:
        body["clusterIP"] = cluster_ip
    return {"metadata": {"name": name, "namespace": "default"}, "spec": body}


def function(name: str, *, port: int | None = None, **labels: str) -> RawObject:
    spec: dict[str, Any] = {"handler": "h.f", "runtime": "python3.11", "function": "x"}
    if port is not None:
        spec["service"] = {"ports": [{"name": "http-function-port", "port": port}]}
    return {"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def create(store: Store, ips: ClusterIPs, obj: RawObject) -> RawObject:
    """What the API does: admission in a worker thread, then the store."""
    admitted = await asyncio.to_thread(ips.admit, obj, None)
    return await store.create(SERVICE, admitted)


async def test_cluster_ips_survive_a_restart(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db")
    ips = ClusterIPs(SMALL_RANGE)
    await ips.start(store)
    try:
        first = {
            (await create(store, ips, service(f"s{i}")))["spec"]["clusterIP"] for i in range(12)
        }
    finally:
        await ips.close()
        await store.close()
    assert len(first) == 12

    store = await Store.open(tmp_path / "state.db")  # the daemon starts again
    ips = ClusterIPs(SMALL_RANGE)
    await ips.start(store)
    try:
        last = (await create(store, ips, service("last")))["spec"]["clusterIP"]
        assert last not in first
        assert last != "127.99.1.10"
        with pytest.raises(Unavailable, match="no ClusterIP is left"):
            await create(store, ips, service("too-many"))
        with pytest.raises(Conflict, match="already allocated"):
            await create(store, ips, service("mine", sorted(first)[0]))
    finally:
        await ips.close()
        await store.close()


async def test_concurrent_creates_never_share_an_ip(store: Store) -> None:
    ips = ClusterIPs("127.99.2.0/24")
    await ips.start(store)
    try:
        created = await asyncio.gather(*(create(store, ips, service(f"s{i}")) for i in range(60)))
        got = [obj["spec"]["clusterIP"] for obj in created]
        assert len(set(got)) == 60
        assert all(int(ip.rsplit(".", 1)[1]) >= 16 for ip in got)  # the lower band is users'
        wanted = [create(store, ips, service(f"c{i}", "127.99.2.7")) for i in range(5)]
        results = await asyncio.gather(*wanted, return_exceptions=True)
        assert sum(1 for r in results if isinstance(r, dict)) == 1
        assert sum(1 for r in results if isinstance(r, Conflict)) == 4
    finally:
        await ips.close()


async def test_a_deleted_service_gives_its_ip_back(store: Store) -> None:
    ips = ClusterIPs(SMALL_RANGE)
    await ips.start(store)
    try:
        for i in range(13):
            await create(store, ips, service(f"s{i}"))
        with pytest.raises(Unavailable):
            await create(store, ips, service("waiting"))
        await store.delete(SERVICE, "default", "s3")

        async def allocated() -> bool:
            try:
                await create(store, ips, service("waiting"))
            except Unavailable:
                return False
            return True

        await eventually(allocated, "the freed IP is allocated again")
    finally:
        await ips.close()


async def test_kube_dns_is_created_once_at_base_plus_10(store: Store) -> None:
    ips = ClusterIPs("127.99.3.0/24")
    await ips.start(store)
    try:
        await ensure_kube_dns(store, ips)
        await ensure_kube_dns(store, ips)
        dns = await store.get(SERVICE, "kube-system", "kube-dns")
        assert dns["spec"]["clusterIP"] == "127.99.3.10"
        ports = [(p["name"], p["port"], p["protocol"]) for p in dns["spec"]["ports"]]
        assert ports == [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]
        assert "selector" not in dns["spec"]
    finally:
        await ips.close()


async def test_every_function_has_a_service_that_goes_with_it(store: Store) -> None:
    ips = ClusterIPs("127.99.4.0/24")
    await ips.start(store)
    await store.create(FUNCTION, function("gone-while-down"))
    services = FunctionServices(store=store, ips=ips, target_port=8080)
    try:
        await services.start()
        assert (await store.get(SERVICE, "default", "gone-while-down"))["spec"]["clusterIP"]
        await services.close()
        await store.delete(FUNCTION, "default", "gone-while-down")  # while "down"
        await store.create(FUNCTION, function("hello", port=9090, team="a"))
        await store.create(SERVICE, ips.admit(service("taken"), None))
        await store.create(FUNCTION, function("taken"))

        services = FunctionServices(store=store, ips=ips, target_port=8080)
        await services.start()
        assert not await store.exists(SERVICE, "default", "gone-while-down")
        hello = await store.get(SERVICE, "default", "hello")
        assert hello["spec"]["ports"] == [
            {"name": "http-function-port", "protocol": "TCP", "port": 9090, "targetPort": 8080}
        ]
        assert hello["spec"]["selector"] == {"function": "hello"}
        assert hello["metadata"]["labels"] == {
            "team": "a", "created-by": "kubeless", "function": "hello",
        }  # fmt: skip
        owner = hello["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("Function", "hello")
        cluster_ip = hello["spec"]["clusterIP"]
        assert cluster_ip.startswith("127.99.4.")

        taken = await store.get(SERVICE, "default", "taken")
        assert taken["spec"]["selector"] == {"app": "taken"}  # not ours: left alone
        events, _ = await store.list_objects(EVENT, "default")
        assert any(e["reason"] == "ServiceConflict" for e in events)

        current = await store.get(FUNCTION, "default", "hello")
        current["spec"]["service"]["ports"][0]["port"] = 7070
        await store.update(FUNCTION, current)

        async def port_changed() -> bool:
            svc = await store.get(SERVICE, "default", "hello")
            return bool(svc["spec"]["ports"][0]["port"] == 7070)

        await eventually(port_changed, "the function's new port reaches its Service")
        assert (await store.get(SERVICE, "default", "hello"))["spec"]["clusterIP"] == cluster_ip

        await store.delete(FUNCTION, "default", "hello")

        async def deleted() -> bool:
            return not await store.exists(SERVICE, "default", "hello")

        await eventually(deleted, "the Service goes with its Function")
        assert await store.exists(SERVICE, "default", "taken")
    finally:
        await services.close()
        await ips.close()


async def test_the_service_table_follows_the_store(store: Store) -> None:
    ips = ClusterIPs("127.99.5.0/24")
    table = ServiceTable()
    changed: list[tuple[str, str]] = []
    table.subscribe(changed.append)
    await store.create(SERVICE, ips.admit(service("before"), None))
    feed = ServiceFeed(store, table)
    await feed.start()
    try:
        before = table.service("default", "before")
        assert before is not None
        assert before.cluster_ip is not None
        assert table.by_cluster_ip(before.cluster_ip) == before

        owners = [{"apiVersion": "kubeless.io/v1beta1", "kind": "Function", "name": "fn"}]
        # An IP of the lower band, which random allocation (of "before") never hands out.
        fn = service("fn", "127.99.5.12")
        fn["metadata"]["ownerReferences"] = owners
        await store.create(SERVICE, ips.admit(fn, None))
        await store.create(
            SERVICE,
            ips.admit(service("db", "None", selector=None, ports=[{"port": 5432}]), None),
        )
        await store.create(
            ENDPOINTS,
            {
                "metadata": {"name": "db", "namespace": "default"},
                "subsets": [
                    {"addresses": [{"ip": "127.0.0.1", "hostname": "primary"}],
                     "ports": [{"port": 5432, "protocol": "TCP"}]}
                ],
            },
        )  # fmt: skip

        async def arrived() -> bool:
            return table.endpoints("default", "db") is not None

        await eventually(arrived, "the Endpoints reach the table")
        view = table.service("default", "fn")
        assert view is not None
        assert view.function == "fn"
        assert table.by_cluster_ip("127.99.5.12") == view
        db = table.service("default", "db")
        assert db is not None
        assert db.headless
        assert db.selector is None
        endpoints = table.endpoints("default", "db")
        assert endpoints is not None
        assert endpoints.backends("") == [("127.0.0.1", 5432)]
        assert [a.hostname for a in endpoints.ready_addresses()] == ["primary"]

        await store.delete(SERVICE, "default", "before")
        await store.delete(ENDPOINTS, "default", "db")

        async def gone() -> bool:
            return (
                table.service("default", "before") is None
                and table.endpoints("default", "db") is None
            )

        await eventually(gone, "deletes reach the table")
        assert ("default", "before") in changed
        with pytest.raises(NotFound):
            await store.get(SERVICE, "default", "before")
    finally:
        await feed.close()
