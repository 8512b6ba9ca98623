"""A small cluster in a ServiceTable and the DNS answers it must give, as a table of cases.

The same cases run against the zone directly (unit), and over real UDP and TCP with dnspython
and ``dig`` (integration). Expected records are written as dig prints them (``NAME TTL IN TYPE
DATA``, names lower-case); ``soa`` means NODATA/NXDOMAIN carry the zone's SOA.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)

Z = "svc.cluster.local."


def service(
    name: str,
    ip: str | None,
    *ports: tuple[str, int, str],
    namespace: str = "default",
    type: str = "ClusterIP",
    external_name: str | None = None,
) -> ServiceView:
    return ServiceView(
        namespace=namespace,
        name=name,
        type=type,
        cluster_ip=ip,
        ports=tuple(
            ServicePortView(name=port_name, protocol=protocol, port=number, target_port=number)
            for port_name, number, protocol in ports
        ),
        selector=(("app", name),),
        external_name=external_name,
    )


def endpoints(
    name: str,
    ready: list[tuple[str, str | None]],
    *ports: tuple[str, int],
    not_ready: tuple[str, ...] = (),
    namespace: str = "default",
) -> EndpointsView:
    return EndpointsView(
        namespace=namespace,
        name=name,
        subsets=(
            EndpointSubsetView(
                ready=tuple(EndpointAddressView(ip=ip, hostname=host) for ip, host in ready),
                not_ready=tuple(EndpointAddressView(ip=ip) for ip in not_ready),
                ports=tuple(EndpointPortView(name=n, port=p) for n, p in ports),
            ),
        ),
    )


def cluster() -> ServiceTable:
    """web (ClusterIP, 2 named ports, 2 ready + 1 unready pod), db (headless, named pods),
    lonely (no endpoints), empty (headless, none), bare (headless, portless), ext and alias
    (ExternalName out of and into the zone), v6, prod/api, kube-system/kube-dns."""
    table = ServiceTable()
    table.put_service(service("web", "127.96.0.20", ("http", 80, "TCP"), ("grpc", 9090, "TCP")))
    table.put_endpoints(
        endpoints(
            "web",
            [("127.128.0.11", None), ("127.128.0.12", None)],
            ("http", 8080),
            ("grpc", 9090),
            not_ready=("127.128.0.13",),
        )
    )
    table.put_service(service("db", None, ("pg", 5432, "TCP")))
    table.put_endpoints(
        endpoints("db", [("127.128.0.21", "db-0"), ("127.128.0.22", "db-1")], ("pg", 5432))
    )
    table.put_service(service("lonely", "127.96.0.30", ("http", 80, "TCP")))
    table.put_service(service("empty", None, ("http", 80, "TCP")))
    table.put_service(service("bare", None))
    table.put_endpoints(endpoints("bare", [("127.128.0.31", None)]))
    table.put_service(service("ext", None, type="ExternalName", external_name="example.test"))
    table.put_service(
        service("alias", None, type="ExternalName", external_name="web.default.svc.cluster.local")
    )
    table.put_service(service("v6", "fd00::20", ("http", 80, "TCP")))
    table.put_service(service("api", "127.96.0.40", ("http", 8080, "TCP"), namespace="prod"))
    table.put_service(
        service(
            "kube-dns",
            "127.96.0.10",
            ("dns", 53, "UDP"),
            ("dns-tcp", 53, "TCP"),
            namespace="kube-system",
        )
    )
    return table


@dataclass(frozen=True, slots=True)
class Case:
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    soa: bool = False

    @property
    def id(self) -> str:
        return f"{self.qname} {self.qtype}"


def normalized(records: Iterable[str]) -> list[str]:
    """Records compared as DNS compares them: case-insensitive, whitespace folded, any order."""
    return sorted(" ".join(record.split()).lower() for record in records)


def a(name: str, ip: str, ttl: int = 5) -> str:
    return f"{name} {ttl} IN A {ip}"


def nodata(qname: str, qtype: str) -> Case:
    return Case(qname, qtype, soa=True)


def nxdomain(qname: str, qtype: str = "A") -> Case:
    return Case(qname, qtype, rcode="NXDOMAIN", soa=True)


WEB = f"web.default.{Z}"
DB = f"db.default.{Z}"
CASES = [
    # ClusterIP Services (spec 2.3)
    Case(WEB, "A", answer=(a(WEB, "127.96.0.20"),)),
    nodata(WEB, "AAAA"),
    nodata(WEB, "TXT"),
    nodata(WEB, "MX"),
    Case(
        WEB,
        "SRV",
        answer=(f"{WEB} 5 IN SRV 0 50 80 {WEB}", f"{WEB} 5 IN SRV 0 50 9090 {WEB}"),
        additional=(a(WEB, "127.96.0.20"),),
    ),
    Case(
        f"_http._tcp.{WEB}",
        "SRV",
        answer=(f"_http._tcp.{WEB} 5 IN SRV 0 100 80 {WEB}",),
        additional=(a(WEB, "127.96.0.20"),),
    ),
    Case(
        f"_grpc._tcp.{WEB}",
        "SRV",
        answer=(f"_grpc._tcp.{WEB} 5 IN SRV 0 100 9090 {WEB}",),
        additional=(a(WEB, "127.96.0.20"),),
    ),
    nxdomain(f"_http._udp.{WEB}", "SRV"),
    nxdomain(f"_nope._tcp.{WEB}", "SRV"),
    Case(f"127-128-0-11.{WEB}", "A", answer=(a(f"127-128-0-11.{WEB}", "127.128.0.11"),)),
    nxdomain(f"127-128-0-13.{WEB}"),  # not ready
    nxdomain(f"a.b.c.{WEB}"),  # too many labels
    Case(f"lonely.default.{Z}", "A", answer=(a(f"lonely.default.{Z}", "127.96.0.30"),)),
    Case(f"api.prod.{Z}", "A", answer=(a(f"api.prod.{Z}", "127.96.0.40"),)),
    Case(f"v6.default.{Z}", "AAAA", answer=(f"v6.default.{Z} 5 IN AAAA fd00::20",)),
    nodata(f"v6.default.{Z}", "A"),
    Case(f"kube-dns.kube-system.{Z}", "A", answer=(a(f"kube-dns.kube-system.{Z}", "127.96.0.10"),)),
    # headless Services (spec 2.4)
    Case(DB, "A", answer=(a(DB, "127.128.0.21"), a(DB, "127.128.0.22"))),
    nodata(DB, "AAAA"),
    Case(f"db-0.{DB}", "A", answer=(a(f"db-0.{DB}", "127.128.0.21"),)),
    Case(f"DB-1.{DB}", "A", answer=(a(f"db-1.{DB}", "127.128.0.22"),)),
    nxdomain(f"db-9.{DB}"),
    Case(
        f"_pg._tcp.{DB}",
        "SRV",
        answer=(
            f"_pg._tcp.{DB} 5 IN SRV 0 50 5432 db-0.{DB}",
            f"_pg._tcp.{DB} 5 IN SRV 0 50 5432 db-1.{DB}",
        ),
        additional=(a(f"db-0.{DB}", "127.128.0.21"), a(f"db-1.{DB}", "127.128.0.22")),
    ),
    nxdomain(f"empty.default.{Z}"),  # headless without ready endpoints
    Case(f"bare.default.{Z}", "A", answer=(a(f"bare.default.{Z}", "127.128.0.31"),)),
    # ExternalName (spec 2.5)
    Case(f"ext.default.{Z}", "CNAME", answer=(f"ext.default.{Z} 5 IN CNAME example.test.",)),
    Case(
        f"alias.default.{Z}",
        "A",
        answer=(f"alias.default.{Z} 5 IN CNAME {WEB}", a(WEB, "127.96.0.20")),
    ),
    nxdomain(f"x.ext.default.{Z}", "CNAME"),
    # names that exist with nothing, names that do not exist
    nxdomain(f"nope.default.{Z}"),
    nxdomain(f"nope.default.{Z}", "AAAA"),
    nxdomain(f"web.nons.{Z}"),
    nodata(f"default.{Z}", "A"),
    nodata(f"prod.{Z}", "NS"),
    nxdomain(f"nons.{Z}"),
    nodata("svc.cluster.local.", "A"),
    nodata("pod.cluster.local.", "A"),
    nxdomain("foo.cluster.local.", "NS"),
    nxdomain(f"foo.{Z}", "NS"),
    # the apex, the schema version, the name server
    Case(
        "cluster.local.",
        "NS",
        answer=("cluster.local. 5 IN NS ns.dns.cluster.local.",),
        additional=(a("ns.dns.cluster.local.", "127.96.0.10"),),
    ),
    nodata("cluster.local.", "A"),
    Case(
        "dns-version.cluster.local.",
        "TXT",
        answer=('dns-version.cluster.local. 28800 IN TXT "1.1.0"',),
    ),
    nxdomain("dns-version.cluster.local.", "A"),
    Case("ns.dns.cluster.local.", "A", answer=(a("ns.dns.cluster.local.", "127.96.0.10"),)),
    # pods (CoreDNS "pods insecure")
    Case(
        "10-1-2-3.default.pod.cluster.local.",
        "A",
        answer=(a("10-1-2-3.default.pod.cluster.local.", "10.1.2.3"),),
    ),
    nxdomain("not-an-ip.default.pod.cluster.local."),
    nxdomain("10-1-2-3.nons.pod.cluster.local."),
    nodata("default.pod.cluster.local.", "A"),
    # reverse names (spec 2.3.3, 2.4.3)
    Case("20.0.96.127.in-addr.arpa.", "PTR", answer=(f"20.0.96.127.in-addr.arpa. 5 IN PTR {WEB}",)),
    Case(
        "21.0.128.127.in-addr.arpa.",
        "PTR",
        answer=(f"21.0.128.127.in-addr.arpa. 5 IN PTR db-0.{DB}",),
    ),
    Case(
        "11.0.128.127.in-addr.arpa.",
        "PTR",
        answer=(f"11.0.128.127.in-addr.arpa. 5 IN PTR 127-128-0-11.{WEB}",),
    ),
]
