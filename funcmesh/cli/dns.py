"""``funcmesh dns lookup NAME [TYPE]``: ask the cluster DNS server, print like ``nslookup``.

The server is ``--dns-server HOST:PORT``, else the address the daemon reports (``dnsAddress``
in its server config), else ``$FUNCMESH_DNS_ADDR`` or 127.0.0.1:5353 when the daemon cannot be
asked. A name with fewer than 5 dots is tried with the search list a pod of namespace ``-n``
has (``<ns>.svc.cluster.local svc.cluster.local cluster.local``, ``ndots:5``) before as it is;
an IP address is looked up as PTR. The query is a plain DNS message over UDP (TCP when the
answer is truncated), built here with the standard library: the DNS library stays in the
nameserver package, which the CLI does not import.

Exit status 1 when the name is not found (``** server can't find NAME: NXDOMAIN``), has no
record of that type, or the server cannot be reached.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.errors import FuncmeshError

logger = logging.getLogger(__name__)

DEFAULT_DNS_ADDR = "127.0.0.1:5353"
CLUSTER_DOMAIN = "cluster.local"
NDOTS = 5
TIMEOUT_S = 2.0
ATTEMPTS = 2
TYPES = {
    "A": 1,
    "NS": 2,
    "CNAME": 5,
    "SOA": 6,
    "PTR": 12,
    "MX": 15,
    "TXT": 16,
    "AAAA": 28,
    "SRV": 33,
    "ANY": 255,
}
TYPE_NAMES = {number: name for name, number in TYPES.items()}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
NXDOMAIN = 3
TC = 0x0200


class LookupFailed(FuncmeshError):
    """No usable answer; the message is what nslookup would print."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    name: str
    rtype: int
    ttl: int
    text: str  # the data in nslookup's words (an address, "service = ...", ...)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    rcode: int
    answers: tuple[Record, ...]


@click.group("dns")
@global_options
def dns() -> None:
    """Ask the cluster DNS server."""


@dns.command("lookup")
@click.argument("name")
@click.argument("rtype", metavar="[TYPE]", required=False, default=None)
@click.option(
    "--dns-server",
    metavar="HOST:PORT",
    help="DNS server to ask [the daemon's, else $FUNCMESH_DNS_ADDR, else 127.0.0.1:5353].",
)
@global_options
@click.pass_context
def lookup(ctx: click.Context, name: str, rtype: str | None, dns_server: str | None) -> None:
    """Look NAME up (type A unless TYPE: AAAA, SRV, PTR, TXT, CNAME, NS, SOA, MX, ANY)."""
    qtype = _qtype(rtype, name)
    if rtype is None and _is_ip(name):
        name = _reverse_name(name)
    host, port = _server_address(ctx, dns_server)
    click.echo(f"Server:\t\t{host}\nAddress:\t{host}#{port}\n")
    try:
        reply = _search(name, qtype, (host, port), namespace=session_of(ctx).namespace)
    except LookupFailed as exc:
        click.echo(str(exc))
        ctx.exit(1)
    if reply.rcode != 0:
        click.echo(f"** server can't find {name}: {RCODES.get(reply.rcode, reply.rcode)}")
        ctx.exit(1)
    if not reply.answers:
        click.echo(f"*** Can't find {name}: No answer")
        ctx.exit(1)
    for record in reply.answers:
        click.echo(_format(record))


def _qtype(rtype: str | None, name: str) -> int:
    if rtype is None:
        return TYPES["PTR"] if _is_ip(name) else TYPES["A"]
    number = TYPES.get(rtype.upper())
    if number is None:
        raise click.BadParameter(f"{rtype!r} is not one of {', '.join(TYPES)}", param_hint="TYPE")
    return number


def _server_address(ctx: click.Context, flag: str | None) -> tuple[str, int]:
    text = flag or _daemon_dns_address(ctx) or os.environ.get("FUNCMESH_DNS_ADDR")
    text = text or DEFAULT_DNS_ADDR
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit():
        raise click.BadParameter(f"must be HOST:PORT, got {text!r}", param_hint="--dns-server")
    return host.strip("[]"), int(port)


def _daemon_dns_address(ctx: click.Context) -> str:
    """Where the daemon says its DNS server is; "" when it cannot be asked."""
    try:
        return session_of(ctx).client().server_config().dns_address
    except FuncmeshError as exc:
        logger.debug("cannot ask the daemon for its DNS address: %s", exc)
        return ""


def _search(name: str, qtype: int, server: tuple[str, int], *, namespace: str) -> Reply:
    """Try the candidates a pod's resolver would; the first with an answer, else the most
    telling failure: a name that exists without the type, then NXDOMAIN, then the last."""
    replies = []
    for candidate in _candidates(name, namespace):
        reply = _ask(server, candidate, qtype)
        if reply.rcode == 0 and reply.answers:
            return reply
        replies.append(reply)
    for rcode in (0, NXDOMAIN):
        for reply in replies:
            if reply.rcode == rcode:
                return reply
    return replies[-1]


def _candidates(name: str, namespace: str) -> list[str]:
    if name.endswith("."):
        return [name.rstrip(".")]
    search = [f"{namespace}.svc.{CLUSTER_DOMAIN}", f"svc.{CLUSTER_DOMAIN}", CLUSTER_DOMAIN]
    expanded = [f"{name}.{domain}" for domain in search]
    return [name, *expanded] if name.count(".") >= NDOTS else [*expanded, name]


# -- the wire -----------------------------------------------------------------------------------


def _ask(server: tuple[str, int], name: str, qtype: int) -> Reply:
    query_id = random.randrange(1 << 16)
    query = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)  # RD, one question
    query += _encode_name(name) + struct.pack("!HH", qtype, 1)
    message = _udp_exchange(server, query, query_id)
    if struct.unpack_from("!H", message, 2)[0] & TC:
        message = _tcp_exchange(server, query)
    return _parse(message)


def _udp_exchange(server: tuple[str, int], query: bytes, query_id: int) -> bytes:
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        for _ in range(ATTEMPTS):
            sock.sendto(query, server)
            try:
                while True:
                    message, _ = sock.recvfrom(65535)
                    if len(message) >= 12 and struct.unpack_from("!H", message)[0] == query_id:
                        return message
            except TimeoutError:
                continue
            except OSError as exc:
                raise LookupFailed(f";; communications error to {_at(server)}: {exc}") from exc
    raise LookupFailed(f";; connection timed out; no servers could be reached ({_at(server)})")


def _tcp_exchange(server: tuple[str, int], query: bytes) -> bytes:
    try:
        with socket.create_connection(server, timeout=TIMEOUT_S) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", _receive(sock, 2))[0]
            return _receive(sock, size)
    except OSError as exc:
        raise LookupFailed(f";; communications error to {_at(server)} over TCP: {exc}") from exc


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def _encode_name(name: str) -> bytes:
    encoded = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not raw or len(raw) > 63:
            raise click.BadParameter(f"{name!r} is not a valid DNS name", param_hint="NAME")
        encoded += bytes((len(raw),)) + raw
    return encoded + b"\x00"


def _parse(message: bytes) -> Reply:
    try:
        _, flags, qdcount, ancount = struct.unpack_from("!HHHH", message)
        offset = 12
        for _ in range(qdcount):
            _, offset = _decode_name(message, offset)
            offset += 4
        answers = []
        for _ in range(ancount):
            record, offset = _record(message, offset)
            answers.append(record)
    except (struct.error, IndexError, ValueError) as exc:
        raise LookupFailed(f";; the DNS server sent a malformed answer: {exc}") from exc
    return Reply(rcode=flags & 0x0F, answers=tuple(answers))


def _record(message: bytes, offset: int) -> tuple[Record, int]:
    name, offset = _decode_name(message, offset)
    rtype, _, ttl, length = struct.unpack_from("!HHIH", message, offset)
    start = offset + 10
    text = _rdata_text(message, rtype, start, message[start : start + length])
    return Record(name=name, rtype=rtype, ttl=ttl, text=text), start + length


def _rdata_text(message: bytes, rtype: int, start: int, rdata: bytes) -> str:
    if rtype == TYPES["A"]:
        return str(ipaddress.IPv4Address(rdata))
    if rtype == TYPES["AAAA"]:
        return str(ipaddress.IPv6Address(rdata))
    if rtype in (TYPES["CNAME"], TYPES["PTR"], TYPES["NS"]):
        return _decode_name(message, start)[0] + "."
    if rtype == TYPES["SRV"]:
        priority, weight, port = struct.unpack_from("!HHH", rdata)
        return f"{priority} {weight} {port} {_decode_name(message, start + 6)[0]}."
    if rtype == TYPES["MX"]:
        return f"{struct.unpack_from('!H', rdata)[0]} {_decode_name(message, start + 2)[0]}."
    if rtype == TYPES["TXT"]:
        return " ".join(f'"{chunk.decode(errors="replace")}"' for chunk in _strings(rdata))
    if rtype == TYPES["SOA"]:
        origin, offset = _decode_name(message, start)
        mail, offset = _decode_name(message, offset)
        numbers = struct.unpack_from("!IIIII", message, offset)
        return f"{origin}. {mail}. " + " ".join(map(str, numbers))
    return rdata.hex()


def _strings(rdata: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(rdata):
        size = rdata[offset]
        yield rdata[offset + 1 : offset + 1 + size]
        offset += 1 + size


def _decode_name(message: bytes, offset: int) -> tuple[str, int]:
    """(dotted name, offset after it), following compression pointers (at most 64 hops)."""
    labels: list[str] = []
    end = -1
    for _ in range(64):
        size = message[offset]
        if size & 0xC0 == 0xC0:
            end = offset + 2 if end < 0 else end
            offset = ((size & 0x3F) << 8) | message[offset + 1]
            continue
        if size == 0:
            return ".".join(labels), (offset + 1 if end < 0 else end)
        labels.append(message[offset + 1 : offset + 1 + size].decode("ascii", errors="replace"))
        offset += 1 + size
    raise ValueError("a name with a compression loop")


# -- nslookup's words ---------------------------------------------------------------------------


def _format(record: Record) -> str:
    kind = TYPE_NAMES.get(record.rtype, str(record.rtype))
    if kind in ("A", "AAAA"):
        return f"Name:\t{record.name}\nAddress: {record.text}"
    words = {
        "CNAME": "canonical name",
        "PTR": "name",
        "NS": "nameserver",
        "SRV": "service",
        "TXT": "text",
        "MX": "mail exchanger",
        "SOA": "origin/mail addr/serial/refresh/retry/expire/minimum",
    }
    return f"{record.name}\t{words.get(kind, kind)} = {record.text}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _reverse_name(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def _at(server: tuple[str, int]) -> str:
    return f"{server[0]}#{server[1]}"
