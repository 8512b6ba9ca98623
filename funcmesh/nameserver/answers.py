"""What the zone hands the server, and the builders of the records in it.

An :class:`Answer` is the sections of one reply (and, for an ExternalName Service, the name the
server still has to chase upstream); the functions build dnspython rdatas and RRsets with types.

Must not: decide what a name means (``funcmesh.nameserver.zone``) or touch the wire.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rrset

IN = dns.rdataclass.IN


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What to put in a reply. ``chase`` is a CNAME target outside the zone whose addresses the
    server adds from upstream (an ExternalName Service asked for A/AAAA)."""

    rcode: int = dns.rcode.NOERROR
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()
    chase: dns.name.Name | None = None

    @property
    def cacheable(self) -> bool:
        """Whether the reply depends on the zone alone (so may be kept pre-encoded)."""
        return self.chase is None


def address_family(host: str) -> int:
    """4 or 6 for an IP address, 0 for a name."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0


def rrset_of(name: dns.name.Name, ttl: int, rdatas: Sequence[dns.rdata.Rdata]) -> dns.rrset.RRset:
    return dns.rrset.from_rdata_list(name, ttl, rdatas)


def make_rdata(rdata_class: Any, rdtype: int, *fields: Any) -> dns.rdata.Rdata:
    """An rdata of class IN (dnspython's rdata constructors carry no type hints)."""
    rdata: dns.rdata.Rdata = rdata_class(IN, rdtype, *fields)
    return rdata
