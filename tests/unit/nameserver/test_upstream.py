"""Choosing upstreams and how long their answers are kept."""

from __future__ import annotations

import dns.rcode
import dns.rrset
import pytest

from funcmesh.nameserver.upstream import (
    Forwarded,
    cache_ttl_s,
    resolv_conf_nameservers,
    system_upstreams,
)

RESOLV_CONF = """\
# written by a tool
search corp.example
nameserver 10.0.0.2
nameserver fe80::1%eth0
nameserver 127.0.0.1
nameserver not-an-ip
options ndots:2
"""


def test_resolv_conf_nameservers_in_order() -> None:
    assert resolv_conf_nameservers(RESOLV_CONF) == ["10.0.0.2", "127.0.0.1"]


def test_a_nameserver_that_is_this_server_is_skipped() -> None:
    own = {("127.0.0.1", 53), ("127.96.0.10", 53)}

    assert system_upstreams(RESOLV_CONF, own=own) == [("10.0.0.2", 53)]
    assert system_upstreams(RESOLV_CONF, own={("127.0.0.1", 5353)}) == [
        ("10.0.0.2", 53),
        ("127.0.0.1", 53),
    ]


def rrset(text: str) -> dns.rrset.RRset:
    name, ttl, _, rdtype, *data = text.split()
    return dns.rrset.from_text(name, int(ttl), "IN", rdtype, " ".join(data))


SOA = "example. 600 IN SOA ns.example. host.example. 1 7200 1800 86400 60"


@pytest.mark.parametrize(
    ("forwarded", "ttl_s"),
    [
        (Forwarded(rcode=dns.rcode.NOERROR, answer=(rrset("a.example. 300 IN A 192.0.2.1"),)), 300),
        (
            Forwarded(
                rcode=dns.rcode.NOERROR,
                answer=(
                    rrset("a.example. 300 IN CNAME b.example."),
                    rrset("b.example. 20 IN A 192.0.2.1"),
                ),
            ),
            20,
        ),
        (
            Forwarded(rcode=dns.rcode.NOERROR, answer=(rrset("a.example. 86400 IN A 192.0.2.1"),)),
            3600,
        ),
        (Forwarded(rcode=dns.rcode.NXDOMAIN, authority=(rrset(SOA),)), 60),
        (Forwarded(rcode=dns.rcode.NOERROR, authority=(rrset(SOA),)), 60),
        (Forwarded(rcode=dns.rcode.NXDOMAIN), 0),
        (Forwarded(rcode=dns.rcode.SERVFAIL), 0),
    ],
    ids=["answer", "smallest", "capped", "nxdomain-soa-minimum", "nodata", "no-soa", "servfail"],
)
def test_cache_ttl(forwarded: Forwarded, ttl_s: int) -> None:
    assert cache_ttl_s(forwarded) == ttl_s


def test_aged_answers_count_their_ttl_down_but_not_below_zero() -> None:
    forwarded = Forwarded(
        rcode=dns.rcode.NOERROR,
        answer=(rrset("a.example. 30 IN A 192.0.2.1"), rrset("a.example. 2 IN TXT x")),
    )

    aged = forwarded.aged(5.7)

    assert [r.ttl for r in aged.answer] == [25, 0]
    assert [r.ttl for r in forwarded.answer] == [30, 2]
    assert forwarded.aged(0.4) is forwarded
