"""How the end of an instance's response body is found (RFC 9112 section 6.3)."""

from __future__ import annotations

import pytest

from funcmesh.gateway.messages import BodyFraming
from funcmesh.gateway.upstream import response_framing

LENGTH = [(b"Content-Length", b"5")]
CHUNKED = [(b"Transfer-Encoding", b"chunked")]


@pytest.mark.parametrize(
    ("status", "headers", "head_only", "expected"),
    [
        (200, LENGTH, False, BodyFraming.CONTENT_LENGTH),
        (200, [(b"content-length", b"0")], False, BodyFraming.CONTENT_LENGTH),
        (200, CHUNKED, False, BodyFraming.CHUNKED),
        (200, [(b"transfer-encoding", b"gzip, Chunked")], False, BodyFraming.CHUNKED),
        (200, [*LENGTH, *CHUNKED], False, BodyFraming.CHUNKED),
        (200, [(b"Content-Type", b"text/plain")], False, BodyFraming.UNTIL_CLOSE),
        (500, [], False, BodyFraming.UNTIL_CLOSE),
        (204, [], False, BodyFraming.NONE),
        (304, LENGTH, False, BodyFraming.NONE),
        (200, LENGTH, True, BodyFraming.NONE),
        (200, CHUNKED, True, BodyFraming.NONE),
    ],
)
def test_response_framing(
    status: int, headers: list[tuple[bytes, bytes]], head_only: bool, expected: BodyFraming
) -> None:
    assert response_framing(status, headers, head_only=head_only) is expected
