"""The fast path: which packets it takes, and that its replies equal the slow path's."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from funcmesh.nameserver.responder import Responder
from funcmesh.nameserver.wire import AnswerCache, error_reply, parse_question
from funcmesh.nameserver.zone import Zone
from tests.unit.nameserver.cluster import cluster


def query(name: str = "web.default.svc.cluster.local.", qtype: str = "A", **edns: int) -> bytes:
    message = dns.message.make_query(name, qtype, use_edns=0 if edns else None, **edns)
    return message.to_wire()


def slow_then_fast(packet: bytes, *, udp: bool = True) -> tuple[bytes, bytes | None]:
    """(slow path reply, fast path reply to the same packet afterwards)."""
    cache = AnswerCache()
    responder = Responder(Zone(cluster()), cache, forwarder=None)
    slow = responder.respond(packet, udp=udp)
    assert isinstance(slow, bytes)
    return slow, cache.reply(packet, udp=udp)


@pytest.mark.parametrize(
    "packet",
    [
        query(),
        query("WeB.DeFault.svc.CLUSTER.local."),
        query(qtype="SRV"),
        query("nope.default.svc.cluster.local."),  # NXDOMAIN is cached too
        query(payload=4096),
        query(payload=1232, options=[dns.edns.GenericOption(10, b"12345678")]),  # a cookie
    ],
    ids=["plain", "mixed-case", "srv", "nxdomain", "edns", "edns-cookie"],
)
def test_a_cached_reply_is_byte_for_byte_the_slow_paths(packet: bytes) -> None:
    slow, fast = slow_then_fast(packet)

    assert fast == slow


def test_the_reply_carries_the_query_id_rd_bit_and_spelling() -> None:
    cache = AnswerCache()
    responder = Responder(Zone(cluster()), cache, forwarder=None)
    responder.respond(query(), udp=True)
    other = dns.message.make_query("WEB.default.svc.cluster.local.", "A")
    other.flags &= ~dns.flags.RD

    reply = cache.reply(other.to_wire(), udp=True)

    assert reply is not None
    response = dns.message.from_wire(reply)
    assert response.id == other.id
    assert not response.flags & dns.flags.RD
    assert response.flags & dns.flags.AA
    assert response.question[0].name.to_text() == "WEB.default.svc.cluster.local."
    assert response.answer[0].name.to_text() == "WEB.default.svc.cluster.local."


def message_with(**changes: object) -> bytes:
    message = dns.message.make_query("web.default.svc.cluster.local.", "A")
    for name, value in changes.items():
        setattr(message, name, value)
    return message.to_wire()


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00" * 11,
        query()[:-1],  # cut in the question
        query() + b"junk",
        message_with(flags=dns.flags.QR),
        message_with(flags=dns.flags.CD),
        dns.message.make_query("web.default.svc.cluster.local.", "A", want_dnssec=True).to_wire(),
        dns.message.make_query("web.default.svc.cluster.local.", "A", use_edns=1).to_wire(),
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\xc0\x0c\x00\x01\x00\x01",
    ],
    ids=["empty", "header-only", "cut", "trailing", "response", "cd", "do", "edns1", "pointer"],
)
def test_unusual_packets_are_left_to_the_slow_path(packet: bytes) -> None:
    assert parse_question(packet) is None


def test_over_udp_a_reply_larger_than_the_client_takes_is_not_served_fast() -> None:
    cache = AnswerCache()
    packet = query()
    question = parse_question(packet)
    assert question is not None
    cache.store(question, packet[:2] + b"\x84\x00" + packet[4:] + bytes(600))

    assert cache.reply(packet, udp=True) is None
    assert cache.reply(packet, udp=False) is not None


def test_a_full_cache_starts_over_instead_of_growing() -> None:
    cache = AnswerCache(max_entries=2)
    for index in range(3):
        packet = query(f"n{index}.default.svc.cluster.local.")
        question = parse_question(packet)
        assert question is not None
        cache.store(question, packet)

    assert len(cache) == 1


def test_error_replies_echo_id_and_opcode_and_never_answer_responses() -> None:
    packet = bytes.fromhex("abcd2900") + b"garbage"  # opcode UPDATE, RD

    reply = error_reply(packet, dns.rcode.FORMERR)

    assert reply == bytes.fromhex("abcda901") + bytes(8)
    assert error_reply(b"\xab\xcd\x80\x00", dns.rcode.FORMERR) is None
    assert error_reply(b"\xab", dns.rcode.FORMERR) is None
