"""Cluster names for code that runs in a funcmesh worker, without root and without code changes.

A pod in Kubernetes resolves ``hello`` or ``hello.default`` because its ``/etc/resolv.conf``
names the cluster DNS server and the search list ``<ns>.svc.cluster.local svc.cluster.local
cluster.local`` with ``ndots:5``. A worker shares the machine's resolv.conf, so ``install``
wraps ``socket.getaddrinfo``, ``gethostbyname`` and ``gethostbyname_ex`` instead: a name whose
resolv.conf-style expansions fall inside the cluster zone is asked of funcmesh's DNS server
(``FUNCMESH_DNS_SERVER``, ``HOST:PORT``) first, over UDP (TCP when the answer is truncated);
what the cluster does not know goes to the machine's resolver unchanged. Answers are cached for
their TTL. ``urllib``, ``http.client``, ``requests`` and ``socket.create_connection`` all end in
``getaddrinfo``, so they all see the cluster. ``ClusterResolver.service_name`` tells which
Service a name resolved to (the mTLS shim's SNI).

Standard library only, Python 3.8+: this runs inside users' interpreters.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

SERVER_ENV = "FUNCMESH_DNS_SERVER"  # HOST:PORT of funcmesh's DNS server
SEARCH_ENV = "FUNCMESH_DNS_SEARCH"  # space-separated search list, as in resolv.conf
ZONE_ENV = "FUNCMESH_DNS_ZONE"  # the cluster domain, default cluster.local
NDOTS = 5
TIMEOUT_S = 1.0
ATTEMPTS = 2
TYPE_A, CLASS_IN = 1, 1
RCODE_NXDOMAIN = 3
MAX_CACHE_ENTRIES = 1024
NEGATIVE_TTL_S = 5.0
UNRESOLVED: list[str] = []  # the cluster has no such name: ask the machine's resolver


class ClusterResolver:
    """Resolves cluster names to IPv4 addresses through one DNS server, with a TTL cache."""

    def __init__(self, server: tuple[str, int], search: list[str], zone: str) -> None:
        self.server = server
        self.search = [domain.strip(".").lower() for domain in search if domain.strip(".")]
        self.zone = zone.strip(".").lower()
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._lock = threading.Lock()

    def candidates(self, name: str) -> list[str]:
        """The names resolv.conf would try for ``name``, kept to those in the cluster zone."""
        if name.endswith("."):
            tried = [name[:-1]]
        else:
            expanded = [f"{name}.{domain}" for domain in self.search]
            tried = [name, *expanded] if name.count(".") >= NDOTS else [*expanded, name]
        return [candidate for candidate in tried if self.in_zone(candidate)]

    def in_zone(self, name: str) -> bool:
        lowered = name.lower()
        return lowered == self.zone or lowered.endswith("." + self.zone)

    def resolve(self, name: str) -> list[str]:
        """The cluster's addresses for ``name``; empty when the cluster does not know it (or
        its DNS server does not answer: the machine's resolver gets its turn then)."""
        for candidate in self.candidates(name):
            addresses = self._lookup(candidate)
            if addresses:
                return addresses
        return UNRESOLVED

    def service_name(self, name: str) -> str | None:
        """The Service name ``<svc>.<ns>.svc.<zone>`` that ``name`` resolved to lately (the
        first of its candidates with addresses in the cache), None when it resolved to no
        Service (a pod's name, a name outside the cluster, nothing yet). The mTLS shim sends
        it as SNI and checks the VIP's certificate against it."""
        for candidate in self.candidates(name):
            key = candidate.lower()
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None and cached[1]:
                labels = key[: -len(self.zone) - 1].split(".")
                return key if len(labels) == 3 and labels[2] == "svc" else None
        return None

    def _lookup(self, name: str) -> list[str]:
        key = name.lower()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            addresses, ttl_s = query_a(self.server, name)
        except OSError:
            return UNRESOLVED  # not cached: the server may be back for the next call
        with self._lock:
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache.clear()
            self._cache[key] = (now + ttl_s, addresses)
        return addresses


def query_a(server: tuple[str, int], name: str) -> tuple[list[str], float]:
    """Ask ``server`` for the A records of ``name``: (addresses, seconds to cache them).

    No answer (NXDOMAIN or no A record) is ([], NEGATIVE_TTL_S). Raises OSError when the
    server cannot be reached or answers garbage."""
    ident = random.getrandbits(16)
    query = encode_query(ident, name)
    last_error: OSError = OSError(f"no answer from {server[0]}:{server[1]}")
    for _ in range(ATTEMPTS):
        try:
            reply = _exchange_udp(server, query, ident)
            if reply[2] & 0x02:  # truncated: the whole answer over TCP
                reply = _exchange_tcp(server, query)
            return decode_a_answer(reply, ident)
        except OSError as exc:
            last_error = exc
    raise last_error


def encode_query(ident: int, name: str) -> bytes:
    """A recursion-desired query for the A records of ``name``."""
    labels = b"".join(
        bytes([len(label)]) + label for label in name.rstrip(".").encode("idna").split(b".")
    )
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + b"\0\1\0\1"


def decode_a_answer(reply: bytes, ident: int) -> tuple[list[str], float]:
    """The IPv4 addresses of a reply's answer section and the smallest TTL (CNAMEs followed
    by the server are skipped: their targets' A records come in the same answer)."""
    try:
        return _decode_a_answer(reply, ident)
    except (struct.error, IndexError) as exc:
        raise OSError(f"a malformed DNS reply: {exc}") from None


def _decode_a_answer(reply: bytes, ident: int) -> tuple[list[str], float]:
    if len(reply) < 12:
        raise OSError("short DNS reply")
    got_ident, flags, questions, answers = struct.unpack("!HHHH", reply[:8])
    if got_ident != ident or not flags & 0x8000:
        raise OSError("a DNS reply that does not match the query")
    rcode = flags & 0x0F
    if rcode not in (0, RCODE_NXDOMAIN):
        raise OSError(f"DNS server answered rcode {rcode}")
    position = 12
    for _ in range(questions):
        position = _skip_name(reply, position) + 4
    addresses: list[str] = []
    ttl_s = NEGATIVE_TTL_S
    for _ in range(answers):
        position = _skip_name(reply, position)
        rtype, rclass, ttl, length = struct.unpack("!HHIH", reply[position : position + 10])
        position += 10
        data = reply[position : position + length]
        position += length
        if rtype == TYPE_A and rclass == CLASS_IN and length == 4:
            addresses.append(socket.inet_ntoa(data))
            ttl_s = min(ttl_s, float(ttl)) if len(addresses) > 1 else float(ttl)
    if position > len(reply):
        raise OSError("a DNS reply cut short")
    return addresses, max(ttl_s, 0.0) if addresses else NEGATIVE_TTL_S


def _skip_name(reply: bytes, position: int) -> int:
    while True:
        if position >= len(reply):
            raise OSError("a DNS reply cut short")
        length = reply[position]
        if length & 0xC0 == 0xC0:
            return position + 2
        if length == 0:
            return position + 1
        position += length + 1


def _exchange_udp(server: tuple[str, int], query: bytes, ident: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT_S)
        sock.connect(server)
        sock.send(query)
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = sock.recv(65535)
            if len(reply) >= 2 and struct.unpack("!H", reply[:2])[0] == ident:
                return reply
            if time.monotonic() > deadline:
                raise OSError("no matching DNS reply")


def _exchange_tcp(server: tuple[str, int], query: bytes) -> bytes:
    with socket.create_connection(server, timeout=TIMEOUT_S) as sock:
        sock.sendall(struct.pack("!H", len(query)) + query)
        length = struct.unpack("!H", _read_exactly(sock, 2))[0]
        return _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise OSError("the DNS server closed the connection")
        chunks += chunk
    return chunks


def resolver_from(env: Mapping[str, str]) -> ClusterResolver | None:
    """The resolver the environment asks for; None without ``FUNCMESH_DNS_SERVER``."""
    server = env.get(SERVER_ENV, "")
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        return None
    search = env.get(SEARCH_ENV, "svc.cluster.local cluster.local").split()
    return ClusterResolver(
        (host.strip("[]"), int(port)), search, env.get(ZONE_ENV, "cluster.local")
    )


def install(env: Mapping[str, str] = os.environ) -> ClusterResolver | None:
    """Wrap the socket module's name functions with the environment's cluster resolver."""
    resolver = resolver_from(env)
    if resolver is None or getattr(socket.getaddrinfo, "_funcmesh", False):
        return None
    original_getaddrinfo = socket.getaddrinfo
    original_gethostbyname_ex = socket.gethostbyname_ex

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                    flags: int = 0) -> list[Any]:  # fmt: skip
        addresses = _cluster_addresses(resolver, host, family)
        if not addresses:
            return original_getaddrinfo(host, port, family, type, proto, flags)
        found: list[Any] = []
        for address in addresses:
            numeric = flags | socket.AI_NUMERICHOST
            found.extend(original_getaddrinfo(address, port, socket.AF_INET, type, proto, numeric))
        return found

    def gethostbyname_ex(host: str) -> tuple[str, list[str], list[str]]:
        addresses = _cluster_addresses(resolver, host, socket.AF_INET)
        if not addresses:
            return original_gethostbyname_ex(host)
        return host, [], list(addresses)

    def gethostbyname(host: str) -> str:
        return gethostbyname_ex(host)[2][0]

    _mark(getaddrinfo, original_getaddrinfo)
    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.gethostbyname_ex = gethostbyname_ex
    socket.gethostbyname = gethostbyname
    return resolver


def _cluster_addresses(resolver: ClusterResolver, host: Any, family: int) -> list[str]:
    if isinstance(host, bytes):
        host = host.decode("idna", "replace")
    if not isinstance(host, str) or not host or family not in (0, socket.AF_INET):
        return UNRESOLVED
    if host == "localhost" or _is_ip_literal(host):
        return UNRESOLVED
    return resolver.resolve(host)


def _is_ip_literal(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            continue
    return False


def _mark(function: Callable[..., Any], original: Callable[..., Any]) -> None:
    function._funcmesh = True  # type: ignore[attr-defined]
    function.__wrapped__ = original  # type: ignore[attr-defined]
