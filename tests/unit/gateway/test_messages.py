"""The heads the gateway writes: the request an instance sees, the response a client sees."""

from __future__ import annotations

import dataclasses
import json

import pytest

from funcmesh.gateway.messages import (
    Request,
    error_response,
    relay_response_head,
    rewrite_request_head,
)
from funcmesh.mesh.sources import WorkloadSource

EVENT_ID = b"AbCdEfGhIjKlMnO"
EVENT_TIME = b"2021-05-03T11:31:53Z"


def rewrite(
    headers: list[tuple[bytes, bytes]], *, method: bytes = b"GET", body_length: int = 0
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    head = rewrite_request_head(
        method,
        b"/a?x=1",
        headers,
        body_length=body_length,
        client_ip=b"127.0.0.9",
        default_host=b"127.128.0.7:8080",
        event_id=EVENT_ID,
        event_time=EVENT_TIME,
    )
    return split_head(head)


def split_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    assert head.endswith(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    pairs = [tuple(line.split(b": ", 1)) for line in lines]
    return first, [(name, value) for name, value in pairs]


def values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name.lower()]


def test_request_line_uses_the_function_target_and_http11() -> None:
    first, _ = rewrite([(b"Host", b"gw")], method=b"DELETE")
    assert first == b"DELETE /a?x=1 HTTP/1.1"


def test_client_headers_are_kept_in_order_with_their_spelling() -> None:
    _, headers = rewrite([(b"Host", b"gw"), (b"X-Custom", b"1"), (b"accept", b"*/*")])
    assert headers[:3] == [(b"Host", b"gw"), (b"X-Custom", b"1"), (b"accept", b"*/*")]


@pytest.mark.parametrize(
    "name",
    [
        b"Connection",
        b"Keep-Alive",
        b"Transfer-Encoding",
        b"TE",
        b"Trailer",
        b"Upgrade",
        b"Proxy-Authorization",
        b"Proxy-Connection",
    ],
)
def test_hop_by_hop_headers_are_dropped(name: bytes) -> None:
    _, headers = rewrite([(b"Host", b"gw"), (name, b"keep-alive")])
    assert values(headers, name) == []


def test_headers_named_by_connection_are_dropped() -> None:
    client = [(b"Host", b"gw"), (b"Connection", b"close, X-Secret"), (b"X-Secret", b"1")]
    _, headers = rewrite(client)
    assert values(headers, b"x-secret") == []
    assert values(headers, b"connection") == []
    assert values(headers, b"host") == [b"gw"]


def test_body_is_framed_by_content_length_whatever_the_client_sent() -> None:
    client = [(b"Host", b"gw"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"99")]
    _, headers = rewrite(client, method=b"POST", body_length=5)
    assert values(headers, b"content-length") == [b"5"]
    assert values(headers, b"transfer-encoding") == []


@pytest.mark.parametrize(
    ("method", "body_length", "expected"),
    [(b"GET", 0, []), (b"POST", 0, [b"0"]), (b"PUT", 0, [b"0"]), (b"GET", 3, [b"3"])],
)
def test_content_length_only_when_there_is_or_could_be_a_body(
    method: bytes, body_length: int, expected: list[bytes]
) -> None:
    _, headers = rewrite([(b"Host", b"gw")], method=method, body_length=body_length)
    assert values(headers, b"content-length") == expected


def test_expect_is_not_forwarded_because_the_body_comes_at_once() -> None:
    _, headers = rewrite([(b"Host", b"gw"), (b"Expect", b"100-continue")], body_length=1)
    assert values(headers, b"expect") == []


def test_forwarded_headers_are_added() -> None:
    _, headers = rewrite([(b"Host", b"gw.example:8080")])
    assert values(headers, b"x-forwarded-for") == [b"127.0.0.9"]
    assert values(headers, b"x-forwarded-host") == [b"gw.example:8080"]
    assert values(headers, b"x-forwarded-proto") == [b"http"]


def test_forwarded_for_is_appended_and_host_and_proto_are_replaced() -> None:
    client = [
        (b"Host", b"gw"),
        (b"X-Forwarded-For", b"10.0.0.1"),
        (b"X-Forwarded-For", b"10.0.0.2"),
        (b"X-Forwarded-Host", b"spoofed"),
        (b"X-Forwarded-Proto", b"https"),
    ]
    _, headers = rewrite(client)
    assert values(headers, b"x-forwarded-for") == [b"10.0.0.1, 10.0.0.2, 127.0.0.9"]
    assert values(headers, b"x-forwarded-host") == [b"gw"]
    assert values(headers, b"x-forwarded-proto") == [b"http"]


def test_missing_host_becomes_the_instance_address() -> None:
    _, headers = rewrite([])
    assert values(headers, b"host") == [b"127.128.0.7:8080"]


def test_event_headers_are_added_when_missing() -> None:
    _, headers = rewrite([(b"Host", b"gw")])
    assert values(headers, b"event-id") == [EVENT_ID]
    assert values(headers, b"event-time") == [EVENT_TIME]
    assert values(headers, b"event-type") == [b"application/x-www-form-urlencoded"]
    assert values(headers, b"event-namespace") == [b"gateway.funcmesh.io"]


def test_event_type_is_the_content_type() -> None:
    _, headers = rewrite([(b"Content-Type", b"application/json")], method=b"POST")
    assert values(headers, b"event-type") == [b"application/json"]


def test_event_headers_from_the_client_are_not_overridden() -> None:
    client = [
        (b"Event-Id", b"mine"),
        (b"event-time", b"2009-11-10 23:00:00 +0000 UTC"),
        (b"EVENT-TYPE", b"text/plain"),
        (b"Event-Namespace", b"cronjobtrigger.kubeless.io"),
    ]
    _, headers = rewrite(client)
    assert values(headers, b"event-id") == [b"mine"]
    assert values(headers, b"event-time") == [b"2009-11-10 23:00:00 +0000 UTC"]
    assert values(headers, b"event-type") == [b"text/plain"]
    assert values(headers, b"event-namespace") == [b"cronjobtrigger.kubeless.io"]


def test_response_head_relays_status_reason_and_end_to_end_headers() -> None:
    upstream = [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Trace", b"abc"),
    ]
    head = relay_response_head(201, b"Created", upstream, chunked=False, connection=None)
    first, headers = split_head(head)
    assert first == b"HTTP/1.1 201 Created"
    assert headers == [
        (b"Content-Type", b"text/plain"),
        (b"Content-Length", b"5"),
        (b"X-Trace", b"abc"),
    ]


def test_response_head_rechunks_and_drops_a_stale_length() -> None:
    upstream = [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")]
    head = relay_response_head(200, b"OK", upstream, chunked=True, connection=b"close")
    _, headers = split_head(head)
    assert headers == [(b"Transfer-Encoding", b"chunked"), (b"Connection", b"close")]


def test_response_head_without_reason_gets_the_standard_phrase() -> None:
    first, _ = split_head(relay_response_head(404, b"", [], chunked=False, connection=None))
    assert first == b"HTTP/1.1 404 Not Found"


def test_error_response_is_json_with_the_function_name() -> None:
    response = error_response(504, "did not answer", function="default/x", connection=b"close")
    head, _, body = response.partition(b"\r\n\r\n")
    first, headers = split_head(head + b"\r\n\r\n")
    assert first == b"HTTP/1.1 504 Gateway Timeout"
    assert values(headers, b"content-type") == [b"application/json"]
    assert values(headers, b"content-length") == [str(len(body)).encode()]
    assert values(headers, b"connection") == [b"close"]
    assert json.loads(body) == {"error": "did not answer", "function": "default/x"}


def test_error_response_to_head_has_no_body() -> None:
    response = error_response(404, "nope", head_only=True)
    assert response.endswith(b"\r\n\r\n")
    assert b"Content-Length: 17" in response


def test_with_headers_keeps_every_other_field() -> None:
    """A field added to Request must be carried by with_headers too (it is hand-written)."""
    original = Request(
        method=b"POST",
        target=b"/a?b=1",
        headers=[(b"Host", b"h")],
        body=b"body",
        keep_alive=False,
        http11=False,
        client_ip=b"127.0.0.9",
        scheme=b"https",
        principal="cluster.local/ns/a/sa/b",
        mtls=True,
        server_name="hello.default.svc.cluster.local",
        source=WorkloadSource(workload="caller", namespace="a"),
    )
    changed = original.with_headers([(b"Host", b"other")])
    assert changed.headers == [(b"Host", b"other")]
    for field in dataclasses.fields(Request):
        if field.name != "headers":
            assert getattr(changed, field.name) == getattr(original, field.name), field.name
        # every field differs from its default, so a forgotten one would show
        if field.default is not dataclasses.MISSING:
            assert getattr(original, field.name) != field.default, field.name
