from __future__ import annotations

import json

import pytest

from funcmesh.client.status import ResourceExpired, error_from_response
from funcmesh.errors import (
    AlreadyExists,
    Cause,
    Conflict,
    FuncmeshError,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
)


def status(code: int, reason: str, message: str, **details: object) -> bytes:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }
    if details:
        body["details"] = details
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
        (422, "Invalid", Invalid),
        (400, "BadRequest", Invalid),
        (401, "Unauthorized", Unauthorized),
        (403, "Forbidden", Unauthorized),
        (410, "Expired", ResourceExpired),
        (503, "ServiceUnavailable", Unavailable),
        (500, "InternalError", FuncmeshError),
        (404, "", NotFound),
        (409, "", Conflict),
    ],
)
def test_status_maps_to_exception(code: int, reason: str, expected: type[Exception]) -> None:
    error = error_from_response(code, status(code, reason, "the message"))
    assert type(error) is expected
    assert str(error).startswith("the message")


def test_invalid_carries_causes() -> None:
    body = status(
        422,
        "Invalid",
        'Function.kubeless.io "x" is invalid: spec.handler: bad',
        causes=[{"reason": "FieldValueInvalid", "message": "bad", "field": "spec.handler"}],
    )
    error = error_from_response(422, body)
    assert isinstance(error, Invalid)
    assert error.causes == (Cause(field="spec.handler", message="bad"),)


def test_unauthorized_says_which_token_to_use() -> None:
    error = error_from_response(401, status(401, "Unauthorized", "Unauthorized"))
    assert "kubeconfig funcmesh up wrote" in str(error)


def test_body_that_is_not_a_status_is_quoted() -> None:
    error = error_from_response(
        502, b"<html>upstream died</html>\nmore", reason_phrase="Bad Gateway"
    )
    assert isinstance(error, Unavailable)
    assert str(error) == "the funcmesh API answered 502 Bad Gateway: <html>upstream died</html>"
