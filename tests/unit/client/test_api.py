from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest

from funcmesh.client.api import ApiClient
from funcmesh.client.paths import collection_path, object_path
from funcmesh.client.status import ResourceExpired
from funcmesh.errors import Invalid, NotFound, Unavailable
from funcmesh.model.kinds import FUNCTION, NAMESPACE, POD

Handler = Callable[[httpx.Request], httpx.Response]


def client_for(handler: Handler) -> ApiClient:
    return ApiClient(
        server="https://127.0.0.1:6443", token="t0ken", transport=httpx.MockTransport(handler)
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (collection_path(FUNCTION, "dev"), "/apis/kubeless.io/v1beta1/namespaces/dev/functions"),
        (
            collection_path(FUNCTION, "dev", all_namespaces=True),
            "/apis/kubeless.io/v1beta1/functions",
        ),
        (collection_path(NAMESPACE, "dev"), "/api/v1/namespaces"),
        (object_path(NAMESPACE, "", "dev"), "/api/v1/namespaces/dev"),
        (object_path(POD, "default", "a/b"), "/api/v1/namespaces/default/pods/a%2Fb"),
    ],
)
def test_paths_follow_kubernetes_conventions(path: str, expected: str) -> None:
    assert path == expected


def test_get_sends_the_token_and_returns_the_object() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"kind": "Function", "metadata": {"name": "hello"}})

    with client_for(handler) as client:
        obj = client.get(FUNCTION, "default", "hello")
    assert obj["metadata"]["name"] == "hello"
    assert seen[0].url.path == "/apis/kubeless.io/v1beta1/namespaces/default/functions/hello"
    assert seen[0].headers["Authorization"] == "Bearer t0ken"


def test_error_answer_raises_the_mapped_exception() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {
            "kind": "Status",
            "code": 404,
            "reason": "NotFound",
            "message": 'functions.kubeless.io "x" not found',
        }
        return httpx.Response(404, json=body)

    with client_for(handler) as client, pytest.raises(NotFound, match='"x" not found'):
        client.get(FUNCTION, "default", "x")


def test_list_passes_the_selector_and_keeps_the_resource_version() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["labelSelector"] == "app=web"
        return httpx.Response(
            200,
            json={"items": [{"metadata": {"name": "a"}}], "metadata": {"resourceVersion": "42"}},
        )

    with client_for(handler) as client:
        listing = client.list(FUNCTION, "default", selector="app=web")
    assert [item["metadata"]["name"] for item in listing.items] == ["a"]
    assert listing.resource_version == "42"


def test_table_asks_for_a_table_and_parses_it() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert "as=Table" in request.headers["Accept"]
        return httpx.Response(
            200,
            json={
                "kind": "Table",
                "columnDefinitions": [
                    {"name": "Name", "priority": 0},
                    {"name": "Memory", "priority": 1},
                ],
                "rows": [{"cells": ["hello", "128Mi"], "object": {"metadata": {"name": "hello"}}}],
            },
        )

    with client_for(handler) as client:
        table = client.table(FUNCTION, "default")
    assert [(c.name, c.priority) for c in table.columns] == [("Name", 0), ("Memory", 1)]
    assert table.rows[0].cells == ("hello", "128Mi")


def test_merge_patch_uses_the_merge_patch_content_type() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "PATCH"
        assert request.headers["Content-Type"] == "application/merge-patch+json"
        assert json.loads(request.content) == {"spec": {"timeout": "30"}}
        return httpx.Response(200, json={"metadata": {"generation": 2}})

    with client_for(handler) as client:
        answer = client.merge_patch(FUNCTION, "default", "hello", {"spec": {"timeout": "30"}})
    assert answer["metadata"]["generation"] == 2


def test_watch_yields_events_and_raises_error_events() -> None:
    lines = [
        {"type": "ADDED", "object": {"metadata": {"name": "a"}}},
        {
            "type": "ERROR",
            "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
        },
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["watch"] == "true"
        assert request.url.params["resourceVersion"] == "7"
        return httpx.Response(200, content="\n".join(json.dumps(line) for line in lines).encode())

    with client_for(handler) as client:
        events = client.watch(FUNCTION, "default", resource_version="7")
        assert next(events).object["metadata"]["name"] == "a"
        with pytest.raises(ResourceExpired, match="too old"):
            next(events)


def test_proxy_returns_error_answers_as_they_are() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert (
            request.url.raw_path
            == b"/api/v1/namespaces/default/services/hello:http-function-port/proxy/x?a=1"
        )
        assert request.headers["event-namespace"] == "cli.kubeless.io"
        return httpx.Response(504, json={"error": "timeout"})

    with client_for(handler) as client:
        answer = client.proxy(
            "default",
            "hello",
            method="POST",
            path="/x?a=1",
            body=b"{}",
            headers={"event-namespace": "cli.kubeless.io"},
        )
    assert (answer.status, answer.ok, json.loads(answer.body)) == (504, False, {"error": "timeout"})


def test_function_log_streams_lines_of_the_build_log() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.endswith("/functions/hello/log")
        assert dict(request.url.params) == {
            "follow": "false",
            "tailLines": "5",
            "container": "build",
        }
        return httpx.Response(200, content=b"Collecting six\nInstalled six\n")

    with client_for(handler) as client:
        lines = list(client.function_log("default", "hello", tail_lines=5, build=True))
    assert lines == ["Collecting six", "Installed six"]


def test_server_url_must_be_a_url() -> None:
    with pytest.raises(Invalid, match="must be a URL"):
        ApiClient(server="127.0.0.1:6443")


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_connection_refused_says_to_start_the_daemon(closed_port: int) -> None:
    server = f"https://127.0.0.1:{closed_port}"
    with ApiClient(server=server) as client, pytest.raises(Unavailable) as caught:
        client.get(FUNCTION, "default", "hello")
    assert str(caught.value) == (
        f"cannot reach the funcmesh API at {server} (connection refused): is funcmesh up running?"
    )


@pytest.fixture
def plain_http_server() -> Iterator[int]:
    """A server that answers plain HTTP to whatever it receives (a TLS client hello, here)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve)
    thread.start()
    yield int(listener.getsockname()[1])
    thread.join(timeout=5)
    listener.close()


def test_tls_failure_is_explained(plain_http_server: int) -> None:
    client = ApiClient(server=f"https://127.0.0.1:{plain_http_server}")
    with (
        client,
        pytest.raises(Unavailable, match="TLS handshake with the funcmesh API at .* failed"),
    ):
        client.get(FUNCTION, "default", "hello")
