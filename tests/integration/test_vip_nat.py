"""Service VIPs by kernel NAT (nftables), over real sockets, on both event loops.

A ``ServiceTable`` is filled directly, ``VipListeners`` follows it with a real ``NatTable`` (the
daemon's nftables table, here for a random /24 of ``127.94.0.0/16`` of its own), and tiny TCP and
UDP backends listen on pod addresses (``127.128.x.y``). Clients connect to the VIP: the kernel,
not a process, takes the connection to a backend. Every test checks at its end that its table is
gone from ``nft list tables``. Needs root and ``nft`` (``apt-get install nftables``); the UDP
tests ``conntrack`` too (``apt-get install conntrack``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import ipaddress
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import cast

import pytest
import uvloop

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.errors import Unavailable
from funcmesh.gateway.vip_nat import TOOLS_PATH, NatTable, open_nat_table, table_name
from funcmesh.gateway.vips import VipListeners, served_by_kernel

WAIT_S = 5.0
TCP_PORT = 8080
UDP_PORT = 5300
CONNECTIONS = 50
SEARCH_PATH = f"{os.environ.get('PATH', '')}:{TOOLS_PATH}"
NFT = shutil.which("nft", path=SEARCH_PATH)
CONNTRACK = shutil.which("conntrack", path=SEARCH_PATH)
ROOT = os.geteuid() == 0

needs_nat = pytest.mark.skipif(
    not ROOT or NFT is None,
    reason="kernel NAT needs root and nft (apt-get install nftables)",
)
needs_conntrack = pytest.mark.skipif(
    not ROOT or NFT is None or CONNTRACK is None,
    reason="UDP by kernel NAT needs root, nft and conntrack (apt-get install nftables conntrack)",
)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        return cast(asyncio.AbstractEventLoopPolicy, uvloop.EventLoopPolicy())
    return asyncio.DefaultEventLoopPolicy()


def pod_ip() -> str:
    return f"127.128.{random.randint(200, 254)}.{random.randint(1, 254)}"


def nft_tables() -> str:
    assert NFT is not None
    return subprocess.run(
        [NFT, "list", "tables"], capture_output=True, text=True, check=True
    ).stdout


def nft_table(name: str) -> str | None:
    """``nft list table ip NAME``, None when there is no such table."""
    assert NFT is not None
    listed = subprocess.run([NFT, "list", "table", "ip", name], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else None


def listing_of(nat: NatTable) -> str:
    listing = nft_table(nat.name)
    assert listing is not None, f"no table {nat.name}"
    return listing


async def eventually(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        await asyncio.sleep(0.02)


# ---- backends on pod addresses ----


class TcpBackend:
    """Answers ``NAME CLIENT_IP`` on each connection, then closes; with ``echo``, then echoes
    lines until the client closes."""

    def __init__(self, name: str, *, echo: bool = False) -> None:
        self.name = name
        self.echo = echo
        self.ip = pod_ip()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, self.ip, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(f"{self.name} {writer.get_extra_info('peername')[0]}\n".encode())
        await writer.drain()
        while self.echo and (line := await reader.readline()):
            writer.write(line)
            await writer.drain()
        writer.close()


class UdpBackend(asyncio.DatagramProtocol):
    """Answers each datagram with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ip = pod_ip()
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.ip, 0))
        self._transport = cast(asyncio.DatagramTransport, transport)
        self.port = int(self._transport.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        assert self._transport is not None
        self._transport.close()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(self.name.encode(), addr)


Backend = TcpBackend | UdpBackend


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    started: list[Backend] = []
    yield started
    for backend in started:
        await backend.stop()


async def tcp_backends(started: list[Backend], *names: str) -> list[TcpBackend]:
    made = [TcpBackend(name) for name in names]
    for backend in made:
        await backend.start()
    started.extend(made)
    return made


async def udp_backends(started: list[Backend], *names: str) -> list[UdpBackend]:
    made = [UdpBackend(name) for name in names]
    for backend in made:
        await backend.start()
    started.extend(made)
    return made


# ---- the table and the listeners ----


@pytest.fixture
async def nat() -> AsyncIterator[NatTable]:
    if not ROOT or NFT is None:
        pytest.skip("kernel NAT needs root and nft (apt-get install nftables)")
    cidr = f"127.94.{random.randint(0, 255)}.0/24"
    table = await open_nat_table(cidr, search_path=SEARCH_PATH)
    try:
        yield table
    finally:
        await table.close()
    assert table.name not in nft_tables(), "the table outlived its close"


@pytest.fixture
async def table() -> ServiceTable:
    return ServiceTable()


@pytest.fixture
async def vips(table: ServiceTable, nat: NatTable) -> AsyncIterator[VipListeners]:
    listeners = VipListeners(table, kernel=nat)
    listeners.start()
    yield listeners
    await listeners.close()


def vip_in(nat: NatTable) -> str:
    return str(ipaddress.IPv4Network(nat.network)[random.randint(11, 254)])


def service(
    nat: NatTable, *, protocol: str = "TCP", port: int = TCP_PORT, affinity: bool = False
) -> ServiceView:
    return ServiceView(
        namespace="default",
        name="web",
        type="ClusterIP",
        cluster_ip=vip_in(nat),
        ports=(ServicePortView(name="", protocol=protocol, port=port, target_port=port),),
        selector=(("app", "web"),),
        session_affinity="ClientIP" if affinity else "None",
    )


def endpoints(backends: Sequence[Backend], *, protocol: str = "TCP") -> EndpointsView:
    """One subset per backend port, as the endpoints controller writes them."""
    subsets = tuple(
        EndpointSubsetView(
            ready=(EndpointAddressView(ip=backend.ip),),
            not_ready=(),
            ports=(EndpointPortView(name="", port=backend.port, protocol=protocol),),
        )
        for backend in backends
    )
    return EndpointsView(namespace="default", name="web", subsets=subsets)


# ---- clients ----


async def tcp_hello(ip: str, *, source_ip: str = "127.0.0.1") -> str:
    reader, writer = await asyncio.open_connection(ip, TCP_PORT, local_addr=(source_ip, 0))
    try:
        async with asyncio.timeout(WAIT_S):
            return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def refused_at_once(ip: str) -> float:
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(ip, TCP_PORT)
    return time.monotonic() - started


class UdpClient(asyncio.DatagramProtocol):
    """A UDP socket connected to the VIP: it keeps its source port, so it is one flow."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes | Exception] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def connect(cls, ip: str) -> UdpClient:
        client = cls()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: client, remote_addr=(ip, UDP_PORT))
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.answers.put_nowait(data)

    def error_received(self, exc: Exception) -> None:
        self.answers.put_nowait(exc)

    async def ask(self) -> str:
        """Send one datagram; the name that answers (ConnectionRefusedError when none)."""
        assert self.transport is not None
        self.transport.sendto(b"?")
        async with asyncio.timeout(WAIT_S):
            answer = await self.answers.get()
        if isinstance(answer, Exception):
            raise answer
        return answer.decode()

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


async def udp_hello(ip: str) -> str:
    client = await UdpClient.connect(ip)
    try:
        return await client.ask()
    finally:
        client.close()


# ---- what needs no root ----


def test_the_table_is_named_after_the_service_cidr() -> None:
    assert table_name("127.96.0.0/16") == "funcmesh_127_96_0_0_16"


@pytest.mark.parametrize(
    ("function", "affinity", "protocol", "kernel"),
    [
        (None, "None", "TCP", True),
        (None, "None", "UDP", True),
        (None, "None", "SCTP", False),
        (None, "ClientIP", "TCP", False),  # the daemon remembers clients; a DNAT rule cannot
        ("hello", "None", "TCP", False),  # a function's Service calls it through the gateway
    ],
)
def test_only_plain_services_are_served_by_the_kernel(
    function: str | None, affinity: str, protocol: str, kernel: bool
) -> None:
    view = ServiceView(
        namespace="default",
        name="web",
        type="ClusterIP",
        cluster_ip="127.96.0.20",
        ports=(),
        selector=None,
        session_affinity=affinity,
        function=function,
    )
    assert served_by_kernel(view, protocol) is kernel


async def test_without_nft_the_kernel_path_is_unavailable_and_says_why(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="root" if not ROOT else "nft is not installed"):
        await open_nat_table("127.94.0.0/24", search_path=str(tmp_path))


@needs_nat
async def test_an_nft_that_fails_makes_the_kernel_path_unavailable(tmp_path: Path) -> None:
    fake = tmp_path / "nft"
    fake.write_text(
        "#!/bin/sh\necho 'Error: Could not process rule: Operation not permitted' >&2\n" "exit 1\n"
    )
    fake.chmod(0o755)
    with pytest.raises(Unavailable, match="Operation not permitted"):
        await open_nat_table("127.94.0.0/24", search_path=str(tmp_path))


# ---- TCP ----


@needs_nat
async def test_a_vip_reaches_every_endpoint_through_the_kernel_and_binds_no_socket(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a, b = await tcp_backends(backends, "a", "b")
    web = service(nat)
    assert web.cluster_ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints([a, b]))
    await nat.settled()

    answers = [await tcp_hello(web.cluster_ip, source_ip="127.0.0.5") for _ in range(CONNECTIONS)]

    counts = collections.Counter(answer.split()[0] for answer in answers)
    assert set(counts) == {"a", "b"}
    assert min(counts.values()) >= 5, counts  # random, not one of them mostly
    assert {answer.split()[1] for answer in answers} == {"127.0.0.5"}  # the client's own address
    assert vips.listening == set()  # no socket: the kernel forwards
    assert vips.kernel_served == {(web.cluster_ip, TCP_PORT, "TCP")}
    assert f"ip daddr {web.cluster_ip} tcp dport {TCP_PORT} dnat ip to numgen random mod 2" in (
        listing_of(nat)
    )


@needs_nat
async def test_a_removed_endpoint_gets_no_new_connection_and_none_ready_is_refused_at_once(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a, b = await tcp_backends(backends, "a", "b")
    web = service(nat)
    assert web.cluster_ip is not None
    table.put_service(web)
    assert await refused_at_once(web.cluster_ip) < 0.5  # no endpoint yet: no rule, no socket

    table.put_endpoints(endpoints([a, b]))
    await nat.settled()
    table.put_endpoints(endpoints([b]))
    await nat.settled()
    answers = {(await tcp_hello(web.cluster_ip)).split()[0] for _ in range(20)}
    assert answers == {"b"}

    table.put_endpoints(endpoints([]))
    await nat.settled()
    assert await refused_at_once(web.cluster_ip) < 0.5
    assert web.cluster_ip not in listing_of(nat)


@needs_nat
async def test_an_established_connection_carries_on_when_its_endpoint_leaves(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a = TcpBackend("a", echo=True)
    await a.start()
    backends.append(a)
    web = service(nat)
    assert web.cluster_ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints([a]))
    await nat.settled()
    reader, writer = await asyncio.open_connection(web.cluster_ip, TCP_PORT)
    try:
        assert (await reader.readline()).startswith(b"a ")

        table.put_endpoints(endpoints([]))  # the last rule goes: new connections are refused
        await nat.settled()
        assert await refused_at_once(web.cluster_ip) < 0.5

        writer.write(b"still there?\n")  # ...and this one still flows both ways
        async with asyncio.timeout(WAIT_S):
            assert await reader.readline() == b"still there?\n"
    finally:
        writer.close()
        await writer.wait_closed()


@needs_nat
async def test_a_drained_pod_gets_no_new_connection_before_its_endpoint_leaves(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a, b = await tcp_backends(backends, "a", "b")
    web = service(nat)
    assert web.cluster_ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints([a, b]))
    await nat.settled()

    await vips.drain(a.ip)  # returns once the kernel no longer sends new connections to a

    assert a.ip not in listing_of(nat)
    assert {(await tcp_hello(web.cluster_ip)).split()[0] for _ in range(20)} == {"b"}
    await nat.drain(b.ip, hold_s=0.2)  # the last one too: the VIP refuses, as with no endpoint
    assert await refused_at_once(web.cluster_ip) < 0.5
    await eventually(lambda: b.ip in listing_of(nat))  # b's hold ended, its endpoint is listed
    assert {(await tcp_hello(web.cluster_ip)).split()[0] for _ in range(10)} == {"b"}


@needs_nat
async def test_client_ip_affinity_stays_on_a_vip_listener(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    (a,) = await tcp_backends(backends, "a")
    sticky = service(nat, affinity=True)
    assert sticky.cluster_ip is not None
    table.put_service(sticky)
    table.put_endpoints(endpoints([a]))
    await nat.settled()

    assert (await tcp_hello(sticky.cluster_ip)).split()[0] == "a"
    assert vips.listening == {(sticky.cluster_ip, TCP_PORT, "TCP")}
    assert vips.kernel_served == set()
    assert sticky.cluster_ip not in listing_of(nat)

    table.put_service(dataclasses.replace(sticky, session_affinity="None"))
    await nat.settled()
    assert vips.listening == set()  # one path or the other, never both
    assert (await tcp_hello(sticky.cluster_ip)).split()[0] == "a"


@needs_nat
async def test_a_burst_of_changes_ends_in_the_last_one(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a, b = await tcp_backends(backends, "a", "b")
    web = service(nat)
    assert web.cluster_ip is not None
    table.put_service(web)
    started = time.monotonic()
    for i in range(200):
        table.put_endpoints(endpoints([b] if i % 2 else [a, b]))  # ends with [b]
        await asyncio.sleep(0)
    await nat.settled()

    assert time.monotonic() - started < 2.0
    assert {(await tcp_hello(web.cluster_ip)).split()[0] for _ in range(20)} == {"b"}


@needs_nat
async def test_a_new_table_replaces_the_one_a_killed_daemon_left(nat: NatTable) -> None:
    nat.put(("default", "old"), {(vip_in(nat), TCP_PORT, "TCP"): (("127.128.250.1", 80),)})
    await nat.settled()
    assert "127.128.250.1:80" in listing_of(nat)

    successor = await open_nat_table(nat.network, search_path=SEARCH_PATH)
    try:
        assert "dnat" not in listing_of(successor)
    finally:
        await successor.close()
    assert nft_table(nat.name) is None


# ---- UDP ----


@needs_conntrack
async def test_udp_datagrams_reach_every_endpoint_and_answers_come_from_the_vip(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a, b = await udp_backends(backends, "a", "b")
    dns = service(nat, protocol="UDP", port=UDP_PORT)
    assert dns.cluster_ip is not None
    table.put_service(dns)
    table.put_endpoints(endpoints([a, b], protocol="UDP"))
    await nat.settled()

    counts = collections.Counter([await udp_hello(dns.cluster_ip) for _ in range(CONNECTIONS)])

    assert set(counts) == {"a", "b"}
    assert min(counts.values()) >= 5, counts
    assert vips.listening == set()
    assert vips.kernel_served == {(dns.cluster_ip, UDP_PORT, "UDP")}


@needs_conntrack
async def test_a_udp_flow_moves_when_its_endpoint_leaves_and_is_refused_when_none_is_left(
    table: ServiceTable, vips: VipListeners, nat: NatTable, backends: list[Backend]
) -> None:
    a, b = await udp_backends(backends, "a", "b")
    dns = service(nat, protocol="UDP", port=UDP_PORT)
    assert dns.cluster_ip is not None
    table.put_service(dns)
    table.put_endpoints(endpoints([a, b], protocol="UDP"))
    await nat.settled()
    client = await UdpClient.connect(dns.cluster_ip)  # one source port all along: one flow
    try:
        first = await client.ask()
        assert {await client.ask() for _ in range(5)} == {first}  # conntrack keeps the flow
        others = [backend for backend in (a, b) if backend.name != first]

        table.put_endpoints(endpoints(others, protocol="UDP"))
        await nat.settled()
        assert await client.ask() == others[0].name  # the flow moved with its endpoint

        table.put_endpoints(endpoints([], protocol="UDP"))
        await nat.settled()
        with pytest.raises(ConnectionRefusedError):  # ICMP port unreachable, at once
            await client.ask()

        table.put_endpoints(endpoints([a], protocol="UDP"))
        await nat.settled()
        assert await client.ask() == "a"  # the refused flow is forgotten: it reaches a
    finally:
        client.close()
