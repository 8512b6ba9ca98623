"""``FUNCMESH_ACCESS_LOG`` and ``FUNCMESH_TRACING``: the mesh's access log and spans are on
unless turned off (each costs a few microseconds per call)."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.settings import load_daemon_settings


@pytest.mark.parametrize(
    ("value", "expected"), [(None, True), ("", True), ("on", True), ("off", False), ("no", False)]
)
def test_the_access_log_and_tracing_are_on_unless_turned_off(
    value: str | None, expected: bool
) -> None:
    names = ("FUNCMESH_ACCESS_LOG", "FUNCMESH_TRACING")
    env = {"HOME": "/h"} | ({} if value is None else dict.fromkeys(names, value))
    settings = load_daemon_settings(env)
    assert settings.access_log is expected
    assert settings.tracing.enabled is expected


@pytest.mark.parametrize("name", ["FUNCMESH_ACCESS_LOG", "FUNCMESH_TRACING"])
def test_a_value_that_is_neither_on_nor_off_is_refused(name: str) -> None:
    with pytest.raises(Invalid, match=f"{name} must be on or off, got 'sometimes'"):
        load_daemon_settings({"HOME": "/h", name: "sometimes"})
