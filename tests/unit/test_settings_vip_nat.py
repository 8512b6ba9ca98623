"""``FUNCMESH_VIP_NAT``: kernel NAT for plain Services' VIPs where the daemon may, unless off."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.settings import load_daemon_settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, True), ("", True), ("on", True), ("auto", True), ("OFF", False), ("0", False)],
)
def test_kernel_nat_is_on_unless_turned_off(value: str | None, expected: bool) -> None:
    env = {"HOME": "/h"} | ({} if value is None else {"FUNCMESH_VIP_NAT": value})

    assert load_daemon_settings(env).vip_nat is expected


def test_a_value_that_is_neither_on_nor_off_is_refused() -> None:
    with pytest.raises(Invalid, match="FUNCMESH_VIP_NAT must be on or off, got 'maybe'"):
        load_daemon_settings({"HOME": "/h", "FUNCMESH_VIP_NAT": "maybe"})
