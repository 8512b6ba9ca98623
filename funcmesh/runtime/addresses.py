"""Pod IP addresses from a loopback range (default 127.128.0.0/16).

Every address in 127.0.0.0/8 is local on Linux, so each instance can bind its own address with
no setup. Addresses are handed out in a rotating order, so a new instance gets a new address
rather than the one its predecessor just gave back (as pods do in Kubernetes).
"""

from __future__ import annotations

import ipaddress
import secrets

from funcmesh.errors import Invalid, Unavailable


class AddressPool:
    """Hands out unused host addresses of one loopback network."""

    def __init__(self, cidr: str) -> None:
        network = ipaddress.ip_network(cidr)
        if not isinstance(network, ipaddress.IPv4Network) or not network.subnet_of(
            ipaddress.IPv4Network("127.0.0.0/8")
        ):
            raise Invalid(f"pod network {cidr} must be inside 127.0.0.0/8")
        self._first = int(network.network_address) + 1
        self._size = network.num_addresses - 2
        # A random start keeps two daemons on one machine from reaching for the same addresses.
        self._next = secrets.randbelow(self._size)
        self._in_use: set[int] = set()

    def take(self) -> str:
        """An address no live instance has, preferring ones not used recently."""
        for _ in range(self._size):
            candidate = self._first + self._next
            self._next = (self._next + 1) % self._size
            if candidate & 0xFF in (0, 255) or candidate in self._in_use:
                continue
            self._in_use.add(candidate)
            return str(ipaddress.IPv4Address(candidate))
        raise Unavailable("no free pod address left in the pod network")

    def give_back(self, address: str) -> None:
        self._in_use.discard(int(ipaddress.IPv4Address(address)))

    @property
    def in_use(self) -> int:
        return len(self._in_use)
