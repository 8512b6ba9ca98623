"""``trigger http`` flag handling: what create builds and what update changes (only the flags
given, unlike Kubeless's update)."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.cli.trigger_http import apply_changes, build_http_trigger, spec_changes, trigger_row
from funcmesh.errors import Invalid

NO_FLAGS: dict[str, Any] = {
    "function_name": None, "hostname": None, "path": None, "basic_auth_secret": None,
    "tls_secret": None, "cors_enable": None, "gateway": None,
    "no_cors": False, "no_basic_auth": False, "no_tls": False,
}  # fmt: skip


def flags(**given: Any) -> dict[str, Any]:
    return {**NO_FLAGS, **given}


def test_create_builds_the_kubeless_object() -> None:
    changes = spec_changes(
        flags(function_name="f", hostname="h.test", path="/api", cors_enable=True),
        allow_empty=True,
    )
    obj = build_http_trigger("t", "ns", changes)
    assert obj["spec"] == {
        "function-name": "f", "host-name": "h.test", "path": "api", "cors-enable": True,
    }  # fmt: skip
    assert obj["metadata"] == {"name": "t", "namespace": "ns", "labels": {"created-by": "kubeless"}}
    assert trigger_row(obj) == ["t", "ns", "h.test", "/api", "f"]


def test_update_changes_only_the_flags_given() -> None:
    current = build_http_trigger(
        "t", "ns",
        {"function-name": "f", "host-name": "h.test", "basic-auth-secret": "a",
         "cors-enable": True},
    )  # fmt: skip
    updated = apply_changes(
        current, spec_changes(flags(path="v2", no_cors=True), allow_empty=False)
    )
    assert updated["spec"] == {
        "function-name": "f", "host-name": "h.test", "basic-auth-secret": "a", "path": "v2",
    }  # fmt: skip
    assert current["spec"]["cors-enable"] is True  # the original is not changed
    dropped = apply_changes(updated, spec_changes(flags(no_basic_auth=True), allow_empty=False))
    assert "basic-auth-secret" not in dropped["spec"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "nothing to update"),
        ({"cors_enable": True, "no_cors": True}, "--cors-enable cannot go with --no-cors"),
        ({"tls_secret": "s", "no_tls": True}, "--no-tls cannot go with --tls-secret"),
    ],
)
def test_contradicting_or_missing_update_flags_are_refused(
    given: dict[str, Any], message: str
) -> None:
    with pytest.raises(Invalid, match=message):
        spec_changes(flags(**given), allow_empty=False)


def test_a_bad_host_is_refused_before_sending() -> None:
    with pytest.raises(Invalid, match="spec.host-name"):
        build_http_trigger("t", "ns", {"function-name": "f", "host-name": "not a host"})
