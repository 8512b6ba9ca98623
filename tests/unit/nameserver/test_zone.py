"""The zone's answers for the table of cases, and what happens when the table changes."""

from __future__ import annotations

import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from funcmesh.nameserver.answers import Answer
from funcmesh.nameserver.zone import Zone
from tests.unit.nameserver.cluster import CASES, Case, cluster, endpoints, normalized, service


def lines(rrsets: tuple[dns.rrset.RRset, ...]) -> list[str]:
    return normalized(line for rrset in rrsets for line in rrset.to_text().splitlines())


def ask(zone: Zone, qname: str, qtype: str) -> Answer:
    answer = zone.answer(dns.name.from_text(qname), dns.rdatatype.from_text(qtype))
    assert answer is not None, f"{qname} {qtype} is not answered by the zone"
    return answer


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_answers_like_coredns(case: Case) -> None:
    answer = ask(Zone(cluster()), case.qname, case.qtype)

    assert dns.rcode.to_text(answer.rcode) == case.rcode
    assert lines(answer.answer) == normalized(case.answer)
    assert lines(answer.additional) == normalized(case.additional)
    soa = [rrset for rrset in answer.authority if rrset.rdtype == dns.rdatatype.SOA]
    assert bool(soa) == case.soa


def test_the_soa_names_the_zone_with_ttl_5_and_a_serial_that_moves_on_change() -> None:
    zone = Zone(cluster(), serial=7)
    first = ask(zone, "nope.default.svc.cluster.local.", "A").authority[0]

    zone.changed()
    second = ask(zone, "nope.default.svc.cluster.local.", "A").authority[0]

    assert first.to_text() == (
        "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. "
        "7 7200 1800 86400 5"
    )
    assert second[0].serial == 8


def test_names_outside_the_zone_and_unknown_reverse_names_are_not_answered() -> None:
    zone = Zone(cluster())

    assert zone.answer(dns.name.from_text("example.com."), dns.rdatatype.A) is None
    assert zone.answer(dns.name.from_text("9.9.9.9.in-addr.arpa."), dns.rdatatype.PTR) is None
    assert zone.answer(dns.name.from_text("bad.in-addr.arpa."), dns.rdatatype.PTR) is None


def test_an_external_name_outside_the_zone_is_left_to_the_server_to_chase() -> None:
    answer = ask(Zone(cluster()), "ext.default.svc.cluster.local.", "A")

    assert lines(answer.answer) == ["ext.default.svc.cluster.local. 5 in cname example.test."]
    assert answer.chase == dns.name.from_text("example.test.")
    assert not answer.cacheable


def test_external_names_pointing_at_each_other_end_in_servfail() -> None:
    table = cluster()
    table.put_service(
        service("ping", None, type="ExternalName", external_name="pong.default.svc.cluster.local")
    )
    table.put_service(
        service("pong", None, type="ExternalName", external_name="ping.default.svc.cluster.local")
    )

    answer = ask(Zone(table), "ping.default.svc.cluster.local.", "A")

    assert answer.rcode == dns.rcode.SERVFAIL


def test_reverse_names_follow_the_table_after_a_change() -> None:
    table = cluster()
    zone = Zone(table)
    assert ask(zone, "22.0.128.127.in-addr.arpa.", "PTR").answer

    table.put_endpoints(endpoints("db", [("127.128.0.23", "db-2")], ("pg", 5432)))
    zone.changed()

    assert zone.answer(dns.name.from_text("22.0.128.127.in-addr.arpa."), dns.rdatatype.PTR) is None
    assert lines(ask(zone, "23.0.128.127.in-addr.arpa.", "PTR").answer) == [
        "23.0.128.127.in-addr.arpa. 5 in ptr db-2.db.default.svc.cluster.local."
    ]


def test_the_name_server_is_this_server_when_there_is_no_kube_dns_service() -> None:
    table = cluster()
    table.remove_service("kube-system", "kube-dns")
    zone = Zone(table, nameserver_ips=["127.0.0.1"])

    assert lines(ask(zone, "ns.dns.cluster.local.", "A").answer) == [
        "ns.dns.cluster.local. 5 in a 127.0.0.1"
    ]


def test_another_domain_and_ttl() -> None:
    zone = Zone(cluster(), domain="corp.example", ttl_s=30)

    answer = ask(zone, "web.default.svc.corp.example.", "A")

    assert lines(answer.answer) == ["web.default.svc.corp.example. 30 in a 127.96.0.20"]
    assert zone.answer(dns.name.from_text("web.default.svc.cluster.local."), 1) is None
