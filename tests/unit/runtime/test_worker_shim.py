"""The Python worker shim in-process: event building, result mapping, request parsing, metrics,
and the HTTP/1.1 connection loop over a socketpair (no processes, no TCP)."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import funcmesh.runtime

SHIMS = Path(funcmesh.runtime.__file__).parent / "shims"


def _load_shim(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SHIMS / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_shim("_funcmesh_worker")


def make_request(
    method: str = "POST",
    target: str = "/",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    peer: Any = ("127.0.0.9", 40000),
) -> Any:
    return worker.Request(method, target, headers or {}, body, peer)


def make_app(handler: Any, *, load_error: str | None = None, memory_limit: str = "0") -> Any:
    context = worker.make_context("hello-fn", 3, "python3.11", memory_limit)
    return worker.FunctionApp(handler, context, load_error)


# --------------------------------------------------------------------------- compatibility


@pytest.mark.parametrize("name", ["_funcmesh_worker", "_funcmesh_zygote"])
def test_shims_parse_as_python_3_8(name: str) -> None:
    source = (SHIMS / f"{name}.py").read_text()
    ast.parse(source, feature_version=(3, 8))
    assert "from __future__ import annotations" in source  # annotations are never evaluated


# --------------------------------------------------------------------------- event


def test_event_has_body_bytes_and_event_headers() -> None:
    request = make_request(
        headers={"event-id": "abc", "event-type": "text/plain", "event-namespace": "cli"},
        body=b"hi",
    )
    event = worker.build_event(request)
    assert event["data"] == b"hi"
    assert event["event-id"] == "abc"
    assert event["event-type"] == "text/plain"
    assert event["event-time"] is None
    assert event["event-namespace"] == "cli"
    assert event["extensions"] == {"request": request}


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"],
)
def test_event_data_is_parsed_json_whatever_the_parameters(content_type: str) -> None:
    request = make_request(headers={"content-type": content_type}, body=b'[1, {"a": "\xc3\xa9"}]')
    assert worker.build_event(request)["data"] == [1, {"a": "é"}]


def test_event_data_is_none_for_an_empty_json_body() -> None:
    request = make_request("GET", headers={"content-type": "application/json"})
    assert worker.build_event(request)["data"] is None


def test_invalid_json_answers_400_without_calling_the_handler() -> None:
    calls: list[Any] = []
    app = make_app(lambda event, context: calls.append(event))
    request = make_request(headers={"content-type": "application/json"}, body=b"{nope")
    status, content_type, _, body = app.call(request)
    assert status == 400
    assert body.startswith(b"invalid JSON body: Expecting property name")
    assert calls == []


def test_context_names_the_function_not_the_python_callable() -> None:
    seen: list[dict[str, Any]] = []
    app = make_app(lambda event, context: seen.append(context))
    app.call(make_request())
    assert seen == [
        {"function-name": "hello-fn", "timeout": 3.0, "runtime": "python3.11", "memory-limit": "0"}
    ]


# --------------------------------------------------------------------------- results

HTML = b"text/html; charset=UTF-8"
JSON = b"application/json"


@pytest.mark.parametrize(
    ("result", "status", "content_type", "body"),
    [
        ("hello world", 200, HTML, b"hello world"),
        ("h\u00e9", 200, HTML, "h\u00e9".encode()),
        (b"\x00raw", 200, HTML, b"\x00raw"),
        (bytearray(b"ba"), 200, HTML, b"ba"),
        (None, 200, HTML, b""),
        ({"it-s": "alive"}, 200, JSON, b'{"it-s": "alive"}'),
        ([1, 2], 200, JSON, b"[1, 2]"),
        (["a", "b"], 200, JSON, b'["a", "b"]'),
        ((1, 2, 3, 4), 200, JSON, b"[1, 2, 3, 4]"),
        ((1, 2), 200, JSON, b"[1, 2]"),  # 2 is no HTTP status: a plain tuple
        (42, 200, JSON, b"42"),
        (1.5, 200, JSON, b"1.5"),
        (True, 200, JSON, b"true"),
        (("created", 201), 201, HTML, b"created"),
        (({"id": 7}, 202), 202, JSON, b'{"id": 7}'),
        (("", 404, {"X-Why": "gone"}), 404, HTML, b""),
    ],
)
def test_result_mapping(result: Any, status: int, content_type: bytes, body: bytes) -> None:
    assert worker.map_result(result)[0] == status
    assert worker.map_result(result)[1] == content_type
    assert worker.map_result(result)[3] == body


def test_status_tuple_headers_may_be_a_dict_or_pairs_and_set_content_type() -> None:
    as_dict = worker.map_result(("x", 418, {"Content-Type": "text/plain", "X-A": "1"}))
    as_pairs = worker.map_result(("x", 418, [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]))
    assert as_dict == (418, b"text/plain", b"X-A: 1\r\n", b"x")
    assert as_pairs[2] == b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n"


class BottleHeaders:
    """The shape of bottle's HeaderDict: items() gives last values, allitems() all of them."""

    def items(self) -> list[tuple[str, str]]:
        return [("X-Multi", "2")]

    def allitems(self) -> list[tuple[str, str]]:
        return [("X-Multi", "1"), ("X-Multi", "2"), ("Content-Length", "999")]


class BottleResponse:
    status_code = 409
    body = "conflict"
    headers = BottleHeaders()


class WebobResponse:
    status_code = 200
    body = b"{}"
    headers = (("Content-Type", "application/json"), ("Content-Length", "2"))


def test_response_objects_keep_status_and_all_headers_but_not_framing() -> None:
    assert worker.map_result(BottleResponse()) == (
        409,
        HTML,
        b"X-Multi: 1\r\nX-Multi: 2\r\n",
        b"conflict",
    )
    assert worker.map_result(WebobResponse()) == (200, JSON, b"", b"{}")


class WeirdStatus:
    status_code = 600
    body = "x"


@pytest.mark.parametrize(
    ("result", "error"),
    [
        ({"data": b"bytes"}, "TypeError: Object of type bytes is not JSON serializable"),
        ({1, 2}, "TypeError: Object of type set is not JSON serializable"),
        (WeirdStatus(), "ValueError: invalid HTTP status 600"),
        (("x", 200, {"X-Evil": "a\r\nSet-Cookie: b"}), "ValueError: invalid response header"),
    ],
)
def test_results_that_cannot_be_sent_answer_500_naming_why(result: Any, error: str) -> None:
    app = make_app(lambda event, context: result)
    status, content_type, _, body = app.call(make_request())
    assert (status, content_type) == (500, b"text/plain; charset=utf-8")
    assert body.decode().startswith(error)


def test_handler_exception_is_500_with_its_name_and_a_traceback_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def handler(event: Any, context: Any) -> Any:
        raise ValueError("boom")

    app = make_app(handler)
    status, _, _, body = app.call(make_request())
    assert (status, body) == (500, b"ValueError: boom")
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert 'raise ValueError("boom")' in err


def test_memory_error_propagates_and_the_reply_names_the_limit() -> None:
    def handler(event: Any, context: Any) -> Any:
        raise MemoryError

    app = make_app(handler, memory_limit="64Mi")
    with pytest.raises(MemoryError):
        app.call(make_request())
    assert app.memory_error_reply()[0] == 502
    assert app.memory_error_reply()[3] == b"memory limit exceeded (64Mi): MemoryError"


# --------------------------------------------------------------------------- request


def test_query_is_a_multidict_like_bottles() -> None:
    request = make_request("GET", "/p%20q/r?k=1&k=2&empty=&name=J%C3%B6rg+M")
    query = request.query
    assert request.path == "/p q/r"
    assert request.query_string == "k=1&k=2&empty=&name=J%C3%B6rg+M"
    assert query["k"] == "2"
    assert query.getall("k") == ["1", "2"]
    assert query.get("missing", "dflt") == "dflt"
    assert query.get("k", type=int) == 2
    assert query["empty"] == ""
    assert query.name == "Jörg M"
    assert query.missing == ""
    assert list(query) == ["k", "empty", "name"]
    assert request.GET is query


def test_headers_are_case_insensitive() -> None:
    request = make_request(headers={"x-api-key": "s3", "content-type": "Text/Plain"})
    assert request.headers["X-API-Key"] == "s3"
    assert "X-Api-Key" in request.headers
    assert list(request.headers) == ["X-Api-Key", "Content-Type"]
    assert request.get_header("x-missing", "d") == "d"
    assert request.content_type == "text/plain"


def test_body_is_a_fresh_stream_on_every_access() -> None:
    request = make_request(body=b"abc", headers={"content-length": "3"})
    assert request.body.read() == b"abc"
    assert request.body.read() == b"abc"
    assert request.content_length == 3
    assert make_request("GET").content_length == -1


def test_url_remote_addr_and_cookies() -> None:
    request = make_request(
        "GET",
        "/a?b=1",
        headers={
            "host": "fn.local:8080",
            "x-forwarded-for": "10.1.1.1, 127.0.0.1",
            "cookie": "s=1; t=2",
        },
    )
    assert request.url == "http://fn.local:8080/a?b=1"
    assert request.remote_addr == "10.1.1.1"
    assert make_request().remote_addr == "127.0.0.9"
    assert request.cookies["t"] == "2"
    assert request.get_cookie("s") == "1"


def test_json_property_is_none_for_other_media_types() -> None:
    assert make_request(body=b"{}", headers={"content-type": "text/plain"}).json is None
    assert make_request(body=b"{}", headers={"content-type": "application/json"}).json == {}


def test_urlencoded_forms() -> None:
    request = make_request(
        headers={"content-type": "application/x-www-form-urlencoded"}, body=b"a=1&a=%C3%A9&b="
    )
    assert request.forms.getall("a") == ["1", "é"]
    assert request.forms["b"] == ""
    assert len(request.files) == 0
    assert request.params["a"] == "é"


def _multipart(boundary: str, parts: list[tuple[str, bytes]]) -> bytes:
    chunks = [b"--%s\r\n%s\r\n\r\n%s\r\n" % (boundary.encode(), h.encode(), v) for h, v in parts]
    return b"".join(chunks) + b"--%s--\r\n" % boundary.encode()


BINARY = bytes(range(256)) * 4 + b"\r\n--not-a-boundary\r\n\r\r\n\n"


def test_multipart_fields_and_files() -> None:
    body = _multipart(
        "XyZ",
        [
            ('Content-Disposition: form-data; name="title"', "Grüße".encode()),
            ('Content-Disposition: form-data; name="tag"', b"a"),
            ('Content-Disposition: form-data; name="tag"', b"b"),
            (
                'Content-Disposition: form-data; name="upload"; '
                'filename="../../etc/r\u00e9sum\u00e9 v2.bin"\r\n'
                "Content-Type: application/octet-stream",
                BINARY,
            ),
        ],
    )
    request = make_request(headers={"content-type": "multipart/form-data; boundary=XyZ"}, body=body)
    assert request.forms["title"] == "Grüße"
    assert request.forms.getall("tag") == ["a", "b"]
    upload = request.files["upload"]
    assert upload.name == "upload"
    assert upload.raw_filename == "../../etc/r\u00e9sum\u00e9 v2.bin"
    assert upload.filename == "resume-v2.bin"
    assert upload.content_type == "application/octet-stream"
    assert upload.file.read() == BINARY
    assert upload.content_length == len(BINARY)
    target = io.BytesIO()
    upload.save(target)
    assert target.getvalue() == BINARY
    assert set(request.POST) == {"title", "tag", "upload"}


def test_multipart_without_parts_is_empty() -> None:
    request = make_request(headers={"content-type": "multipart/form-data; boundary=Q"}, body=b"x")
    assert (len(request.forms), len(request.files)) == (0, 0)


# --------------------------------------------------------------------------- metrics


def test_metrics_text_is_prometheus_exposition_per_method() -> None:
    metrics = worker.Metrics()
    metrics.observe("GET", 0.003, False)
    metrics.observe("GET", 0.2, True)
    metrics.observe("POST", 11.0, False)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = {
        (s.name, s.labels.get("method"), s.labels.get("le")): s.value
        for family in families.values()
        for s in family.samples
    }
    assert families["function_duration_seconds"].type == "histogram"
    assert samples[("function_calls_total", "GET", None)] == 2
    assert samples[("function_failures_total", "GET", None)] == 1
    assert samples[("function_failures_total", "POST", None)] == 0
    assert samples[("function_duration_seconds_bucket", "GET", "0.005")] == 1
    assert samples[("function_duration_seconds_bucket", "GET", "0.1")] == 1
    assert samples[("function_duration_seconds_bucket", "GET", "0.25")] == 2
    assert samples[("function_duration_seconds_bucket", "POST", "10.0")] == 0
    assert samples[("function_duration_seconds_bucket", "POST", "+Inf")] == 1
    assert samples[("function_duration_seconds_count", "GET", None)] == 2
    assert samples[("function_duration_seconds_sum", "GET", None)] == pytest.approx(0.203)


def test_metrics_label_set_is_bounded() -> None:
    metrics = worker.Metrics()
    for index in range(40):
        metrics.observe(f"M{index}", 0.001, False)
    text = metrics.render().decode()
    assert text.count("function_calls_total{") == worker.MAX_METHOD_LABELS + 1
    assert 'function_calls_total{method="OTHER"} 24' in text


# --------------------------------------------------------------------------- HTTP


class Client:
    """Raw HTTP over one end of a socketpair; reads Content-Length framed responses."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines)}
        length = 0 if head_only else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._receive()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split(" ")[1]), headers, body

    def closed_by_server(self) -> bool:
        return not self.buffer and self.sock.recv(1) == b""

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        assert chunk, "server closed the connection"
        self.buffer += chunk


@contextlib.contextmanager
def connected(app: Any) -> Iterator[Client]:
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    server = worker.Server(None, app)
    thread = threading.Thread(target=server.serve_connection, args=(theirs, ("127.0.0.9", 1)))
    thread.start()
    try:
        yield Client(ours)
    finally:
        ours.close()
        thread.join(5)
        assert not thread.is_alive()


def echo(event: Any, context: Any) -> Any:
    request = event["extensions"]["request"]
    return {"method": request.method, "path": request.path, "data": repr(event["data"])}


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with connected(make_app(echo)) as client:
        for index in range(3):
            client.send(b"GET /n%d HTTP/1.1\r\nHost: x\r\n\r\n" % index)
            status, headers, body = client.response()
            assert status == 200
            assert headers["connection"] == "keep-alive"
            assert json.loads(body)["path"] == f"/n{index}"


def test_pipelined_requests_are_answered_in_order() -> None:
    with connected(make_app(echo)) as client:
        client.send(
            b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nonePOST /b HTTP/1.1\r\n"
            b"Content-Length: 3\r\n\r\ntwo"
        )
        assert json.loads(client.response()[2])["data"] == "b'one'"
        assert json.loads(client.response()[2])["data"] == "b'two'"


@pytest.mark.parametrize(
    ("request_head", "keeps_open"),
    [
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\n\r\n", True),
    ],
)
def test_connection_persistence_follows_the_http_version(
    request_head: bytes, keeps_open: bool
) -> None:
    with connected(make_app(echo)) as client:
        client.send(request_head)
        status, headers, _ = client.response()
        assert status == 200
        assert headers["connection"] == ("keep-alive" if keeps_open else "close")
        if not keeps_open:
            assert client.closed_by_server()


def test_chunked_request_body_reaches_the_handler() -> None:
    with connected(make_app(echo)) as client:
        client.send(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        assert json.loads(client.response()[2])["data"] == "b'hello world'"


def test_expect_100_continue_gets_an_interim_response() -> None:
    with connected(make_app(echo)) as client:
        client.send(b"POST / HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert client.response()[0] == 100
        client.send(b"data")
        assert json.loads(client.response()[2])["data"] == "b'data'"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_every_method_reaches_the_handler(method: str) -> None:
    with connected(make_app(echo)) as client:
        client.send(b"%s /x HTTP/1.1\r\n\r\n" % method.encode())
        assert json.loads(client.response()[2])["method"] == method


def test_head_answers_headers_only() -> None:
    with connected(make_app(lambda event, context: "twelve bytes")) as client:
        client.send(b"HEAD / HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n")
        status, headers, body = client.response(head_only=True)
        assert (status, headers["content-length"], body) == (200, "12", b"")
        assert client.response()[2] == b"OK"  # nothing of the HEAD body came in between


def test_healthz_and_metrics_are_served_without_the_handler() -> None:
    calls: list[Any] = []
    with connected(make_app(lambda event, context: calls.append(1))) as client:
        client.send(b"POST /fn HTTP/1.1\r\n\r\n")
        client.response()
        client.send(b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        assert client.response()[2] == b"OK"
        status, headers, body = client.response()
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'function_calls_total{method="POST"} 1' in body
    assert calls == [1]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n Folded: x\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST / HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70000, 431),
    ],
)
def test_bad_requests_are_refused_and_the_connection_closed(raw: bytes, status: int) -> None:
    with connected(make_app(echo)) as client:
        client.send(raw)
        answer, headers, _ = client.response()
        assert (answer, headers["connection"]) == (status, "close")
        assert client.closed_by_server()


def test_a_function_that_failed_to_load_explains_itself_on_every_call() -> None:
    error = "SyntaxError: invalid syntax (hello.py, line 3)"
    with connected(make_app(None, load_error=error)) as client:
        for path in (b"/", b"/metrics", b"/anything"):
            client.send(b"GET %s HTTP/1.1\r\n\r\n" % path)
            assert client.response()[:3:2] == (500, error.encode())
        client.send(b"GET /healthz HTTP/1.1\r\n\r\n")
        assert client.response()[0] == 200


def test_absolute_form_targets_are_reduced_to_path_and_query() -> None:
    with connected(make_app(echo)) as client:
        client.send(b"GET http://fn.local:8080/deep/path?q=1 HTTP/1.1\r\n\r\n")
        assert json.loads(client.response()[2])["path"] == "/deep/path"


def test_rehearse_leaves_no_thread_behind() -> None:
    before = threading.active_count()
    worker.rehearse()
    assert threading.active_count() == before
