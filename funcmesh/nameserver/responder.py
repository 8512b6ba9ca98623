"""The slow path: every query the fast path did not answer, read and answered with dnspython.

Translates the zone's answers and the forwarder's into replies, and turns the DNS errors into
their rcodes: FORMERR for a packet that cannot be read (or asks no single question), NOTIMP
for opcodes other than QUERY, BADVERS for EDNS versions above 0, REFUSED for classes other
than IN, zone transfers, and names outside the zone when there is no upstream. A reply that
does not fit a UDP datagram (512 bytes, or the query's EDNS size) goes out empty with TC set,
so the client asks again over TCP. Zone answers that depend on nothing else are stored in the
fast path's cache on the way out.

Must not: block (upstream questions are returned as coroutines for the server to run), or
raise on any input packet.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from funcmesh.nameserver.answers import Answer
from funcmesh.nameserver.upstream import Forwarded, Forwarder
from funcmesh.nameserver.wire import CLASSIC_UDP_BYTES, AnswerCache, error_reply, parse_question
from funcmesh.nameserver.zone import Zone

OUR_EDNS_PAYLOAD_BYTES = 1232
MAX_TCP_MESSAGE_BYTES = 65535
REFUSED_TYPES = frozenset(
    {dns.rdatatype.AXFR, dns.rdatatype.IXFR, dns.rdatatype.OPT, dns.rdatatype.TSIG}
)
Pending = Coroutine[Any, Any, bytes | None]
Reply = bytes | Pending | None  # send it / await it, then send / send nothing


class Responder:
    """Answers one query packet: from the zone, from upstream, or with an error rcode."""

    def __init__(self, zone: Zone, cache: AnswerCache, forwarder: Forwarder | None) -> None:
        self.zone = zone
        self._cache = cache
        self._forwarder = forwarder

    def respond(self, packet: bytes, *, udp: bool) -> Reply:
        """The reply to ``packet``; a coroutine when upstream must be asked first."""
        if len(packet) < 3 or packet[2] & 0x80:
            return None  # too short to be a query, or a response: never answer those
        if packet[2] & 0x78:  # an opcode other than QUERY (NOTIFY, UPDATE...): before parsing,
            return error_reply(packet, dns.rcode.NOTIMP)  # their sections mean other things
        try:
            query = dns.message.from_wire(packet)
        except (dns.exception.DNSException, ValueError, IndexError):
            return error_reply(packet, dns.rcode.FORMERR)
        error = _query_error(query)
        if error is not None:
            return _encode(_response(query, rcode=error), query, udp=udp)
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN or question.rdtype in REFUSED_TYPES:
            return _encode(_response(query, rcode=dns.rcode.REFUSED), query, udp=udp)
        answer = self.zone.answer(question.name, question.rdtype)
        if answer is None:
            if self._forwarder is None:
                return _encode(_response(query, rcode=dns.rcode.REFUSED), query, udp=udp)
            return self._forward(query, self._forwarder, udp=udp)
        if answer.chase is not None and self._forwarder is not None:
            return self._chase(query, answer, self._forwarder, udp=udp)
        response = _response(query, rcode=answer.rcode, authoritative=True)
        _fill(response, answer.answer, answer.authority, answer.additional)
        wire = response.to_wire()
        if answer.cacheable:
            self._remember(packet, query, wire)
        return _fit(wire, response, query, udp=udp)

    def _remember(self, packet: bytes, query: dns.message.Message, wire: bytes) -> None:
        question = parse_question(packet)
        if question is not None and not query.ednsflags & dns.flags.DO:
            self._cache.store(question, wire)

    async def _forward(
        self, query: dns.message.Message, forwarder: Forwarder, *, udp: bool
    ) -> bytes | None:
        question = query.question[0]
        forwarded = await forwarder.resolve(question.name, question.rdtype, question.rdclass)
        response = _response(query, rcode=forwarded.rcode)
        _fill(response, forwarded.answer, forwarded.authority, forwarded.additional)
        return _encode(response, query, udp=udp)

    async def _chase(
        self, query: dns.message.Message, answer: Answer, forwarder: Forwarder, *, udp: bool
    ) -> bytes | None:
        """An ExternalName's CNAME plus the target's addresses from upstream (as CoreDNS)."""
        assert answer.chase is not None
        question = query.question[0]
        target: Forwarded = await forwarder.resolve(answer.chase, question.rdtype, question.rdclass)
        response = _response(query, rcode=target.rcode, authoritative=True)
        _fill(response, (*answer.answer, *target.answer), target.authority, ())
        return _encode(response, query, udp=udp)


def _query_error(query: dns.message.Message) -> int | None:
    if len(query.question) != 1:
        return dns.rcode.FORMERR
    if query.edns > 0:
        return dns.rcode.BADVERS
    return None


def _response(
    query: dns.message.Message, *, rcode: int, authoritative: bool = False
) -> dns.message.Message:
    response = dns.message.make_response(
        query, recursion_available=True, our_payload=OUR_EDNS_PAYLOAD_BYTES
    )
    if authoritative:
        response.flags |= dns.flags.AA
    if query.edns >= 0:
        response.use_edns(0, query.ednsflags & dns.flags.DO, OUR_EDNS_PAYLOAD_BYTES)
    response.set_rcode(dns.rcode.Rcode(rcode))
    return response


def _fill(response: dns.message.Message, answer: Any, authority: Any, additional: Any) -> None:
    response.answer = list(answer)
    response.authority = list(authority)
    response.additional = list(additional)


def _encode(response: dns.message.Message, query: dns.message.Message, *, udp: bool) -> bytes:
    return _fit(response.to_wire(), response, query, udp=udp)


def _fit(
    wire: bytes, response: dns.message.Message, query: dns.message.Message, *, udp: bool
) -> bytes:
    """``wire`` when it fits the transport, else the same reply emptied with TC set."""
    limit = MAX_TCP_MESSAGE_BYTES
    if udp:
        limit = max(CLASSIC_UDP_BYTES, query.payload) if query.edns >= 0 else CLASSIC_UDP_BYTES
    if len(wire) <= limit:
        return wire
    _fill(response, (), (), ())
    response.flags |= dns.flags.TC
    return response.to_wire()
