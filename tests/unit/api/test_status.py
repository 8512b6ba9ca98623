"""The one table from errors to Kubernetes Status objects."""

from __future__ import annotations

import pytest

from funcmesh.api.status import (
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    RequestTooLarge,
    StatusDetails,
    UnsupportedMediaType,
    details_for,
    failure_status,
    status_for_error,
)
from funcmesh.errors import (
    AlreadyExists,
    Cause,
    Conflict,
    FuncmeshError,
    Invalid,
    NotFound,
    QueueFull,
    Unauthorized,
    Unavailable,
)
from funcmesh.model.kinds import FUNCTION
from funcmesh.store.sqlite import Gone


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (Invalid("bad"), 422, "Invalid"),
        (NotFound("missing"), 404, "NotFound"),
        (AlreadyExists("twice"), 409, "AlreadyExists"),
        (Conflict("changed"), 409, "Conflict"),
        (Unauthorized("who"), 401, "Unauthorized"),
        (Forbidden("no"), 403, "Forbidden"),
        (Gone("too old"), 410, "Expired"),
        (BadRequest("body"), 400, "BadRequest"),
        (MethodNotAllowed("verb"), 405, "MethodNotAllowed"),
        (RequestTooLarge("big"), 413, "RequestEntityTooLarge"),
        (UnsupportedMediaType("type"), 415, "UnsupportedMediaType"),
        (QueueFull("busy"), 429, "TooManyRequests"),
        (Unavailable("down"), 503, "ServiceUnavailable"),
    ],
)
def test_each_error_maps_to_its_code_and_reason(error: Exception, code: int, reason: str) -> None:
    body = status_for_error(error)
    assert body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": str(error),
        "reason": reason,
        "code": code,
    }


@pytest.mark.parametrize(
    "error", [RuntimeError("secret path /root/x"), KeyError("k"), FuncmeshError("store closed")]
)
def test_unexpected_errors_are_internal_errors_without_internals(error: Exception) -> None:
    body = status_for_error(error)
    assert (body["code"], body["reason"]) == (500, "InternalError")
    assert str(error) not in body["message"]
    assert "log" in body["message"]


def test_invalid_carries_its_causes_and_details() -> None:
    error = Invalid(
        'Function "f" is invalid',
        [Cause(field="spec.handler", message="needs a dot", reason="FieldValueRequired")],
    )
    body = status_for_error(error, details_for(FUNCTION, "f", error))
    assert body["details"] == {
        "name": "f",
        "group": "kubeless.io",
        "kind": "Function",
        "causes": [
            {"field": "spec.handler", "message": "needs a dot", "reason": "FieldValueRequired"}
        ],
    }


def test_details_name_the_resource_for_other_errors() -> None:
    assert details_for(FUNCTION, "f", NotFound("x")) == StatusDetails(
        name="f", group="kubeless.io", kind="functions"
    )


@pytest.mark.parametrize(
    ("code", "reason"), [(404, "NotFound"), (405, "MethodNotAllowed"), (500, "InternalError")]
)
def test_reasons_of_http_codes(code: int, reason: str) -> None:
    assert failure_status(code=code, message="m")["reason"] == reason
