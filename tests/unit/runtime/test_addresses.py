from __future__ import annotations

import pytest

from funcmesh.errors import Invalid, Unavailable
from funcmesh.runtime.addresses import AddressPool


def test_new_instances_get_new_addresses() -> None:
    pool = AddressPool("127.128.0.0/16")
    first = pool.take()
    pool.give_back(first)
    assert pool.take() != first


def test_addresses_are_unique_and_skip_network_edges() -> None:
    pool = AddressPool("127.128.0.0/24")
    taken = [pool.take() for _ in range(254)]
    assert len(set(taken)) == 254
    assert "127.128.0.0" not in taken
    assert "127.128.0.255" not in taken
    with pytest.raises(Unavailable, match="no free pod address"):
        pool.take()
    pool.give_back(taken[10])
    assert pool.take() == taken[10]


def test_only_loopback_networks() -> None:
    with pytest.raises(Invalid, match="127.0.0.0/8"):
        AddressPool("10.0.0.0/8")
