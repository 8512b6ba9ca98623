"""The ``cluster.local`` zone: answers computed from the ServiceTable, as CoreDNS gives them.

Implements the Kubernetes DNS-based service discovery specification, schema 1.1.0, with the
choices CoreDNS's ``kubernetes`` plugin makes where the specification is silent:

- ``<svc>.<ns>.svc.<zone>``: A/AAAA of the ClusterIP; for a headless Service one record per
  ready endpoint (NXDOMAIN when there is none); CNAME for an ExternalName Service.
- ``<hostname-or-dashed-ip>.<svc>.<ns>.svc.<zone>``: A/AAAA of that ready endpoint.
- SRV at ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` (named ports) and at the Service name itself
  (every port), priority 0, weight ``100 // count``, the targets' addresses as additional records.
- ``<dashed-ip>.<ns>.pod.<zone>``: the IP written in the name (CoreDNS ``pods insecure``).
- PTR for ClusterIPs and endpoint addresses; SOA and NS at the apex; ``ns.dns.<zone>``;
  ``dns-version.<zone>`` TXT ``"1.1.0"``.
- A name that exists without the asked type is NODATA (NOERROR, no answer, the SOA in the
  authority section); a name that does not exist is NXDOMAIN with the SOA. TTL 5 s by default.

Pure: no sockets, no clock; the server owns the caches and calls :meth:`Zone.changed` when the
table changes. Owner names are the lower-cased query name; the server puts the query's own
spelling back on the wire.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.reversename
import dns.rrset

from funcmesh.discovery.services import (
    EXTERNAL_NAME,
    EndpointAddressView,
    ServiceTable,
    ServiceView,
)
from funcmesh.nameserver.answers import Answer, address_family, make_rdata, rrset_of

DEFAULT_DOMAIN = "cluster.local"
DEFAULT_TTL_S = 5
SCHEMA_VERSION = "1.1.0"
SCHEMA_VERSION_TTL_S = 28800  # what CoreDNS hard-codes for dns-version
SOA_REFRESH_S, SOA_RETRY_S, SOA_EXPIRE_S = 7200, 1800, 86400
ALWAYS_THERE = frozenset({"default", "kube-system"})  # namespaces that exist with no Service
KUBE_DNS = ("kube-system", "kube-dns")
NO_PORT = -1
MAX_CNAME_HOPS = 8  # ExternalName Services pointing at each other
A, AAAA, SRV, PTR = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SRV, dns.rdatatype.PTR
CNAME, TXT, SOA, NS = dns.rdatatype.CNAME, dns.rdatatype.TXT, dns.rdatatype.SOA, dns.rdatatype.NS
REVERSE_ZONES = (dns.name.from_text("in-addr.arpa."), dns.name.from_text("ip6.arpa."))


@dataclass(frozen=True, slots=True)
class _Record:
    """One thing a name stands for: an address (or an ExternalName) with a port."""

    host: str
    port: int
    target: dns.name.Name  # the name of the host (SRV target)


@dataclass(slots=True)
class _Query:
    """A name below ``<ns>.svc`` split the CoreDNS way."""

    namespace: str
    service: str
    endpoint: str = ""
    port: str = ""
    protocol: str = ""


@dataclass(slots=True)
class _Reverse:
    by_ip: dict[str, list[dns.name.Name]] = field(default_factory=dict)


class Zone:
    """Authoritative answers for one cluster domain, read from a ServiceTable."""

    def __init__(
        self,
        table: ServiceTable,
        *,
        domain: str = DEFAULT_DOMAIN,
        ttl_s: int = DEFAULT_TTL_S,
        serial: int = 1,
        nameserver_ips: Sequence[str] = (),
    ) -> None:
        self.origin = dns.name.from_text(domain).canonicalize()
        self.ttl_s = ttl_s
        self.serial = serial
        self._table = table
        self._nameserver_ips = tuple(nameserver_ips)
        self._reverse: _Reverse | None = None
        self._ns_name = dns.name.from_text("ns.dns", self.origin)
        self._version_name = dns.name.from_text("dns-version", self.origin)

    def changed(self) -> None:
        """The table changed: a new SOA serial, and the reverse index is rebuilt on demand."""
        self.serial = (self.serial + 1) & 0xFFFFFFFF
        self._reverse = None

    def set_nameserver_ips(self, ips: Sequence[str]) -> None:
        """The addresses ``ns.dns.<zone>`` has when there is no kube-dns Service."""
        self._nameserver_ips = tuple(ips)

    def answer(self, qname: dns.name.Name, qtype: int) -> Answer | None:
        """The answer for ``qname``/``qtype`` (class IN), or None when the name is not ours:
        outside the zone, or a reverse name of an address no Service or endpoint has."""
        name = qname.canonicalize()
        if name.is_subdomain(self.origin):
            return self._in_zone(name, qtype)
        if qtype == PTR and any(name.is_subdomain(zone) for zone in REVERSE_ZONES):
            return self._pointer(name)
        return None

    # -- the forward zone ---------------------------------------------------------------------

    def _in_zone(self, name: dns.name.Name, qtype: int, depth: int = 0) -> Answer:
        if name == self.origin:
            return self._apex(qtype)
        if name == self._version_name and qtype == TXT:
            text = make_rdata(dns.rdtypes.ANY.TXT.TXT, TXT, [SCHEMA_VERSION])
            return Answer(answer=(rrset_of(name, SCHEMA_VERSION_TTL_S, [text]),))
        if name == self._ns_name:
            return self._format(name, qtype, self._nameserver_records(), depth)
        labels = [label.decode("latin-1") for label in name.relativize(self.origin).labels]
        return self._format(name, qtype, self._records(labels), depth)

    def _apex(self, qtype: int) -> Answer:
        if qtype == SOA:
            return Answer(answer=(self._soa(),))
        if qtype == NS:
            ns = make_rdata(dns.rdtypes.ANY.NS.NS, NS, self._ns_name)
            glue = self._address_rrsets(self._ns_name, self._nameserver_records())
            return Answer(answer=(rrset_of(self.origin, self.ttl_s, [ns]),), additional=glue)
        return self._nodata()

    def _records(self, labels: list[str]) -> list[_Record] | None:
        """What the name stands for; [] when it exists with nothing (NODATA), None when it does
        not exist (NXDOMAIN). Mirrors CoreDNS parseRequest/findServices."""
        kind, rest = labels[-1], labels[:-1]
        if kind not in ("svc", "pod"):
            return None
        if not rest:
            return []
        namespace, rest = rest[-1], rest[:-1]
        if not self._namespace_exists(namespace):
            return None
        if not rest:
            return []
        if kind == "pod":
            return self._pod(rest, namespace)
        query = _Query(namespace=namespace, service=rest[-1])
        rest = rest[:-1]
        if len(rest) == 1:
            query.endpoint = rest[0]
        elif len(rest) == 2:
            query.port, query.protocol = rest[0].removeprefix("_"), rest[1].removeprefix("_")
        elif rest:
            return None
        return self._service_records(query)

    def _namespace_exists(self, namespace: str) -> bool:
        return namespace in ALWAYS_THERE or namespace in self._table.namespaces()

    def _pod(self, rest: list[str], namespace: str) -> list[_Record] | None:
        if len(rest) != 1:
            return None
        dashed = rest[0]
        text = dashed.replace("-", ".")
        if dashed.count("-") != 3 or "--" in dashed:
            text = dashed.replace("-", ":")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            return None
        target = dns.name.from_text(f"{dashed}.{namespace}.pod", self.origin)
        return [_Record(host=str(ip), port=NO_PORT, target=target)]

    def _service_records(self, query: _Query) -> list[_Record] | None:
        service = self._table.service(query.namespace, query.service)
        if service is None:
            return None
        fqdn = self._service_name(service)
        if service.type == EXTERNAL_NAME:
            if query.endpoint or not service.external_name:
                return None
            return [_Record(host=service.external_name, port=0, target=fqdn)]
        if service.headless or query.endpoint:
            return self._endpoint_records(service, query, fqdn) or None
        ip = service.cluster_ip or ""
        if not service.ports and not (query.port or query.protocol):
            return [_Record(host=ip, port=NO_PORT, target=fqdn)]
        records = [
            _Record(host=ip, port=port.port, target=fqdn)
            for port in service.ports
            if _matches(query.port, port.name) and _matches(query.protocol, port.protocol)
        ]
        return records or None

    def _endpoint_records(
        self, service: ServiceView, query: _Query, fqdn: dns.name.Name
    ) -> list[_Record]:
        endpoints = self._table.endpoints(service.namespace, service.name)
        if endpoints is None:
            return []
        records = []
        for subset in endpoints.subsets:
            ports = [(port.name, port.protocol, port.port) for port in subset.ports]
            for address in subset.ready:
                host = endpoint_hostname(address)
                if query.endpoint and query.endpoint != host.lower():
                    continue
                target = dns.name.Name((host.encode(), *fqdn.labels))
                for name, protocol, number in ports or [("", "", NO_PORT)]:
                    if _matches(query.port, name) and _matches(query.protocol, protocol):
                        records.append(_Record(host=address.ip, port=number, target=target))
        return records

    def _nameserver_records(self) -> list[_Record]:
        kube_dns = self._table.service(*KUBE_DNS)
        ips = [kube_dns.cluster_ip] if kube_dns and kube_dns.cluster_ip else self._nameserver_ips
        return [_Record(host=ip, port=NO_PORT, target=self._ns_name) for ip in ips]

    def _service_name(self, service: ServiceView) -> dns.name.Name:
        return dns.name.from_text(f"{service.name}.{service.namespace}.svc", self.origin)

    # -- turning records into RRsets ------------------------------------------------------------

    def _format(
        self, name: dns.name.Name, qtype: int, records: list[_Record] | None, depth: int
    ) -> Answer:
        if records is None:
            return self._nxdomain()
        aliases = [record for record in records if address_family(record.host) == 0]
        if qtype in (A, AAAA) and aliases:
            return self._alias(name, qtype, aliases[0].host, depth)
        if qtype == CNAME and aliases:
            target = dns.name.from_text(aliases[0].host)
            cname = make_rdata(dns.rdtypes.ANY.CNAME.CNAME, CNAME, target)
            return Answer(answer=(rrset_of(name, self.ttl_s, [cname]),))
        found: tuple[dns.rrset.RRset, ...] = ()
        additional: tuple[dns.rrset.RRset, ...] = ()
        if qtype in (A, AAAA):
            found = self._address_rrsets(name, records, only=qtype)
        elif qtype == SRV:
            found, additional = self._srv(name, records)
        if not found:
            return self._nodata()
        return Answer(answer=found, additional=additional)

    def _alias(self, name: dns.name.Name, qtype: int, host: str, depth: int) -> Answer:
        """CNAME to ``host``, followed inside the zone, left to the server outside it."""
        target = dns.name.from_text(host).canonicalize()
        cname = rrset_of(name, self.ttl_s, [make_rdata(dns.rdtypes.ANY.CNAME.CNAME, CNAME, target)])
        if not target.is_subdomain(self.origin):
            return Answer(answer=(cname,), chase=target)
        if depth >= MAX_CNAME_HOPS:
            return Answer(rcode=dns.rcode.SERVFAIL)
        inner = self._in_zone(target, qtype, depth + 1)
        return Answer(
            rcode=inner.rcode,
            answer=(cname, *inner.answer),
            authority=inner.authority,
            additional=inner.additional,
            chase=inner.chase,
        )

    def _address_rrsets(
        self, name: dns.name.Name, records: Iterable[_Record], *, only: int | None = None
    ) -> tuple[dns.rrset.RRset, ...]:
        by_type: dict[int, list[dns.rdata.Rdata]] = {A: [], AAAA: []}
        for host in dict.fromkeys(record.host for record in records):
            family = address_family(host)
            if family == 4:
                by_type[A].append(make_rdata(dns.rdtypes.IN.A.A, A, host))
            elif family == 6:
                by_type[AAAA].append(make_rdata(dns.rdtypes.IN.AAAA.AAAA, AAAA, host))
        return tuple(
            rrset_of(name, self.ttl_s, rdatas)
            for rdtype, rdatas in by_type.items()
            if rdatas and only in (None, rdtype)
        )

    def _srv(
        self, name: dns.name.Name, records: list[_Record]
    ) -> tuple[tuple[dns.rrset.RRset, ...], tuple[dns.rrset.RRset, ...]]:
        usable = [r for r in records if r.port >= 0 and address_family(r.host)]
        pairs = list(dict.fromkeys((record.target, record.port) for record in usable))
        if not pairs:
            return (), ()
        weight = 100 // len(pairs)
        srv = [
            make_rdata(dns.rdtypes.IN.SRV.SRV, SRV, 0, weight, port, target)
            for target, port in pairs
        ]
        additional: list[dns.rrset.RRset] = []
        for target in dict.fromkeys(target for target, _ in pairs):
            additional.extend(
                self._address_rrsets(target, [r for r in usable if r.target == target])
            )
        return (rrset_of(name, self.ttl_s, srv),), tuple(additional)

    # -- reverse names ------------------------------------------------------------------------

    def _pointer(self, name: dns.name.Name) -> Answer | None:
        try:
            ip = str(ipaddress.ip_address(dns.reversename.to_address(name)))
        except (dns.exception.SyntaxError, ValueError):
            return None
        targets = self._reverse_index().by_ip.get(ip)
        if not targets:
            return None
        rdatas = [make_rdata(dns.rdtypes.ANY.PTR.PTR, PTR, target) for target in targets]
        return Answer(answer=(rrset_of(name, self.ttl_s, rdatas),))

    def _reverse_index(self) -> _Reverse:
        if self._reverse is None:
            reverse = _Reverse()
            for service in self._table.services():
                if service.type == EXTERNAL_NAME:
                    continue
                fqdn = self._service_name(service)
                if service.cluster_ip:
                    reverse.by_ip.setdefault(service.cluster_ip, []).append(fqdn)
                endpoints = self._table.endpoints(service.namespace, service.name)
                for address in endpoints.ready_addresses() if endpoints else ():
                    target = dns.name.Name((endpoint_hostname(address).encode(), *fqdn.labels))
                    names = reverse.by_ip.setdefault(address.ip, [])
                    if target not in names:
                        names.append(target)
            self._reverse = reverse
        return self._reverse

    # -- negative answers -----------------------------------------------------------------------

    def _soa(self) -> dns.rrset.RRset:
        soa = make_rdata(
            dns.rdtypes.ANY.SOA.SOA,
            SOA,
            self._ns_name,
            dns.name.from_text("hostmaster", self.origin),
            self.serial,
            SOA_REFRESH_S,
            SOA_RETRY_S,
            SOA_EXPIRE_S,
            self.ttl_s,
        )
        return rrset_of(self.origin, self.ttl_s, [soa])

    def _nodata(self) -> Answer:
        return Answer(authority=(self._soa(),))

    def _nxdomain(self) -> Answer:
        return Answer(rcode=dns.rcode.NXDOMAIN, authority=(self._soa(),))


def endpoint_hostname(address: EndpointAddressView) -> str:
    """The endpoint's DNS label: its hostname, else its IP with dashes (as CoreDNS does)."""
    if address.hostname:
        return address.hostname
    return address.ip.replace(".", "-").replace(":", "-")


def _matches(asked: str, have: str) -> bool:
    return not asked or asked == have.lower()
