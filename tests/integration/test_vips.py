"""Service VIPs over real sockets, on both event loops.

A ``ServiceTable`` is filled directly (as the store feed would), ``VipListeners`` follows it, and
tiny backends listen on pod-style addresses (``127.131.x.y``); clients connect to the VIP
(``127.96.x.y``, random per test so that parallel runs never meet) with plain asyncio streams.
The function VIP test runs a real ``Gateway`` over real ``Pools`` (a zygote, a worker).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import cast

import httpx
import pytest
import uvloop
from prometheus_client import CollectorRegistry

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.gateway.balancing import RoundRobin
from funcmesh.gateway.datagrams import DatagramPort
from funcmesh.gateway.server import Gateway
from funcmesh.gateway.vips import VipListeners
from funcmesh.model.function import Scaling
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.catalog import Runtime
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.pool import PoolContext
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.stats import Metrics

WAIT_S = 5.0
VIP_PORT = 8080
SMALL_BUFFER_BYTES = 64 << 10
UPLOAD_BYTES = DOWNLOAD_BYTES = 32 << 20


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        return cast(asyncio.AbstractEventLoopPolicy, uvloop.EventLoopPolicy())
    return asyncio.DefaultEventLoopPolicy()


def random_ip(second: int) -> str:
    return f"127.{second}.{random.randint(128, 254)}.{random.randint(1, 254)}"


# ---- backends: real TCP servers with a behaviour per connection ----

Behaviour = Callable[["Backend", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Backend:
    """A TCP server on a pod-style address; each connection runs ``behaviour``."""

    def __init__(self, name: str, behaviour: Behaviour) -> None:
        self.name = name
        self.ip = random_ip(131)
        self.behaviour = behaviour
        self.connections = 0
        self.may_read = asyncio.Event()
        self.unsent_bytes = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> tuple[str, int]:
        assert self._server is not None
        return self.ip, int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.ip, 0)

    async def stop(self) -> None:
        """Stop listening and cut every connection (the pod is gone)."""
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.behaviour(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._handlers.discard(task)
            writer.transport.abort()


async def name_then_echo(
    backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(f"{backend.name}\n".encode())
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    writer.write_eof()  # half-close answered: the client's EOF comes back after the echo
    await writer.drain()


async def read_all_then_answer(
    backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Reads until the client's EOF, then answers the byte count and closes."""
    count = len(await reader.read())
    writer.write(f"{backend.name} read {count}\n".encode())
    await writer.drain()
    writer.close()


async def send_big_then_echo_late(
    backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Sends DOWNLOAD_BYTES first and reads nothing until ``may_read`` (small socket buffers,
    so that what the VIP does not take stays here); then answers the hash of what it read."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER_BYTES)
    writer.write(payload(DOWNLOAD_BYTES, seed=1))
    await backend.may_read.wait()
    backend.unsent_bytes = writer.transport.get_write_buffer_size()
    digest = hashlib.sha256(await reader.read()).hexdigest()
    writer.write(f"\n{digest}\n".encode())
    await writer.drain()
    writer.close()


async def half_close_first(
    backend: Backend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Says goodbye and closes its sending side at once, then still reads the client."""
    writer.write(b"bye\n")
    writer.write_eof()
    await writer.drain()
    count = len(await reader.read())
    assert count == 5
    backend.may_read.set()


def payload(size: int, *, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


# ---- fixtures ----

StartBackend = Callable[[str, Behaviour], Awaitable[Backend]]


@pytest.fixture
async def start_backend() -> AsyncIterator[StartBackend]:
    started: list[Backend] = []

    async def start(name: str, behaviour: Behaviour = name_then_echo) -> Backend:
        backend = Backend(name, behaviour)
        await backend.start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


@pytest.fixture
async def table() -> ServiceTable:
    return ServiceTable()


@pytest.fixture
async def vips(table: ServiceTable) -> AsyncIterator[VipListeners]:
    listeners = VipListeners(table)
    listeners.start()
    yield listeners
    await listeners.close()


def service(
    name: str = "web",
    *,
    cluster_ip: str | None = None,
    ports: tuple[ServicePortView, ...] = (
        ServicePortView(name="", protocol="TCP", port=VIP_PORT, target_port=8080),
    ),
    affinity: bool = False,
    affinity_timeout_s: float = 10800.0,
    function: str | None = None,
) -> ServiceView:
    return ServiceView(
        namespace="default",
        name=name,
        type="ClusterIP",
        cluster_ip=cluster_ip or random_ip(96),
        ports=ports,
        selector=(("app", name),),
        session_affinity="ClientIP" if affinity else "None",
        affinity_timeout_s=affinity_timeout_s,
        function=function,
    )


def endpoints(
    name: str,
    ready: Sequence[tuple[str, int]],
    *,
    not_ready: Sequence[tuple[str, int]] = (),
    port_name: str = "",
    protocol: str = "TCP",
) -> EndpointsView:
    """One subset per endpoint port, as the endpoints controller writes them."""
    subsets = []
    for port in sorted({p for _, p in ready} | {p for _, p in not_ready}):
        subsets.append(
            EndpointSubsetView(
                ready=tuple(EndpointAddressView(ip=ip) for ip, p in ready if p == port),
                not_ready=tuple(EndpointAddressView(ip=ip) for ip, p in not_ready if p == port),
                ports=(EndpointPortView(name=port_name, port=port, protocol=protocol),),
            )
        )
    return EndpointsView(namespace="default", name=name, subsets=tuple(subsets))


async def hello(ip: str, port: int = VIP_PORT, *, source_ip: str | None = None) -> str:
    """Connect, read the backend's name line, close."""
    reader, writer = await asyncio.open_connection(
        ip, port, local_addr=(source_ip, 0) if source_ip else None
    )
    try:
        async with asyncio.timeout(WAIT_S):
            return (await reader.readline()).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def refused_at_once(ip: str, port: int = VIP_PORT) -> float:
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(ip, port)
    return time.monotonic() - started


# ---- forwarding ----


async def test_connections_are_answered_by_every_endpoint_in_turn(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a, b = await start_backend("a"), await start_backend("b")
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint, b.endpoint]))

    names = [await hello(web.cluster_ip) for _ in range(6)]  # type: ignore[arg-type]

    assert sorted(names) == ["a", "a", "a", "b", "b", "b"]
    assert all(names[i] != names[i + 1] for i in range(5)), names  # round robin


async def test_data_goes_both_ways_and_the_endpoint_sees_the_client_through_the_vip(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a = await start_backend("a")
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint]))
    reader, writer = await asyncio.open_connection(web.cluster_ip, VIP_PORT)

    writer.write(b"ping\n")
    assert await reader.readline() == b"a\n"
    assert await reader.readline() == b"ping\n"
    writer.write_eof()
    assert await reader.read() == b""  # the backend's EOF after the client's came through

    writer.close()
    await writer.wait_closed()


async def test_client_ip_affinity_keeps_a_client_on_its_endpoint_while_it_is_ready(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a, b = await start_backend("a"), await start_backend("b")
    web = service(affinity=True)
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint, b.endpoint]))

    first = await hello(ip, source_ip="127.0.0.1")
    again = {await hello(ip, source_ip="127.0.0.1") for _ in range(5)}
    others = {await hello(ip, source_ip="127.0.0.2") for _ in range(5)}
    assert again == {first}
    assert len(others) == 1  # a second client sticks too (to whichever it got first)

    stayer = b if first == "a" else a
    table.put_endpoints(endpoints("web", [stayer.endpoint]))  # the first one is not ready
    assert await hello(ip, source_ip="127.0.0.1") == stayer.name
    table.put_endpoints(endpoints("web", [a.endpoint, b.endpoint]))  # back: no pull back
    assert {await hello(ip, source_ip="127.0.0.1") for _ in range(4)} == {stayer.name}


async def test_without_affinity_a_client_is_spread_over_the_endpoints(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a, b = await start_backend("a"), await start_backend("b")
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint, b.endpoint]))

    names = {await hello(web.cluster_ip, source_ip="127.0.0.1") for _ in range(4)}  # type: ignore[arg-type]

    assert names == {"a", "b"}


async def test_affinity_ends_after_its_timeout(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a, b = await start_backend("a"), await start_backend("b")
    web = service(affinity=True, affinity_timeout_s=0.05)
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint, b.endpoint]))

    seen = set()
    for _ in range(6):  # each pause outlives the affinity: round robin decides again
        seen.add(await hello(ip))
        await asyncio.sleep(0.06)

    assert seen == {"a", "b"}


# ---- refusing, opening and closing ----


async def test_a_vip_without_ready_endpoints_refuses_connections_at_once(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a = await start_backend("a")
    web = service()
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)  # the selector matches nothing yet: no Endpoints at all
    assert await refused_at_once(ip) < 0.5

    table.put_endpoints(endpoints("web", [], not_ready=[a.endpoint]))  # a pod, not ready
    assert await refused_at_once(ip) < 0.5
    assert vips.listening == set()

    table.put_endpoints(endpoints("web", [a.endpoint]))  # ready: the VIP listens at once
    assert vips.listening == {(ip, VIP_PORT, "TCP")}
    assert await hello(ip) == "a"


async def test_the_last_endpoint_leaving_closes_the_vip_but_not_its_connections(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a = await start_backend("a")
    web = service()
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint]))
    reader, writer = await asyncio.open_connection(ip, VIP_PORT)
    assert await reader.readline() == b"a\n"

    table.put_endpoints(endpoints("web", []))

    await refused_at_once(ip)
    writer.write(b"still here\n")
    assert await reader.readline() == b"still here\n"  # the established connection goes on
    assert vips.forwarded_connections == 1
    writer.close()
    await writer.wait_closed()


async def test_removing_the_service_closes_its_vip_and_adding_it_back_reopens_it(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a = await start_backend("a")
    web = service()
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint]))
    assert await hello(ip) == "a"

    table.remove_service("default", "web")
    await refused_at_once(ip)

    table.put_service(web)
    assert await hello(ip) == "a"


async def test_a_refusing_endpoint_costs_a_try_not_the_connection(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a, gone = await start_backend("a"), await start_backend("gone")
    dead = gone.endpoint
    await gone.stop()  # nothing listens there any more, but the Endpoints still say ready
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [dead, a.endpoint]))

    names = [await hello(web.cluster_ip) for _ in range(6)]  # type: ignore[arg-type]

    assert names == ["a"] * 6


async def test_when_every_endpoint_refuses_the_client_is_reset(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    gone = await start_backend("gone")
    dead = gone.endpoint
    await gone.stop()
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [dead]))

    reader, writer = await asyncio.open_connection(web.cluster_ip, VIP_PORT)
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(WAIT_S):
            await reader.read()
    writer.close()


async def test_a_killed_endpoint_cuts_only_its_own_connections(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a, b = await start_backend("a"), await start_backend("b")
    web = service()
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint, b.endpoint]))
    streams = [await asyncio.open_connection(ip, VIP_PORT) for _ in range(4)]
    names = [(await reader.readline()).strip() for reader, _ in streams]

    await b.stop()  # the pod dies; its endpoint is still listed for a moment
    for (reader, writer), name in zip(streams, names, strict=True):
        writer.write(b"x\n")
        if name == b"b":
            assert await reader.read() == b""  # cut, as the pod's own connection would be
        else:
            assert await reader.readline() == b"x\n"
        writer.close()
    assert [await hello(ip) for _ in range(3)] == ["a"] * 3  # new ones skip the dead pod


# ---- streams ----


async def test_big_payloads_flow_both_ways_with_back_pressure(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    slow = await start_backend("slow", send_big_then_echo_late)
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [slow.endpoint]))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER_BYTES)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER_BYTES)
    sock.connect((web.cluster_ip, VIP_PORT))
    sock.setblocking(False)
    upload = payload(UPLOAD_BYTES, seed=2)

    sent = 0  # the backend reads nothing yet: the VIP must stop reading, so sending stalls
    while sent < len(upload):
        try:
            sent += sock.send(upload[sent : sent + (1 << 20)])
        except BlockingIOError:
            await asyncio.sleep(0.05)
            try:
                sent += sock.send(upload[sent : sent + (1 << 20)])
            except BlockingIOError:
                break
    assert sent < UPLOAD_BYTES // 2, f"{sent} bytes went in while the backend read nothing"

    slow.may_read.set()  # and the client has read nothing: the download waits at the backend
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(upload[sent:])
    writer.write_eof()
    download = await asyncio.wait_for(reader.read(), 30)

    assert slow.unsent_bytes > DOWNLOAD_BYTES // 2, "the VIP read on while the client did not"
    assert download[:DOWNLOAD_BYTES] == payload(DOWNLOAD_BYTES, seed=1)
    assert download[DOWNLOAD_BYTES:].strip().decode() == hashlib.sha256(upload).hexdigest()
    writer.close()
    await writer.wait_closed()


async def test_a_client_half_close_reaches_the_endpoint_which_still_answers(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a = await start_backend("a", read_all_then_answer)
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint]))
    reader, writer = await asyncio.open_connection(web.cluster_ip, VIP_PORT)

    writer.write(b"x" * 100_000)
    writer.write_eof()

    assert await asyncio.wait_for(reader.read(), WAIT_S) == b"a read 100000\n"
    writer.close()
    await writer.wait_closed()


async def test_an_endpoint_half_close_reaches_the_client_which_still_sends(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    a = await start_backend("a", half_close_first)
    web = service()
    table.put_service(web)
    table.put_endpoints(endpoints("web", [a.endpoint]))
    reader, writer = await asyncio.open_connection(web.cluster_ip, VIP_PORT)

    assert await asyncio.wait_for(reader.read(), WAIT_S) == b"bye\n"  # then EOF
    writer.write(b"12345")
    writer.write_eof()
    await asyncio.wait_for(a.may_read.wait(), WAIT_S)
    writer.close()
    await writer.wait_closed()


# ---- ports ----


async def test_each_named_port_forwards_to_its_own_endpoint_port(
    table: ServiceTable, vips: VipListeners, start_backend: StartBackend
) -> None:
    http, admin = await start_backend("http"), await start_backend("admin")
    ports = (
        ServicePortView(name="http", protocol="TCP", port=VIP_PORT, target_port="http"),
        ServicePortView(name="admin", protocol="TCP", port=VIP_PORT + 1, target_port=9000),
    )
    web = service(ports=ports)
    ip = web.cluster_ip
    assert ip is not None
    table.put_service(web)
    subsets = (
        EndpointSubsetView(
            ready=(EndpointAddressView(ip=http.ip),),
            not_ready=(),
            ports=(EndpointPortView(name="http", port=http.endpoint[1]),),
        ),
        EndpointSubsetView(
            ready=(EndpointAddressView(ip=admin.ip),),
            not_ready=(),
            ports=(EndpointPortView(name="admin", port=admin.endpoint[1]),),
        ),
    )
    table.put_endpoints(EndpointsView(namespace="default", name="web", subsets=subsets))

    assert await hello(ip, VIP_PORT) == "http"
    assert await hello(ip, VIP_PORT + 1) == "admin"


async def test_a_port_taken_by_another_process_is_skipped_and_the_others_serve(
    table: ServiceTable,
    vips: VipListeners,
    start_backend: StartBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a = await start_backend("a")
    ip = random_ip(96)
    squatter = socket.socket()
    squatter.bind((ip, VIP_PORT))
    squatter.listen()
    ports = (
        ServicePortView(name="taken", protocol="TCP", port=VIP_PORT, target_port=1),
        ServicePortView(name="free", protocol="TCP", port=VIP_PORT + 1, target_port=1),
    )
    try:
        table.put_service(service(cluster_ip=ip, ports=ports))
        subset = EndpointSubsetView(
            ready=(EndpointAddressView(ip=a.ip),),
            not_ready=(),
            ports=(
                EndpointPortView(name="taken", port=a.endpoint[1]),
                EndpointPortView(name="free", port=a.endpoint[1]),
            ),
        )
        table.put_endpoints(EndpointsView(namespace="default", name="web", subsets=(subset,)))

        assert await hello(ip, VIP_PORT + 1) == "a"
        assert vips.listening == {(ip, VIP_PORT + 1, "TCP")}
        assert f"cannot listen on VIP {ip}:{VIP_PORT}/TCP" in caplog.text
    finally:
        squatter.close()


class UdpEcho(asyncio.DatagramProtocol):
    """Answers each datagram with ``<name> <datagram>``."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(self.name + b" " + data, addr)


StartUdpEcho = Callable[[str], Awaitable[tuple[asyncio.DatagramTransport, tuple[str, int]]]]


@pytest.fixture
async def udp_echo() -> AsyncIterator[StartUdpEcho]:
    transports: list[asyncio.DatagramTransport] = []

    async def start(name: str) -> tuple[asyncio.DatagramTransport, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        ip = random_ip(131)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpEcho(name), local_addr=(ip, 0)
        )
        transports.append(transport)
        return transport, (ip, int(transport.get_extra_info("sockname")[1]))

    yield start
    for transport in transports:
        transport.close()


async def exchange(client: socket.socket, data: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(client, data)
    return await asyncio.wait_for(loop.sock_recv(client, 100), WAIT_S)


def udp_client(ip: str, port: int = VIP_PORT) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.setblocking(False)
    client.connect((ip, port))  # a connected socket accepts answers from the VIP only
    return client


async def test_udp_ports_forward_datagrams_and_answers_come_back_from_the_vip(
    table: ServiceTable, vips: VipListeners, udp_echo: StartUdpEcho
) -> None:
    transport, endpoint = await udp_echo("echo")
    dns = service(
        ports=(ServicePortView(name="dns", protocol="UDP", port=VIP_PORT, target_port=53),)
    )
    assert dns.cluster_ip is not None
    client = udp_client(dns.cluster_ip)
    try:
        table.put_service(dns)
        table.put_endpoints(endpoints(dns.name, [endpoint], port_name="dns", protocol="UDP"))
        assert vips.listening == {(dns.cluster_ip, VIP_PORT, "UDP")}
        assert await exchange(client, b"one") == b"echo one"
        assert await exchange(client, b"two") == b"echo two"

        transport.close()  # the endpoint's process is gone: ICMP port unreachable
        table.remove_endpoints("default", dns.name)  # and then its endpoint
        with pytest.raises(ConnectionRefusedError):  # nothing listens on the VIP port either
            await exchange(client, b"three")
    finally:
        client.close()


async def test_udp_flows_end_when_idle_or_when_their_endpoint_leaves(
    udp_echo: StartUdpEcho,
) -> None:
    _, first = await udp_echo("first")
    _, second = await udp_echo("second")
    vip = (random_ip(96), VIP_PORT)
    port = DatagramPort(vip, RoundRobin([first, second]), idle_timeout_s=0.2)
    port.open()
    client = udp_client(*vip)
    try:
        assert await exchange(client, b"a") == b"first a"
        assert await exchange(client, b"b") == b"first b"  # one flow, one endpoint
        deadline = time.monotonic() + WAIT_S
        while port.sessions:  # idle for the timeout: the flow ends
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await exchange(client, b"c") == b"second c"  # a new flow chooses again

        port.update([first])  # the second endpoint is no longer ready
        assert port.sessions == 0
        assert await exchange(client, b"d") == b"first d"
    finally:
        client.close()
        port.close()


# ---- the VIP of a function's Service ----


RUNTIME = Runtime.python(
    version=sys.version_info[:2],
    executable=Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable))),
)


@pytest.fixture
async def pools(tmp_path: Path) -> AsyncIterator[Pools]:
    zygotes = Zygotes()
    context = PoolContext(
        addresses=AddressPool("127.132.0.0/16"),
        zygotes=zygotes,
        limiter=MemoryLimiter(tmp_path / "no-cgroups"),
        logbook=LogBook(),
        worker_port=8080,
        max_queue=10,
        queue_wait_s=5.0,
        worker_uid=None,
        worker_gid=None,
        on_pod_change=lambda kind, instance: None,
    )
    registry = Pools(context=context, metrics=Metrics(CollectorRegistry()), pod_events=PodEvents())
    try:
        yield registry
    finally:
        await registry.close()
        await zygotes.close()


async def test_a_function_vip_calls_the_function_cold_start_included(
    table: ServiceTable, pools: Pools, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "hello.py").write_text(
        "def handler(event, context):\n"
        "    path = event['extensions']['request'].path\n"
        "    return 'hello from ' + context['function-name'] + ' ' + path\n"
    )
    pools.deploy(
        Revision(
            namespace="default",
            name="hello",
            uid="uid-1",
            generation=1,
            runtime=RUNTIME,
            code_dir=code,
            sys_paths=(),
            module="hello",
            handler="handler",
            env=(),
            timeout_s=5.0,
            memory_limit=None,
            memory_limit_bytes=None,
            labels={"function": "hello"},
            scaling=Scaling(),
            template_hash="abcdef0123",
        )
    )
    gateway = Gateway(pools, port=0)
    await gateway.start()
    vips = VipListeners(table, functions=gateway)
    vips.start()
    try:
        hello_service = service(
            "hello",
            ports=(
                ServicePortView(
                    name="http-function-port", protocol="TCP", port=8080, target_port=8080
                ),
            ),
            function="hello",
        )
        table.put_service(hello_service)  # no endpoints: no instance runs
        assert pools.lookup("default", "hello").summary()["instances"] == 0  # type: ignore[union-attr]

        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            first = await http.get(f"http://{hello_service.cluster_ip}:8080/a/b?x=1")
            second = await http.post(f"http://{hello_service.cluster_ip}:8080/", content=b"hi")

        assert (first.status_code, first.text) == (200, "hello from hello /a/b")
        assert second.status_code == 200
        table.remove_service("default", "hello")
        await refused_at_once(hello_service.cluster_ip, 8080)  # type: ignore[arg-type]
    finally:
        await vips.close()
        await gateway.close(drain_s=1.0)


async def test_a_function_vip_says_so_when_the_function_is_gone(
    table: ServiceTable, pools: Pools
) -> None:
    gateway = Gateway(pools, port=0)
    await gateway.start()
    vips = VipListeners(table, functions=gateway)
    vips.start()
    try:
        ports = (ServicePortView(name="http", protocol="TCP", port=8080, target_port=8080),)
        ghost = service("ghost", ports=ports, function="ghost")
        table.put_service(ghost)
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            response = await http.get(f"http://{ghost.cluster_ip}:8080/")
        assert response.status_code == 404
        assert "function default/ghost not found" in response.text
    finally:
        await vips.close()
        await gateway.close(drain_s=1.0)
