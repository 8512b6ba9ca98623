"""Names outside the zone: forwarded to a real (fake) upstream DNS server on loopback.

The upstream is a tiny dnspython server started here on UDP and TCP; it knows a few names and
counts the questions it gets, so caching shows. Nothing here reaches beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdatatype
import dns.rrset
import pytest

from funcmesh.nameserver.server import NameServer, start_nameserver
from funcmesh.nameserver.upstream import Forwarder
from tests.unit.nameserver.cluster import cluster

HOST = "127.0.0.1"
RECORDS = {
    ("example.test.", "A"): ["example.test. 300 IN A 192.0.2.1"],
    ("short.test.", "A"): ["short.test. 1 IN A 192.0.2.2"],
    ("big.test.", "TXT"): [f'big.test. 300 IN TXT "{n}{"x" * 200}"' for n in range(4)],
}
SOA = "test. 300 IN SOA ns.test. hostmaster.test. 1 7200 1800 86400 60"


class FakeUpstream(asyncio.DatagramProtocol):
    """Answers RECORDS (NXDOMAIN with an SOA otherwise) over UDP and TCP; counts questions."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.tcp: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        """UDP and TCP on one free port (tried again when TCP finds the port taken)."""
        loop = asyncio.get_running_loop()
        for _attempt in range(10):
            transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(HOST, 0))
            self.port = transport.get_extra_info("sockname")[1]
            try:
                self.tcp = await asyncio.start_server(self._serve_tcp, HOST, self.port)
            except OSError:
                transport.close()
                continue
            self.transport = transport  # type: ignore[assignment]
            return
        raise AssertionError("no port free for both UDP and TCP")

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.tcp is not None:
            self.tcp.close()
            await self.tcp.wait_closed()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.sendto(self.answer(data, max_size=512), addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        reply = self.answer(await reader.readexactly(size), max_size=65535)
        writer.write(struct.pack("!H", len(reply)) + reply)
        await writer.drain()
        writer.close()

    def answer(self, data: bytes, *, max_size: int) -> bytes:
        query = dns.message.from_wire(data)
        question = query.question[0]
        key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
        self.asked.append(f"{key[0]} {key[1]}")
        response = dns.message.make_response(query)
        records = RECORDS.get(key)
        if records:
            for text in records:
                name, ttl, _, rdtype, data_text = text.split(maxsplit=4)
                response.find_rrset(
                    response.answer, dns.name.from_text(name), 1, dns.rdatatype.from_text(rdtype),
                    create=True,
                ).add(dns.rdata.from_text(1, rdtype, data_text), int(ttl))  # fmt: skip
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(*SOA.split(maxsplit=4)))
        wire = response.to_wire()
        if len(wire) > max_size:
            response.answer.clear()
            response.flags |= dns.flags.TC
            wire = response.to_wire()
        return wire


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


async def serve(forwarder: Forwarder | None) -> NameServer:
    server = NameServer(cluster(), forwarder=forwarder)
    await server.listen(HOST, 0)
    return server


@pytest.fixture
async def server(upstream: FakeUpstream) -> AsyncIterator[NameServer]:
    nameserver = await serve(Forwarder([(HOST, upstream.port)], timeout_s=1))
    try:
        yield nameserver
    finally:
        await nameserver.close()


async def ask(
    server: NameServer, name: str, qtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    port = server.addresses[0][1]
    if tcp:
        return await dns.asyncquery.tcp(query, HOST, port=port, timeout=5)
    return await dns.asyncquery.udp(query, HOST, port=port, timeout=5)


async def test_a_name_outside_the_zone_is_forwarded_and_then_cached(
    server: NameServer, upstream: FakeUpstream
) -> None:
    first = await ask(server, "Example.TEST.")
    second = await ask(server, "example.test.")

    assert first.answer[0].to_text() == "Example.TEST. 300 IN A 192.0.2.1"
    assert first.flags & dns.flags.RA
    assert not first.flags & dns.flags.AA
    assert second.answer[0][0].address == "192.0.2.1"
    assert upstream.asked == ["example.test. A"]


async def test_a_cached_answer_expires_with_its_ttl(
    server: NameServer, upstream: FakeUpstream
) -> None:
    await ask(server, "short.test.")
    deadline = time.monotonic() + 10
    while upstream.asked.count("short.test. A") < 2:
        assert time.monotonic() < deadline, "the 1 s answer was never asked for again"
        answer = await ask(server, "short.test.")
        assert answer.answer[0].ttl <= 1
        await asyncio.sleep(0.1)


async def test_nxdomain_from_upstream_is_passed_on_and_cached(
    server: NameServer, upstream: FakeUpstream
) -> None:
    first = await ask(server, "missing.test.")
    second = await ask(server, "missing.test.")

    assert first.rcode() == dns.rcode.NXDOMAIN
    assert first.authority[0].rdtype == dns.rdatatype.SOA
    assert second.rcode() == dns.rcode.NXDOMAIN
    assert upstream.asked == ["missing.test. A"]


async def test_cluster_names_never_go_upstream(server: NameServer, upstream: FakeUpstream) -> None:
    answer = await ask(server, "nope.default.svc.cluster.local.")

    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert upstream.asked == []


async def test_an_external_name_service_gets_the_targets_address_from_upstream(
    server: NameServer,
) -> None:
    answer = await ask(server, "ext.default.svc.cluster.local.")

    texts = [rrset.to_text() for rrset in answer.answer]
    assert texts == [
        "ext.default.svc.cluster.local. 5 IN CNAME example.test.",
        "example.test. 300 IN A 192.0.2.1",
    ]


async def test_a_long_upstream_answer_is_truncated_over_udp_and_whole_over_tcp(
    server: NameServer,
) -> None:
    over_udp = await ask(server, "big.test.", "TXT")
    over_tcp = await ask(server, "big.test.", "TXT", tcp=True)

    assert over_udp.flags & dns.flags.TC
    assert len(over_tcp.answer[0]) == 4


async def test_an_upstream_that_does_not_answer_gives_servfail() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind((HOST, 0))
        server = await serve(Forwarder([(HOST, silent.getsockname()[1])], timeout_s=0.3))
        try:
            answer = await ask(server, "example.test.")
        finally:
            await server.close()

    assert answer.rcode() == dns.rcode.SERVFAIL


async def test_without_upstream_outside_names_are_refused() -> None:
    server = await serve(None)
    try:
        answer = await ask(server, "example.test.")
    finally:
        await server.close()

    assert answer.rcode() == dns.rcode.REFUSED


async def test_the_daemon_entry_point_reads_upstreams_from_resolv_conf(
    tmp_path: Path,
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.53\n")

    server = await start_nameserver(
        cluster(), address=(HOST, 0), upstream=None, resolv_conf=resolv_conf
    )
    try:
        assert server.forwarder is not None
        assert server.forwarder.servers == ((HOST, 53), ("192.0.2.53", 53))
    finally:
        await server.close()

    none = await start_nameserver(cluster(), address=(HOST, 0), upstream=[])
    try:
        assert none.forwarder is None
    finally:
        await none.close()


async def test_a_busy_kube_dns_address_is_a_warning_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind((HOST, 0))
        taken = (HOST, busy.getsockname()[1])
        server = await start_nameserver(cluster(), address=(HOST, 0), upstream=[], kube_dns=taken)
        try:
            answer = await ask(server, "web.default.svc.cluster.local.")
        finally:
            await server.close()

    assert answer.answer
    assert f"the kube-dns Service address {HOST}:{taken[1]} is not served" in caplog.text
