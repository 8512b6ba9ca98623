"""``--dns-addr`` and ``--dns-upstream``: flags over FUNCMESH_* variables over defaults."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.settings import Address, load_daemon_settings, parse_dns_upstream


def test_the_dns_address_defaults_to_5353_and_the_flag_wins_over_the_variable() -> None:
    env = {"HOME": "/h", "FUNCMESH_DNS_ADDR": "127.0.0.2:53"}

    assert load_daemon_settings({"HOME": "/h"}).dns_addr == Address(host="127.0.0.1", port=5353)
    assert load_daemon_settings(env).dns_addr == Address(host="127.0.0.2", port=53)
    assert load_daemon_settings(env, dns_addr="[::1]:5300").dns_addr == Address(
        host="::1", port=5300
    )


def test_a_bad_dns_address_names_the_flag() -> None:
    with pytest.raises(Invalid, match="--dns-addr must be HOST:PORT"):
        load_daemon_settings({"HOME": "/h"}, dns_addr="localhost")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], None),
        ([""], None),
        (["none"], ()),
        (["NONE"], ()),
        (["10.0.0.2"], (Address(host="10.0.0.2", port=53),)),
        (
            ["10.0.0.2:5300, 10.0.0.3"],
            (Address(host="10.0.0.2", port=5300), Address(host="10.0.0.3", port=53)),
        ),
        (
            ["10.0.0.2", "fd00::53"],
            (Address(host="10.0.0.2", port=53), Address(host="fd00::53", port=53)),
        ),
        (["[fd00::53]:5300"], (Address(host="fd00::53", port=5300),)),
    ],
)
def test_upstreams(values: list[str], expected: tuple[Address, ...] | None) -> None:
    assert parse_dns_upstream(values) == expected


@pytest.mark.parametrize("value", ["dns.google", "10.0.0.2:port", "none,10.0.0.2"])
def test_upstreams_must_be_addresses(value: str) -> None:
    with pytest.raises(Invalid, match="--dns-upstream"):
        parse_dns_upstream([value])


def test_flags_win_over_the_upstream_variable() -> None:
    env = {"HOME": "/h", "FUNCMESH_DNS_UPSTREAM": "none"}

    assert load_daemon_settings(env).dns_upstream == ()
    assert load_daemon_settings(env, dns_upstream=["10.0.0.9"]).dns_upstream == (
        Address(host="10.0.0.9", port=53),
    )
