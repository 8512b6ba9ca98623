from __future__ import annotations

import secrets

import pytest

from funcmesh.cli.function_call import EVENT_ID_BYTES, build_call_request, data_content_type


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b'{"hello": "world"}', "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b"42", "application/json"),
        (b'"quoted"', "application/json"),
        (b"hello world", "text/plain"),
        (b"{not json", "text/plain"),
        (bytes([0xFF, 0xFE, 0x00]), "application/octet-stream"),
    ],
)
def test_any_json_value_is_sent_as_json(data: bytes, content_type: str) -> None:
    assert data_content_type(data) == content_type


def test_no_data_is_a_get_with_event_headers() -> None:
    request = build_call_request(
        None, method=None, event_id="e" * 15, event_time="2024-01-02T03:04:05Z"
    )
    assert request.method == "GET"
    assert request.body is None
    assert request.headers == {
        "event-id": "e" * 15,
        "event-time": "2024-01-02T03:04:05Z",
        "event-namespace": "cli.kubeless.io",
    }


def test_data_is_a_post_with_content_type_and_event_type() -> None:
    request = build_call_request(b"[1]", method=None, event_id="x", event_time="t")
    assert request.method == "POST"
    assert request.body == b"[1]"
    assert request.headers["Content-Type"] == request.headers["event-type"] == "application/json"


def test_method_flag_wins() -> None:
    assert build_call_request(b"x", method="put", event_id="x", event_time="t").method == "PUT"
    assert (
        build_call_request(None, method="delete", event_id="x", event_time="t").method == "DELETE"
    )


def test_event_ids_are_fifteen_url_safe_characters() -> None:
    event_id = secrets.token_urlsafe(EVENT_ID_BYTES)
    assert len(event_id) == 15
    assert set(event_id) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
