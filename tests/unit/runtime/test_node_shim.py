"""The Node.js runtime shim with a real ``node``, as a Kubeless runtime container runs it
(MOD_NAME, FUNC_HANDLER, FUNC_PORT ...), driven over HTTP: the event, the context, result
mapping, Express's request and response methods, streaming, errors, CORS, metrics, draining."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from funcmesh.runtime.node_processes import SHIM_PATH

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node")
START_TIMEOUT_S = 10.0

KITCHEN = (Path(__file__).parent / "fixtures" / "node" / "kitchen.js").read_text()


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


@dataclass
class Runtime:
    """One ``node kubeless_runtime.js`` process serving a function."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout_s: float = 3.0) -> str:
        deadline = time.monotonic() + timeout_s
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


Serve = Callable[..., Runtime]


def start_runtime(
    directory: Path, *, module: str, handler: str, env: dict[str, str] | None = None
) -> Runtime:
    assert NODE is not None
    port = free_port()
    log_path = directory / f"{module}-{handler}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [NODE, str(SHIM_PATH)],
            env={
                "PATH": os.defpath,
                "MOD_NAME": module,
                "FUNC_HANDLER": handler,
                "FUNC_PORT": str(port),
                "FUNC_TIMEOUT": "30",
                "FUNC_RUNTIME": "nodejs20",
                "FUNC_MEMORY_LIMIT": "128Mi",
                "FUNCMESH_FUNCTION_NAME": "kitchen-fn",
                "KUBELESS_INSTALL_VOLUME": str(directory),
                **(env or {}),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    runtime = Runtime(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"node exited {process.returncode}:\n{runtime.log()}")
        try:
            if httpx.get(f"{runtime.url}/healthz", timeout=1).status_code == 200:
                return runtime
        except httpx.TransportError:
            time.sleep(0.02)
    runtime.stop()
    raise AssertionError(f"node did not serve within {START_TIMEOUT_S}s:\n{runtime.log()}")


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    directory = tmp_path_factory.mktemp("kitchen")
    (directory / "kitchen.js").write_text(KITCHEN)
    runtime = start_runtime(directory, module="kitchen", handler="route")
    yield runtime
    runtime.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    started: list[Runtime] = []

    def serve(code: str, handler: str, *, module: str = "hello", **env: str) -> Runtime:
        (tmp_path / f"{module}.js").write_text(code)
        runtime = start_runtime(tmp_path, module=module, handler=handler, env=env)
        started.append(runtime)
        return runtime

    yield serve
    for runtime in started:
        runtime.stop()


def call(runtime: Runtime, path: str, **kwargs: object) -> httpx.Response:
    method = str(kwargs.pop("method", "GET"))
    return httpx.request(method, runtime.url + path, timeout=10, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the event


def test_text_body_is_a_string(kitchen: Runtime) -> None:
    answer = call(kitchen, "/echo", method="POST", content="héllo", headers={"Content-Type": "x"})
    assert answer.json() == {"data": "héllo", "type": "string"}


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_body_is_parsed_whatever_the_charset(kitchen: Runtime, content_type: str) -> None:
    body = json.dumps({"a": [1, "é"]}).encode()
    answer = call(
        kitchen, "/echo", method="POST", content=body, headers={"Content-Type": content_type}
    )
    assert answer.json() == {"data": {"a": [1, "é"]}, "type": "object"}


def test_json_array_is_echoed(kitchen: Runtime) -> None:
    answer = call(kitchen, "/echo", method="POST", json=[1, 2])
    assert answer.json()["data"] == [1, 2]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_empty_body_is_an_empty_object(kitchen: Runtime, method: str) -> None:
    answer = call(kitchen, "/echo", method=method, headers={"Content-Type": "application/json"})
    assert answer.json() == {"data": {}, "type": "object"}


def test_invalid_json_answers_400_without_calling_the_function(kitchen: Runtime) -> None:
    before = call(kitchen, "/count").json()["count"]
    answer = call(
        kitchen,
        "/count",
        method="POST",
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == 400
    assert answer.text.startswith("invalid JSON body: ")
    assert call(kitchen, "/count").json()["count"] == before + 1


def test_event_headers_and_context(kitchen: Runtime) -> None:
    headers = {"Event-Id": "abc", "Event-Type": "application/json", "Event-Namespace": "cli"}
    answer = call(kitchen, "/event", headers=headers).json()
    assert answer["id"] == "abc"
    assert answer["type"] == "application/json"
    assert answer["namespace"] == "cli"
    assert answer["time"] is None  # absent header: undefined, as in Kubeless
    assert answer["keys"] == sorted(
        ["data", "event-id", "event-type", "event-time", "event-namespace", "extensions"]
    )
    assert answer["extensions"] == ["request", "response"]
    assert answer["context"] == {
        "function-name": "kitchen-fn",  # the Function's name, not the handler's (7.9)
        "timeout": 30,
        "runtime": "nodejs20",
        "memory-limit": "128Mi",
    }


# --------------------------------------------------------------------------- results

JSON_UTF8 = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/string", b"hello world", None),
        ("/object", b'{"it-s":"alive"}', JSON_UTF8),
        ("/array", b"[1,2]", JSON_UTF8),
        ("/null", b"null", JSON_UTF8),
        ("/undefined", b"", None),
        ("/number", b"42", None),
        ("/boolean", b"true", None),
        ("/buffer", b"\x00\xff", None),
        ("/promise", b'{"awaited":true}', JSON_UTF8),
        ("/return-stream", b"streamed body", None),
    ],
)
def test_return_values_map_as_kubeless_maps_them(
    kitchen: Runtime, path: str, body: bytes, content_type: str | None
) -> None:
    answer = call(kitchen, path)
    assert answer.status_code == 200
    assert answer.content == body
    assert answer.headers.get("content-type") == content_type


def test_status_and_headers_through_the_response(kitchen: Runtime) -> None:
    answer = call(kitchen, "/teapot")
    assert (answer.status_code, answer.text, answer.headers["x-kl"]) == (
        418,
        "short and stout",
        "yes",
    )


def test_a_response_the_function_sent_itself_is_left_alone(kitchen: Runtime) -> None:
    answer = call(kitchen, "/answered")
    assert answer.status_code == 201
    assert answer.json() == {"sent": True}
    assert answer.headers["content-type"] == JSON_UTF8


def test_express_type_and_append(kitchen: Runtime) -> None:
    answer = call(kitchen, "/typed")
    assert answer.headers["content-type"] == "text/plain; charset=utf-8"
    assert answer.headers.get_list("x-a") == ["1", "2"]


def test_module_state_persists_across_calls(kitchen: Runtime) -> None:
    first = call(kitchen, "/count").json()["count"]
    assert call(kitchen, "/count").json()["count"] == first + 1


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("path", "message"), [("/throw", "TypeError: bad thing"), ("/reject", "Error: async bad")]
)
def test_errors_answer_500_with_the_message_and_log_the_stack(
    kitchen: Runtime, path: str, message: str
) -> None:
    answer = call(kitchen, path)
    assert (answer.status_code, answer.text) == (500, message)
    assert answer.headers["access-control-allow-origin"] == "*"
    log = kitchen.wait_log(f"Function failed to execute: {message}")
    assert f"Function failed to execute: {message}\n    at " in log


def test_unserialisable_result_is_a_500(kitchen: Runtime) -> None:
    answer = call(kitchen, "/cycle")
    assert answer.status_code == 500
    assert answer.text.startswith("TypeError: Converting circular structure to JSON")


def test_error_after_the_response_started_cuts_the_connection(kitchen: Runtime) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        call(kitchen, "/throw-late")


def test_a_stray_promise_rejection_is_logged_and_the_instance_serves_on(
    kitchen: Runtime,
) -> None:
    assert call(kitchen, "/stray-rejection").text == "still here"
    assert "Unhandled promise rejection: Error: nobody listens" in kitchen.wait_log("nobody")
    assert call(kitchen, "/string").text == "hello world"


def test_body_over_req_mb_limit_is_refused(kitchen: Runtime) -> None:
    answer = call(kitchen, "/echo", method="POST", content=b"x" * (1024 * 1024 + 1))
    assert answer.status_code == 413
    assert answer.text == "request body larger than 1 MB (REQ_MB_LIMIT)"


# --------------------------------------------------------------------------- request, streams


def test_request_offers_what_express_gives(kitchen: Runtime) -> None:
    answer = call(
        kitchen,
        "/request?a=1&a=2&b=x",
        method="PUT",
        content=b'{"k": 1}',
        headers={
            "X-Custom": "yes",
            "Content-Type": "application/json",
            "X-Forwarded-For": "10.1.2.3, 127.0.0.1",
            "Host": "example.com:8080",
        },
    ).json()
    assert answer == {
        "method": "PUT",
        "url": "/request?a=1&a=2&b=x",
        "path": "/request",
        "query": {"a": ["1", "2"], "b": "x"},
        "get": "yes",
        "header": "yes",
        "is": "json",
        "isText": False,
        "ip": "10.1.2.3",
        "hostname": "example.com",
        "protocol": "http",
        "body": '{"k": 1}',
    }


def test_streaming_response_arrives_while_the_function_runs(kitchen: Runtime) -> None:
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", kitchen.url + "/stream") as answer,
    ):
        assert answer.headers["content-type"] == "text/event-stream"
        chunks = answer.iter_raw()
        assert next(chunks) == b"data: first\n\n"  # before the function has ended
        assert call(kitchen, "/release").text == "released"
        assert b"".join(chunks) == b"data: last\n\n"


def test_piping_into_the_response(kitchen: Runtime) -> None:
    answer = call(kitchen, "/pipe")
    assert answer.text == "hello world!"
    assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/pipe-and-return", b"slow stream"), ("/write-and-return", b"begun, ended later")],
)
def test_a_function_that_returned_but_still_writes_owns_the_response(
    kitchen: Runtime, path: str, body: bytes
) -> None:
    assert call(kitchen, path).content == body


def test_multipart_bodies_are_left_for_the_function_to_read(kitchen: Runtime) -> None:
    files = {"file": ("input.txt", b"hello world", "text/plain")}
    answer = call(kitchen, "/multipart", method="POST", data={"prop": "x"}, files=files).json()
    assert answer["data"] == {}
    assert answer["size"] > len(b"hello world")  # the raw multipart stream, unparsed


# --------------------------------------------------------------------------- routes


def test_cors_on_function_answers_only(kitchen: Runtime) -> None:
    assert call(kitchen, "/string").headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in call(kitchen, "/healthz").headers


def test_preflight_allows_what_is_asked_without_calling_the_function(kitchen: Runtime) -> None:
    before = call(kitchen, "/count").json()["count"]
    answer = call(
        kitchen,
        "/count",
        method="OPTIONS",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-token",
        },
    )
    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["access-control-allow-origin"] == "*"
    assert answer.headers["access-control-allow-methods"] == "PUT"
    assert answer.headers["access-control-allow-headers"] == "x-token"
    assert call(kitchen, "/count").json()["count"] == before + 1


def test_healthz(kitchen: Runtime) -> None:
    answer = call(kitchen, "/healthz")
    assert (answer.status_code, answer.text) == (200, "OK")


def test_metrics_count_calls_and_failures_per_http_method(serve: Serve) -> None:
    runtime = serve(KITCHEN, "route", module="kitchen")
    call(runtime, "/string")
    call(runtime, "/string", method="POST")
    call(runtime, "/throw", method="POST")

    answer = call(runtime, "/metrics")

    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {
        (s.name, s.labels["method"], s.labels.get("le")): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    assert samples[("function_calls_total", "GET", None)] == 1
    assert samples[("function_calls_total", "POST", None)] == 2  # plain methods, not hello-POST
    assert samples[("function_failures_total", "POST", None)] == 1
    assert samples[("function_failures_total", "GET", None)] == 0
    assert samples[("function_duration_seconds_count", "POST", None)] == 2
    assert samples[("function_duration_seconds_bucket", "POST", "+Inf")] == 2


# --------------------------------------------------------------------------- loading


def test_export_that_is_a_function_is_the_handler(serve: Serve) -> None:
    runtime = serve("module.exports = (event) => 'whole module';\n", "anything")
    assert call(runtime, "/").text == "whole module"


@pytest.mark.parametrize(
    ("code", "handler", "message"),
    [
        (
            "module.exports = { foo: () => 1, bar: 2 };\n",
            "nope",
            "TypeError: module hello has no function nope "
            "(handler hello.nope; it exports foo, bar)",
        ),
        (
            "module.exports = {\n foo: function() {\n   return 1 +;\n }\n};\n",
            "foo",
            "SyntaxError: Unexpected token ';' (hello.js:3)",
        ),
        ("require('not-installed');\n", "foo", "Error: Cannot find module 'not-installed'"),
        ("throw new RangeError('at load');\n", "foo", "RangeError: at load"),
    ],
)
def test_a_load_error_is_served_as_500_naming_it(
    serve: Serve, code: str, handler: str, message: str
) -> None:
    runtime = serve(code, handler)
    assert call(runtime, "/healthz").status_code == 200  # the process serves the reason
    answer = call(runtime, "/")
    assert (answer.status_code, answer.text) == (500, message)
    assert "funcmesh: function failed to load" in runtime.log()


def test_sigterm_lets_a_call_in_progress_finish(serve: Serve) -> None:
    runtime = serve(KITCHEN, "route", module="kitchen")
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", runtime.url + "/until-sigterm") as answer,
    ):
        chunks = answer.iter_raw()
        assert next(chunks) == b"data: first\n\n"
        runtime.process.send_signal(signal.SIGTERM)
        assert b"".join(chunks) == b"data: bye\n\n"
    assert runtime.process.wait(5) == 0
