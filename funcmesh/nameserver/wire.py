"""The fast path: answer a common query from a cache of pre-encoded replies, without dnspython.

Why by hand: building and parsing each message with a DNS library costs 60-85 µs per query in
CPython (machine-probes: about 16k queries/s with dnslib on uvloop) while a responder that only
slices bytes reached about 170k. Cluster names are asked again and again (every lookup of
``web`` walks the search list), so the server keeps each reply it built once, keyed by
(lower-cased qname, qtype, qclass, with/without EDNS), and answers the next identical question by
copying the query's ID and question bytes (so the query's letter case comes back, and the
compression pointers into the question stay valid) around the stored sections.

Only a plain query takes this path: QR=0, opcode QUERY, only RD (and AD) set, one question, no
other records except one OPT (EDNS version 0, DO clear; options such as cookies are ignored as
RFC 7873 allows). Anything else, and any miss, returns None: the slow path
(:mod:`funcmesh.nameserver.responder`) answers it with dnspython and may fill the cache.
This module must stay free of dnspython and of allocation beyond the reply itself.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_BYTES = 12
PLAIN_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x00"  # QD=1 AN=0 NS=0 AR=0
EDNS_COUNTS = b"\x00\x01\x00\x00\x00\x00\x00\x01"  # QD=1 AN=0 NS=0 AR=1
OPT_START = b"\x00\x00\x29"  # root owner name, type OPT (41)
OPT_FIXED_BYTES = 11
EDNS_MARK = b"E"
CLASSIC_UDP_BYTES = 512
RD = 0x01
QR_AA = 0x84
DEFAULT_MAX_ENTRIES = 50_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Question:
    """Where the question ends in a plain query, its cache key and its UDP size limit."""

    key: bytes
    end: int  # offset just past QTYPE/QCLASS
    udp_limit: int


def parse_question(packet: bytes) -> Question | None:
    """The question of a plain query, or None when the packet needs the slow path."""
    parsed = _parse(packet)
    if parsed is None:
        return None
    key, end, udp_limit = parsed
    return Question(key=key, end=end, udp_limit=udp_limit)


def _parse(packet: bytes) -> tuple[bytes, int, int] | None:
    """(key, end of question, UDP limit): a tuple, not a Question, on the hot path."""
    if len(packet) < HEADER_BYTES + 5 or packet[2] > RD or packet[3] & 0xDF:
        return None
    try:
        zero = packet.index(0, HEADER_BYTES)
    except ValueError:
        return None
    # The first zero byte ends the name only if the name is well formed; a malformed name gives
    # a key no well-formed cached name can equal, so it misses and goes to the slow path.
    end = zero + 5
    counts = packet[4:HEADER_BYTES]
    name = packet[HEADER_BYTES:zero].lower() + packet[zero:end]
    if counts == PLAIN_COUNTS:
        if len(packet) != end:
            return None
        return name, end, CLASSIC_UDP_BYTES
    if counts != EDNS_COUNTS or packet[end : end + 3] != OPT_START:
        return None
    if len(packet) < end + OPT_FIXED_BYTES or packet[end + 5] or packet[end + 6]:
        return None  # short, extended RCODE set, or EDNS version > 0 (BADVERS is slow)
    if packet[end + 7] & 0x80:  # DO: the reply must echo it
        return None
    if len(packet) != end + OPT_FIXED_BYTES + int.from_bytes(packet[end + 9 : end + 11]):
        return None
    payload = int.from_bytes(packet[end + 3 : end + 5])
    return name + EDNS_MARK, end, max(CLASSIC_UDP_BYTES, payload)


class AnswerCache:
    """Pre-encoded replies by question key; a reply is the query's ID + header + question +
    the stored sections. Emptied whole when the zone changes (the SOA serial is in every
    negative answer) and when it grows past ``max_entries`` (a flood of distinct names)."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries: dict[bytes, tuple[bytes, bytes, bytes]] = {}
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def reply(self, packet: bytes, *, udp: bool) -> bytes | None:
        """The reply to ``packet`` if it is a plain query whose answer is stored (and, over
        UDP, fits in 512 bytes or the query's EDNS size); else None."""
        parsed = _parse(packet)
        if parsed is None:
            return None
        key, end, udp_limit = parsed
        entry = self._entries.get(key)
        if entry is None:
            return None
        reply = packet[:2] + entry[packet[2]] + packet[HEADER_BYTES:end] + entry[2]
        if udp and len(reply) > udp_limit:
            return None
        return reply

    def store(self, question: Question, response: bytes) -> None:
        """Keep ``response`` (the encoded reply to the query ``question`` came from, which
        must echo that question) for the next identical question."""
        if len(self._entries) >= self._max_entries:
            self._entries.clear()
        header = response[2:HEADER_BYTES]
        flags = header[0] & ~RD
        without_rd = bytes((flags,)) + header[1:]
        with_rd = bytes((flags | RD,)) + header[1:]
        self._entries[question.key] = (without_rd, with_rd, response[question.end :])


def error_reply(packet: bytes, rcode: int) -> bytes | None:
    """A bare reply (no sections) with ``rcode`` to a packet dnspython cannot read; None for a
    packet too short to carry a query ID and flags, or one that is itself a response (answering
    those could start a loop between two servers)."""
    if len(packet) < 4 or packet[2] & 0x80:
        return None
    flags = 0x80 | (packet[2] & 0x79)  # QR, opcode and RD of the query
    return packet[:2] + bytes((flags, rcode & 0x0F)) + bytes(8)
