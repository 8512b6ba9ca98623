"""Bearer token checks."""

from __future__ import annotations

import pytest

from funcmesh.api.auth import bearer_matches, bearer_token_middleware

TOKEN = b"s3cret-token"


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer s3cret-token", True),
        ("bearer s3cret-token", True),
        ("  Bearer   s3cret-token  ", True),
        ("Bearer s3cret-tokenX", False),
        ("Bearer ", False),
        ("Basic s3cret-token", False),
        ("s3cret-token", False),
        ("", False),
        ("Bearer s3cret-t\u00f6ken", False),
    ],
)
def test_bearer_matches(header: str, accepted: bool) -> None:
    assert bearer_matches(header, TOKEN) is accepted


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        bearer_token_middleware("")
