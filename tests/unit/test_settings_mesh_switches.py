"""``FUNCMESH_ACCESS_LOG`` and ``FUNCMESH_TRACING``: the mesh's access log (in memory; also in
a file with ``file``) and spans are on unless turned off."""

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
    assert settings.access_log_file is False
    assert settings.tracing.enabled is expected


def test_the_access_log_goes_to_a_file_when_asked() -> None:
    settings = load_daemon_settings({"HOME": "/h", "FUNCMESH_ACCESS_LOG": "File"})
    assert settings.access_log is True
    assert settings.access_log_file is True


@pytest.mark.parametrize(
    ("name", "choices"),
    [("FUNCMESH_ACCESS_LOG", "on, file or off"), ("FUNCMESH_TRACING", "on or off")],
)
def test_a_value_that_is_neither_on_nor_off_is_refused(name: str, choices: str) -> None:
    with pytest.raises(Invalid, match=f"{name} must be {choices}, got 'sometimes'"):
        load_daemon_settings({"HOME": "/h", name: "sometimes"})
