"""Names outside the cluster zone: forwarded to upstream servers, answers cached by their TTL.

The upstreams are the ``--dns-upstream`` servers, else the ``nameserver`` lines of the machine's
/etc/resolv.conf minus any that point back at this server. Each question is asked of the
upstreams in order (UDP, TCP when the answer is truncated) until one answers; answers are kept
until their smallest TTL runs out (negative answers: the SOA's, per RFC 2308), served with the
TTLs counted down, and identical questions asked while one is in flight share it. An upstream
that fails or times out gives SERVFAIL, which is not cached.

Must not: answer for the cluster zone, or query anything but the configured servers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

logger = logging.getLogger(__name__)

DNS_PORT = 53
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_ENTRIES = 10_000
MAX_CACHE_TTL_S = 3600
EDNS_PAYLOAD_BYTES = 1232  # what we ask upstreams for: no IP fragmentation (DNS flag day 2020)
Server = tuple[str, int]  # (IP, port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarded:
    """An upstream's answer: rcode and sections (no OPT)."""

    rcode: int
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()

    def aged(self, elapsed_s: float) -> Forwarded:
        """A copy with every TTL lowered by ``elapsed_s`` (what a cache hands out)."""
        spent = int(elapsed_s)
        if spent <= 0:
            return self
        return Forwarded(
            rcode=self.rcode,
            answer=_aged(self.answer, spent),
            authority=_aged(self.authority, spent),
            additional=_aged(self.additional, spent),
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    stored_s: float
    expires_s: float
    forwarded: Forwarded


CacheKey = tuple[dns.name.Name, int, int]


class Forwarder:
    """Resolves questions outside the zone through ``servers``, with a TTL-respecting cache."""

    def __init__(
        self,
        servers: Sequence[Server],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.servers = tuple(servers)
        self._timeout_s = timeout_s
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[CacheKey, _Entry] = {}
        self._in_flight: dict[CacheKey, asyncio.Future[Forwarded]] = {}

    async def resolve(self, qname: dns.name.Name, qtype: int, qclass: int) -> Forwarded:
        """The answer for the question, from the cache or from the first upstream that gives
        one; SERVFAIL when none does."""
        key = (qname.canonicalize(), qtype, qclass)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is not None:
            if now < entry.expires_s:
                return entry.forwarded.aged(now - entry.stored_s)
            del self._cache[key]
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Forwarded] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            forwarded = await self._ask(*key)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # marked retrieved: the waiters, if any, get it
            raise
        finally:
            del self._in_flight[key]
        future.set_result(forwarded)
        self._remember(key, forwarded)
        return forwarded

    async def _ask(self, qname: dns.name.Name, qtype: int, qclass: int) -> Forwarded:
        query = dns.message.make_query(
            qname,
            dns.rdatatype.RdataType(qtype),
            dns.rdataclass.RdataClass(qclass),
            use_edns=0,
            payload=EDNS_PAYLOAD_BYTES,
        )
        for host, port in self.servers:
            try:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    query, host, timeout=self._timeout_s, port=port, ignore_unexpected=True
                )
            except (dns.exception.DNSException, OSError, ValueError) as exc:
                logger.debug("upstream %s:%d failed for %s: %r", host, port, qname, exc)
                continue
            if response.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                return Forwarded(
                    rcode=response.rcode(),
                    answer=tuple(response.answer),
                    authority=tuple(response.authority),
                    additional=tuple(response.additional),
                )
            logger.debug("upstream %s:%d answered %s: %s", host, port, qname, response.rcode())
        return Forwarded(rcode=dns.rcode.SERVFAIL)

    def _remember(self, key: CacheKey, forwarded: Forwarded) -> None:
        ttl_s = cache_ttl_s(forwarded)
        if ttl_s <= 0:
            return
        if len(self._cache) >= self._max_entries:
            self._cache.clear()
        now = self._clock()
        self._cache[key] = _Entry(stored_s=now, expires_s=now + ttl_s, forwarded=forwarded)


def cache_ttl_s(forwarded: Forwarded) -> int:
    """How long an answer may be kept: its smallest answer TTL; for a negative answer the SOA's
    TTL capped by its minimum field (RFC 2308); 0 (not at all) for failures."""
    if forwarded.rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return 0
    if forwarded.answer:
        return min(MAX_CACHE_TTL_S, *(rrset.ttl for rrset in forwarded.answer))
    for rrset in forwarded.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            minimum: int = rrset[0].minimum
            return min(MAX_CACHE_TTL_S, rrset.ttl, minimum)
    return 0


def resolv_conf_nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf, in order (scoped IPv6 ones dropped)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and "%" not in fields[1]:
            try:
                found.append(str(ipaddress.ip_address(fields[1])))
            except ValueError:
                continue
    return found


def system_upstreams(resolv_conf: str, *, own: Collection[Server]) -> list[Server]:
    """The machine's resolvers from resolv.conf text, without the ones that are this server
    (asking ourselves would loop)."""
    return [
        (ip, DNS_PORT) for ip in resolv_conf_nameservers(resolv_conf) if (ip, DNS_PORT) not in own
    ]


def _aged(rrsets: tuple[dns.rrset.RRset, ...], spent_s: int) -> tuple[dns.rrset.RRset, ...]:
    aged = []
    for rrset in rrsets:
        ttl = max(0, rrset.ttl - spent_s)
        aged.append(dns.rrset.from_rdata_list(rrset.name, ttl, list(rrset)))
    return tuple(aged)
