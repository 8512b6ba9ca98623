"""``FUNCMESH_SERVICE_CIDR``: where ClusterIPs come from."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.settings import load_daemon_settings


def test_the_default_range_is_127_96_0_0_16() -> None:
    assert load_daemon_settings({"HOME": "/h"}).runtime.service_cidr == "127.96.0.0/16"


def test_the_environment_sets_the_range() -> None:
    env = {"HOME": "/h", "FUNCMESH_SERVICE_CIDR": " 127.101.7.0/24 "}
    assert load_daemon_settings(env).runtime.service_cidr == "127.101.7.0/24"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        ("nonsense", "must be a network like 127.96.0.0/16"),
        ("127.96.0.1/16", "host bits set"),
        ("127.96.0.0/29", "too small"),
        ("10.96.0.0/16", "must be inside 127.0.0.0/8"),
        ("fd00::/108", "must be inside 127.0.0.0/8"),
        ("127.128.5.0/24", "overlaps the pod network 127.128.0.0/16"),
    ],
)
def test_bad_ranges_are_refused(cidr: str, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        load_daemon_settings({"HOME": "/h", "FUNCMESH_SERVICE_CIDR": cidr})
