"""The VIP of a Service in front of functions: the gateway's listener, not kernel NAT.

A real ``Gateway`` (with its mesh and Service tables) and ``VipListeners`` over real sockets;
kernel NAT is a recording ``KernelForwarding`` (the real one needs root and nftables, see
test_vip_nat.py), so each test sees which ports the daemon serves and which it hands to the
kernel. The functions are a ``Backends`` whose one "instance" is an HTTP server on a pod-style
address, counted when it is acquired the slow way (the pool's cold-start path).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

import httpx
import pytest

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    Key,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.gateway.server import Gateway
from funcmesh.gateway.vip_ports import VipAddress
from funcmesh.gateway.vips import VipListeners
from funcmesh.mesh.table import MeshTable
from tests.integration.stub_leases import StubLease

WAIT_S = 5.0


def random_ip(second: int) -> str:
    return f"127.{second}.{random.randint(128, 254)}.{random.randint(1, 254)}"


class Function:
    """A function at zero: every call takes ``acquire`` (a cold start in a real pool)."""

    namespace = "default"

    def __init__(self, name: str, labels: Mapping[str, str], address: tuple[str, int]) -> None:
        self.display_name = f"default/{name}"
        self.labels = {**labels, "function": name}
        self._lease = StubLease(address, instance_id=f"{name}-0", timeout_s=10.0)
        self.cold_starts = 0

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # waits, if at all, in acquire()

    def try_acquire(self) -> None:
        return None

    async def acquire(self) -> StubLease:
        self.cold_starts += 1
        return self._lease


@dataclass
class Functions:
    """The deployed functions, as the runtime's Pools answer for them."""

    deployed: dict[str, Function] = field(default_factory=dict)
    generation: int = 0

    def deploy(self, function: Function) -> None:
        self.deployed[function.display_name] = function
        self.generation += 1

    def remove(self, function: Function) -> None:
        del self.deployed[function.display_name]
        self.generation += 1

    def lookup(self, namespace: str, name: str) -> Function | None:
        return self.deployed.get(f"{namespace}/{name}")

    def select(self, namespace: str, selector: Mapping[str, str]) -> list[Function]:
        return [
            f
            for f in self.deployed.values()
            if all(f.labels.get(k) == v for k, v in selector.items())
        ]


class Kernel:
    """Kernel NAT as the VIPs see it: the rules they asked for, per Service."""

    def __init__(self) -> None:
        self.rules: dict[Key, dict[VipAddress, tuple[tuple[str, int], ...]]] = {}

    def can_serve(self, ip: str, protocol: str) -> bool:
        return True

    def put(self, key: Key, rules: Mapping[VipAddress, tuple[tuple[str, int], ...]]) -> None:
        if rules:
            self.rules[key] = dict(rules)
        else:
            self.rules.pop(key, None)

    async def drain(self, ip: str) -> None:
        pass


@dataclass
class World:
    table: ServiceTable
    functions: Functions
    kernel: Kernel
    vips: VipListeners
    instance: tuple[str, int]  # where the functions' instance answers


HANDLERS: set[asyncio.Task[None]] = set()  # the instance's connections, cut at teardown


async def answer_with_path(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An instance: answers each request with ``fn PATH``."""
    task = asyncio.current_task()
    assert task is not None
    HANDLERS.add(task)
    task.add_done_callback(HANDLERS.discard)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            body = b"fn " + head.split(b" ", 2)[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    instance = await asyncio.start_server(answer_with_path, random_ip(131), 0)
    address = instance.sockets[0].getsockname()[:2]
    table, functions, kernel = ServiceTable(), Functions(), Kernel()
    gateway = Gateway(functions, port=0, mesh=MeshTable(), services=table)  # type: ignore[arg-type]
    await gateway.start()
    vips = VipListeners(table, functions=gateway, kernel=kernel, mesh=MeshTable())
    vips.start()
    try:
        yield World(table, functions, kernel, vips, (str(address[0]), int(address[1])))
    finally:
        await vips.close()
        await gateway.close(1.0)
        instance.close()
        for task in HANDLERS:
            task.cancel()
        await asyncio.gather(*HANDLERS, return_exceptions=True)
        await instance.wait_closed()


def service(name: str, *ports: tuple[str, int]) -> ServiceView:
    return ServiceView(
        namespace="default",
        name=name,
        type="ClusterIP",
        cluster_ip=random_ip(97),
        ports=tuple(
            ServicePortView(name=port_name, protocol="TCP", port=port, target_port=8080)
            for port_name, port in ports
        ),
        selector=(("app", name),),
    )


def warm_endpoints(view: ServiceView, ip: str) -> EndpointsView:
    """The Endpoints of ``view`` with one ready address on every port (a warm instance, or a
    workload's pod)."""
    subset = EndpointSubsetView(
        ready=(EndpointAddressView(ip=ip),),
        not_ready=(),
        ports=tuple(EndpointPortView(name=p.name, port=8080) for p in view.ports),
    )
    return EndpointsView(namespace="default", name=view.name, subsets=(subset,))


def served_by_kernel(world: World, view: ServiceView) -> set[int]:
    return {address[1] for address in world.kernel.rules.get(view.key, {})}


def listening(world: World, view: ServiceView) -> set[int]:
    return {address[1] for address in world.vips.listening if address[0] == view.cluster_ip}


async def wait_until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def call(view: ServiceView, port: int, path: str) -> str:
    async with httpx.AsyncClient(timeout=WAIT_S) as client:
        response = await client.get(f"http://{view.cluster_ip}:{port}{path}")
    assert response.status_code == 200, response.text
    return response.text


async def test_a_service_in_front_of_functions_at_zero_calls_them_through_the_gateway(
    world: World,
) -> None:
    function = Function("shop-fn", {"app": "shop"}, world.instance)
    world.functions.deploy(function)
    shop = service("shop", ("", 80), ("http-api", 81), ("tcp-admin", 82))
    world.table.put_service(shop)  # no Endpoints: the function is at zero

    assert listening(world, shop) == {80, 81}  # unnamed and HTTP ports: the gateway's
    assert await call(shop, 80, "/cart?x=1") == "fn /cart?x=1"
    assert await call(shop, 81, "/api") == "fn /api"
    assert function.cold_starts == 2

    world.table.put_endpoints(warm_endpoints(shop, "127.131.0.9"))  # an instance is up
    assert listening(world, shop) == {80, 81}
    assert served_by_kernel(world, shop) == {82}  # a port named as TCP stays with the kernel
    world.table.remove_endpoints("default", "shop")  # back to zero
    assert await call(shop, 80, "/") == "fn /"


async def test_plain_workload_services_keep_kernel_nat(world: World) -> None:
    world.functions.deploy(Function("other", {"app": "other"}, world.instance))
    web = service("web", ("", 80), ("http", 81))
    world.table.put_service(web)
    world.table.put_endpoints(warm_endpoints(web, "127.131.0.8"))
    assert served_by_kernel(world, web) == {80, 81}
    assert listening(world, web) == set()


async def test_the_decision_follows_functions_deployed_and_removed_later(world: World) -> None:
    late = service("late", ("http", 80))
    world.table.put_service(late)
    assert listening(world, late) == set()  # nothing behind it yet: refused
    function = Function("late-fn", {"app": "late"}, world.instance)
    world.functions.deploy(function)  # no change of any Service follows: the check finds it
    await wait_until(lambda: listening(world, late) == {80}, "the VIP to listen")
    assert await call(late, 80, "/x") == "fn /x"

    world.functions.remove(function)
    world.table.put_service(service("unrelated", ("http", 80)))  # any change: decided again
    assert listening(world, late) == set()
