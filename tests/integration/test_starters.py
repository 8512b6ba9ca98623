"""Pod addresses for new instances, with real sockets on 127.143.0.0/29."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

from funcmesh.errors import Unavailable
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.starters import bind_pod_address

PORT = 8080


@contextlib.contextmanager
def occupied(*ips: str) -> Iterator[None]:
    """The port bound on ``ips`` by someone else (another daemon, a lingering process)."""
    holders = []
    try:
        for ip in ips:
            holder = socket.socket()
            holders.append(holder)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server would
            holder.bind((ip, PORT))
            holder.listen()
        yield
    finally:
        for holder in holders:
            holder.close()


def test_a_bound_address_accepts_connections_before_any_worker_runs() -> None:
    addresses = AddressPool("127.143.0.0/29")
    ip, listener = bind_pod_address(addresses, PORT)
    with listener, socket.create_connection((ip, PORT), timeout=1):
        accepted, _ = listener.accept()  # the kernel held it: a worker would take it later
        accepted.close()
    assert addresses.in_use == 1


def test_addresses_someone_else_holds_are_skipped_and_given_back() -> None:
    addresses = AddressPool("127.143.0.0/29")  # hosts .1 to .6
    with occupied(*(f"127.143.0.{n}" for n in range(1, 6))):
        ip, listener = bind_pod_address(addresses, PORT)
        listener.close()
    assert ip == "127.143.0.6"
    assert addresses.in_use == 1


def test_no_free_address_is_an_error_naming_the_port() -> None:
    addresses = AddressPool("127.143.0.0/29")
    with (
        occupied(*(f"127.143.0.{n}" for n in range(1, 7))),
        pytest.raises(Unavailable, match="cannot listen on a pod address, port 8080"),
    ):
        bind_pod_address(addresses, PORT)
    assert addresses.in_use == 0
