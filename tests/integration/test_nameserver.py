"""The DNS server over real UDP and TCP sockets, asked with dnspython and with ``dig``.

The table of cases (tests/unit/nameserver/cluster.py) runs through every transport and both
clients; then bad input (garbage, truncated, oversized, odd opcodes and classes), truncation
and the TCP retry, EDNS, letter case, cache invalidation, pipelining and a flood.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

import funcmesh.nameserver.server as server_module
from funcmesh.discovery.services import ServiceTable
from funcmesh.nameserver.backlog import udp_backlog
from funcmesh.nameserver.server import WINDOW_S, NameServer
from tests.unit.nameserver.cluster import CASES, Case, cluster, endpoints, normalized, service

HOST = "127.0.0.1"
DIG = shutil.which("dig")
needs_dig = pytest.mark.skipif(DIG is None, reason="dig missing: apt-get install bind9-dnsutils")


@pytest.fixture
def table() -> ServiceTable:
    return cluster()


@pytest.fixture
async def server(table: ServiceTable) -> AsyncIterator[NameServer]:
    nameserver = NameServer(table, forwarder=None)
    await nameserver.listen(HOST, 0)
    try:
        yield nameserver
    finally:
        await nameserver.close()


def port_of(server: NameServer) -> int:
    return server.addresses[0][1]


@dataclass
class Seen:
    """What a client saw, in dig's words."""

    rcode: str
    answer: list[str]
    additional: list[str]
    authority_types: list[str] = field(default_factory=list)
    truncated: bool = False


def seen(response: dns.message.Message) -> Seen:
    def texts(section: list[dns.rrset.RRset]) -> list[str]:
        return normalized(line for rrset in section for line in rrset.to_text().splitlines())

    return Seen(
        rcode=dns.rcode.to_text(response.rcode()),
        answer=texts(response.answer),
        additional=texts(response.additional),
        authority_types=[dns.rdatatype.to_text(rrset.rdtype) for rrset in response.authority],
        truncated=bool(response.flags & dns.flags.TC),
    )


async def ask(server: NameServer, qname: str, qtype: str, *, tcp: bool, **query: object) -> Seen:
    message = dns.message.make_query(qname, qtype, **query)  # type: ignore[arg-type]
    if tcp:
        response = await dns.asyncquery.tcp(message, HOST, port=port_of(server), timeout=5)
    else:
        response = await dns.asyncquery.udp(message, HOST, port=port_of(server), timeout=5)
    return seen(response)


async def dig(server: NameServer, *args: str) -> Seen:
    assert DIG is not None
    process = await asyncio.create_subprocess_exec(
        DIG,
        f"@{HOST}",
        "-p",
        str(port_of(server)),
        *args,
        "+noall",
        "+comments",
        "+answer",
        "+authority",
        "+additional",
        "+tries=1",
        "+time=3",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return parse_dig(out.decode())


def parse_dig(text: str) -> Seen:
    sections: dict[str, list[str]] = {"ANSWER": [], "AUTHORITY": [], "ADDITIONAL": []}
    rcode, flags, current = "", "", ""
    for line in text.splitlines():
        if "status:" in line:
            rcode = line.split("status:")[1].split(",")[0].strip()
        elif line.startswith(";; flags:"):
            flags = line.split(";")[2]
        elif line.startswith(";; ") and line.endswith(" SECTION:"):
            current = line[3:].split()[0]
        elif line.strip() and not line.startswith(";") and current in sections:
            sections[current].append(line)
    return Seen(
        rcode=rcode,
        answer=normalized(sections["ANSWER"]),
        additional=normalized(sections["ADDITIONAL"]),
        authority_types=[line.split()[3] for line in sections["AUTHORITY"]],
        truncated=" tc" in flags,
    )


def check(case: Case, got: Seen) -> None:
    assert got.rcode == case.rcode
    assert got.answer == normalized(case.answer)
    assert got.additional == normalized(case.additional)
    assert ("SOA" in got.authority_types) == case.soa


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_cases_with_dnspython(server: NameServer, case: Case, tcp: bool) -> None:
    check(case, await ask(server, case.qname, case.qtype, tcp=tcp))
    check(case, await ask(server, case.qname, case.qtype, tcp=tcp))  # now from the cache


@needs_dig
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
async def test_cases_with_dig(server: NameServer, case: Case, tcp: bool) -> None:
    transport = ["+tcp"] if tcp else ["+notcp"]
    check(case, await dig(server, case.qname, case.qtype, *transport))
    check(case, await dig(server, case.qname, case.qtype, *transport, "+noedns"))


# -- letter case, the cache and the table ---------------------------------------------------------


async def test_the_answer_keeps_the_letters_of_the_question(server: NameServer) -> None:
    for spelling in ("web.default.svc.cluster.local.", "WeB.DeFaUlT.svc.cluster.local."):
        message = dns.message.make_query(spelling, "A")
        response = await dns.asyncquery.udp(message, HOST, port=port_of(server), timeout=5)

        assert response.question[0].name.to_text() == spelling
        assert response.answer[0].name.to_text() == spelling
        assert response.answer[0][0].address == "127.96.0.20"


async def test_a_change_in_the_table_shows_in_the_next_answer(
    server: NameServer, table: ServiceTable
) -> None:
    web = "web.default.svc.cluster.local."
    await ask(server, web, "A", tcp=False)
    assert len(server.cache) > 0

    table.put_service(service("web", "127.96.0.99", ("http", 80, "TCP")))

    assert (await ask(server, web, "A", tcp=False)).answer == [f"{web} 5 in a 127.96.0.99"]
    table.remove_service("default", "web")
    assert (await ask(server, web, "A", tcp=False)).rcode == "NXDOMAIN"


async def test_a_headless_service_follows_its_endpoints(
    server: NameServer, table: ServiceTable
) -> None:
    db = "db.default.svc.cluster.local."
    await ask(server, db, "A", tcp=False)

    table.put_endpoints(endpoints("db", [], ("pg", 5432)))

    assert (await ask(server, db, "A", tcp=False)).rcode == "NXDOMAIN"


# -- truncation, EDNS -----------------------------------------------------------------------------


@pytest.fixture
def big(table: ServiceTable) -> str:
    """A headless Service with 60 ready endpoints: its A answer needs about 1 KB."""
    table.put_service(service("big", None, ("http", 80, "TCP")))
    ready = [(f"127.128.1.{n}", None) for n in range(1, 61)]
    table.put_endpoints(endpoints("big", ready, ("http", 80)))
    return "big.default.svc.cluster.local."


async def test_a_long_answer_is_truncated_over_udp_and_whole_over_tcp(
    server: NameServer, big: str
) -> None:
    plain = await ask(server, big, "A", tcp=False)
    larger = await ask(server, big, "A", tcp=False, use_edns=0, payload=4096)
    small_edns = await ask(server, big, "A", tcp=False, use_edns=0, payload=512)
    over_tcp = await ask(server, big, "A", tcp=True)

    assert plain.truncated
    assert plain.answer == []
    assert small_edns.truncated
    assert not larger.truncated
    assert len(larger.answer) == 60
    assert not over_tcp.truncated
    assert len(over_tcp.answer) == 60


@needs_dig
async def test_dig_retries_a_truncated_answer_over_tcp(server: NameServer, big: str) -> None:
    got = await dig(server, big, "A", "+noedns")

    assert len(got.answer) == 60


async def test_edns_is_echoed_only_when_asked(server: NameServer) -> None:
    web = "web.default.svc.cluster.local."
    port = port_of(server)
    with_edns = dns.message.make_query(web, "A", use_edns=0, payload=4096, want_dnssec=True)
    without = dns.message.make_query(web, "A")

    first = await dns.asyncquery.udp(with_edns, HOST, port=port, timeout=5)
    second = await dns.asyncquery.udp(without, HOST, port=port, timeout=5)

    assert first.edns == 0
    assert first.payload == 1232
    assert first.ednsflags & dns.flags.DO
    assert second.edns == -1


# -- bad input ------------------------------------------------------------------------------------


class Client:
    """A plain UDP socket: what a broken or hostile client sends."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.port = port

    async def send(self, packet: bytes) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, packet, (HOST, self.port))

    async def receive(self) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), 5)

    def close(self) -> None:
        self.sock.close()


VALID = dns.message.make_query("web.default.svc.cluster.local.", "A")
VALID.id = 0x7777


@pytest.mark.parametrize(
    ("packet", "rcode"),
    [
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", "FORMERR"),  # no question bytes
        (b"\x12\x34\x00\x00\xff\xff" + bytes(200), "FORMERR"),  # 65535 questions claimed
        (b"\x12\x34\x01\x00" + b"\xfe" * 60, "FORMERR"),  # garbage
        (VALID.to_wire()[:-3].replace(b"\x77\x77", b"\x12\x34", 1), "FORMERR"),  # cut short
        (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"\x3f" * 60000, "FORMERR"),
    ],
    ids=["no-question", "too-many-questions", "garbage", "truncated", "oversized"],
)
async def test_malformed_packets_get_formerr_and_the_server_goes_on(
    server: NameServer, packet: bytes, rcode: str
) -> None:
    client = Client(port_of(server))
    try:
        await client.send(packet)
        reply = await client.receive()
        await client.send(VALID.to_wire())
        after = dns.message.from_wire(await client.receive())
    finally:
        client.close()

    assert reply[:2] == b"\x12\x34"
    assert reply[2] & 0x80
    assert dns.rcode.to_text(reply[3] & 0x0F) == rcode
    assert after.id == VALID.id
    assert after.answer


@pytest.mark.parametrize(
    "packet",
    [b"", b"\x12", b"\x12\x34", dns.message.make_response(VALID).to_wire()],
    ids=["empty", "one-byte", "two-bytes", "a-response"],
)
async def test_packets_that_are_no_query_get_no_answer(server: NameServer, packet: bytes) -> None:
    client = Client(port_of(server))
    try:
        await client.send(packet)
        await client.send(VALID.to_wire())
        first = dns.message.from_wire(await client.receive())
    finally:
        client.close()

    assert first.id == VALID.id  # nothing came back for the packet before


def odd(change: str) -> dns.message.Message:
    message = dns.message.make_query("web.default.svc.cluster.local.", "A")
    if change == "status":
        message.set_opcode(dns.opcode.STATUS)
    elif change == "update":
        message.set_opcode(dns.opcode.UPDATE)
    elif change == "chaos":
        message = dns.message.make_query("version.bind.", "TXT", rdclass=dns.rdataclass.CH)
    elif change == "axfr":
        message = dns.message.make_query("cluster.local.", "AXFR")
    elif change == "two-questions":
        message.question.append(message.question[0])
    elif change == "edns1":
        message.use_edns(1)
    elif change == "outside":
        message = dns.message.make_query("example.com.", "A")
    return message


@pytest.mark.parametrize(
    ("change", "rcode"),
    [
        ("status", "NOTIMP"),
        ("update", "NOTIMP"),
        ("chaos", "REFUSED"),
        ("axfr", "REFUSED"),
        ("two-questions", "FORMERR"),
        ("edns1", "BADVERS"),
        ("outside", "REFUSED"),  # no upstream configured
    ],
)
async def test_queries_the_server_does_not_serve(
    server: NameServer, change: str, rcode: str
) -> None:
    client = Client(port_of(server))
    try:
        await client.send(odd(change).to_wire())
        response = dns.message.from_wire(await client.receive())
    finally:
        client.close()

    assert dns.rcode.to_text(response.rcode()) == rcode


async def test_tcp_takes_pipelined_queries_and_survives_garbage(server: NameServer) -> None:
    reader, writer = await asyncio.open_connection(HOST, port_of(server))
    first = dns.message.make_query("web.default.svc.cluster.local.", "A")
    second = dns.message.make_query("db.default.svc.cluster.local.", "A")
    garbage = b"\x55\x55\x01\x00" + b"\xff" * 20
    try:
        writer.write(b"".join(struct.pack("!H", len(m)) + m for m in (
            first.to_wire(), garbage, second.to_wire()
        )))  # fmt: skip
        await writer.drain()
        replies = [await read_tcp_message(reader) for _ in range(3)]
    finally:
        writer.close()
        await writer.wait_closed()

    by_id = {struct.unpack("!H", reply[:2])[0]: reply for reply in replies}
    assert dns.message.from_wire(by_id[first.id]).answer
    assert len(dns.message.from_wire(by_id[second.id]).answer[0]) == 2
    assert by_id[0x5555][3] & 0x0F == dns.rcode.FORMERR


async def read_tcp_message(reader: asyncio.StreamReader) -> bytes:
    size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
    return await asyncio.wait_for(reader.readexactly(size), 5)


# -- a flood --------------------------------------------------------------------------------------

FLOODER = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
packet, address = bytes.fromhex(sys.argv[1]), ("127.0.0.1", int(sys.argv[2]))
sent, end = 0, time.monotonic() + float(sys.argv[3])
print("flooding", flush=True)
while time.monotonic() < end:
    for _ in range(200):
        try:
            sock.sendto(packet, address)
            sent += 1
        except BlockingIOError:
            pass
        try:
            while True:
                sock.recv(512)
        except BlockingIOError:
            pass
print(sent, flush=True)
"""


async def test_a_flood_from_one_client_does_not_starve_another(server: NameServer) -> None:
    flood = dns.message.make_query("web.default.svc.cluster.local.", "A").to_wire()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FLOODER, flood.hex(), str(port_of(server)), "4",
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    await process.stdout.readline()  # it is flooding
    answered = 0
    try:
        for n in range(100):
            name = "db.default.svc.cluster.local." if n % 2 else "lonely.default.svc.cluster.local."
            query = dns.message.make_query(name, "A")
            # What a stub resolver does: wait 2 s (Go's default; glibc waits 5 s), ask again.
            # Shorter is wrong here: a query queued in the server's socket behind up to its
            # whole receive buffer of flood is answered, only later.
            for _attempt in range(3):
                try:
                    response = await dns.asyncquery.udp(
                        query, HOST, port=port_of(server), timeout=2.0
                    )
                except dns.exception.Timeout:
                    continue
                answered += bool(response.answer)
                break
    finally:
        sent = int((await process.stdout.read()).decode().strip() or 0)
        await process.wait()

    assert answered == 100
    assert sent > 0
    assert server.dropped > 0, "the flooding client was never held back"


async def test_an_idle_server_reads_no_socket_table(
    server: NameServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[int, int] | None] = []

    def counted(inodes: set[int]) -> tuple[int, int] | None:
        reads.append(backlog := udp_backlog(inodes))
        return backlog

    monkeypatch.setattr(server_module, "udp_backlog", counted)
    await asyncio.sleep(3.5 * WINDOW_S)  # three fairness windows without a query
    assert reads == []
    query = dns.message.make_query("web.default.svc.cluster.local.", "A")
    response = await dns.asyncquery.udp(query, HOST, port=port_of(server), timeout=2.0)
    assert response.answer
    await asyncio.sleep(1.5 * WINDOW_S)
    assert reads, "the window with a query checked the sockets"
    assert reads[0] is not None
