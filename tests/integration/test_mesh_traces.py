"""The mesh's traces through the API server (real TLS on loopback), the client and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from funcmesh.api.pki import ServingIdentity, ensure_pki
from funcmesh.cli.main import cli
from funcmesh.client.api import TRACES_PATH
from funcmesh.errors import NotFound, Unauthorized
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.mesh.tracing import Span, Tracer
from tests.integration.api_server import RunningApi, start_api

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
EXTERNAL_PARENT = "00f067aa0ba902b7"
START_NS = 1_764_229_801_123_000_000  # 2025-11-27T07:50:01.123Z


class Clock:
    def __init__(self) -> None:
        self.now_ns = START_NS

    def __call__(self) -> int:
        self.now_ns += 1_000_000
        return self.now_ns


def call(service: str, *, status: int = 200, namespace: str = "default") -> RequestRecord:
    return RequestRecord(
        method=b"GET",
        path=f"/function/{service}".encode(),
        authority=f"{service}.{namespace}:8080".encode(),
        destination_service=f"{service}.{namespace}.svc.cluster.local",
        destination_service_name=service,
        destination_service_namespace=namespace,
        destination_workload=service,
        upstream_cluster=f"outbound|8080||{service}.{namespace}.svc.cluster.local",
        response_code=status,
        response_flags="-" if status < 500 else "UF",
        duration_s=0.0125,
    )


def child_headers(parent: Span) -> list[tuple[bytes, bytes]]:
    return [(b"traceparent", f"00-{parent.trace_id.hex()}-{parent.span_id.hex()}-01".encode())]


def fill(store: TraceStore) -> dict[str, Span]:
    """Three traces: hello -> world -> db (from a caller outside the mesh), lone, other-ns."""
    tracer = Tracer(store, clock_ns=Clock())
    hello = tracer.start([(b"traceparent", f"00-{TRACE}-{EXTERNAL_PARENT}-01".encode())])
    world = tracer.start(child_headers(hello))
    db = tracer.start(child_headers(world))
    tracer.finish_call(db, call("db", status=503))
    tracer.finish_call(world, call("world"))
    tracer.finish_call(hello, call("hello"))
    lone = tracer.start([])
    tracer.finish_call(lone, call("lone"))
    prod = tracer.start([])
    tracer.finish_call(prod, call("hello", namespace="prod"))
    return {"hello": hello, "world": world, "db": db, "lone": lone, "prod": prod}


@dataclasses.dataclass
class Served(RunningApi):
    spans: dict[str, Span] = dataclasses.field(default_factory=dict)

    def cli(self, *args: str) -> tuple[int, str, str]:
        env = {"KUBECONFIG": None, "FUNCMESH_HOME": None}
        result = CliRunner(env=env).invoke(
            cli, ["traces", "--kubeconfig", str(self.kubeconfig), *args]
        )
        return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> ServingIdentity:
    return ensure_pki(tmp_path_factory.mktemp("pki"), hosts=["127.0.0.1"])


async def serve(tmp_path: Path, identity: ServingIdentity, traces: TraceStore | None) -> Served:
    api = await start_api(tmp_path, identity, traces=traces)
    return Served(**vars(api), spans=fill(traces) if traces is not None else {})


@pytest.fixture
async def served(tmp_path: Path, identity: ServingIdentity) -> AsyncIterator[Served]:
    served = await serve(tmp_path, identity, TraceStore())
    try:
        yield served
    finally:
        await served.close()


def read(served: Served, **query: Any) -> list[dict[str, Any]]:
    with served.client() as client:
        return list(client.traces(**query))


async def test_the_client_lists_traces_newest_first_with_their_spans(served: Served) -> None:
    traces = await asyncio.to_thread(read, served)
    assert [t["spans"][0]["attributes"]["funcmesh.service"] for t in traces] == [
        "hello.prod.svc.cluster.local",
        "lone.default.svc.cluster.local",
        "hello.default.svc.cluster.local",
    ]
    chain = traces[2]
    hello, world, db = (served.spans[name] for name in ("hello", "world", "db"))
    assert chain["traceId"] == TRACE
    assert chain["spanCount"] == 3
    assert chain["startTimeUnixNano"] == str(hello.start_ns)
    assert [(s["spanId"], s["parentSpanId"]) for s in chain["spans"]] == [
        (hello.span_id.hex(), EXTERNAL_PARENT),
        (world.span_id.hex(), hello.span_id.hex()),
        (db.span_id.hex(), world.span_id.hex()),
    ]
    first = chain["spans"][0]
    assert first["name"] == "hello.default.svc.cluster.local:8080/*"
    assert (first["kind"], first["statusCode"], first["durationMs"]) == ("server", 200, 12.5)
    assert first["attributes"]["http.request.method"] == "GET"


async def test_traces_are_found_by_function_service_and_namespace(served: Served) -> None:
    def ids(**query: Any) -> list[str]:
        return [t["traceId"] for t in read(served, **query)]

    hello = await asyncio.to_thread(ids, function="db")
    assert hello == [TRACE]
    both = await asyncio.to_thread(ids, function="hello")
    assert both == [served.spans["prod"].trace_id.hex(), TRACE]
    prod = await asyncio.to_thread(ids, service="hello", namespace="prod")
    assert prod == [served.spans["prod"].trace_id.hex()]
    newest = await asyncio.to_thread(ids, limit=1)
    assert newest == [served.spans["prod"].trace_id.hex()]
    assert await asyncio.to_thread(ids, function="nobody") == []


async def test_one_trace_by_id(served: Served) -> None:
    def get(trace_id: str) -> dict[str, Any]:
        with served.client() as client:
            return client.trace(trace_id)

    trace = await asyncio.to_thread(get, TRACE.upper())
    assert trace["traceId"] == TRACE
    assert trace["spanCount"] == 3
    with pytest.raises(NotFound, match=f'trace "{"0" * 31}1" not found'):
        await asyncio.to_thread(get, "0" * 31 + "1")


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        (TRACES_PATH, {"limit": "many"}, 'limit must be a whole number from 1 to 1000, got "many"'),
        (TRACES_PATH, {"limit": "0"}, 'limit must be a whole number from 1 to 1000, got "0"'),
        (TRACES_PATH + "/xyz", {}, 'a trace id is 32 hexadecimal digits, got "xyz"'),
    ],
)
async def test_bad_queries_are_clear_errors(
    served: Served, path: str, params: dict[str, str], message: str
) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    verify = ssl.create_default_context(cadata=served.identity.ca_pem)
    async with httpx.AsyncClient(base_url=served.url, headers=headers, verify=verify) as client:
        response = await client.get(path, params=params)
    assert response.status_code == 400
    assert response.json()["message"] == message


async def test_traces_need_the_token(served: Served) -> None:
    def read_without_the_token() -> None:
        with served.client(token="wrong") as client:
            client.traces()

    with pytest.raises(Unauthorized):
        await asyncio.to_thread(read_without_the_token)


async def test_a_server_without_traces_says_so(tmp_path: Path, identity: ServingIdentity) -> None:
    served = await serve(tmp_path, identity, None)
    try:
        with pytest.raises(NotFound, match="tracing is not enabled on this server"):
            await asyncio.to_thread(read, served)
        code, _, stderr = await asyncio.to_thread(served.cli)
        assert code == 1
        assert stderr == "error: tracing is not enabled on this server\n"
    finally:
        await served.close()


async def test_the_cli_prints_each_trace_as_a_tree(served: Served) -> None:
    code, text, _ = await asyncio.to_thread(served.cli, "--function", "world")
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"TRACE {TRACE}   2025-11-27T07:50:01.124Z   14.5 ms   3 spans"
    assert lines[1].split() == ["SPAN", "REQUEST", "STATUS", "DURATION", "FLAGS"]
    rows = lines[2:]
    assert [row.split() for row in rows] == [
        ["hello.default.svc.cluster.local:8080/*", "GET", "/function/hello", "200", "12.5", "ms",
         "-"],
        ["world.default.svc.cluster.local:8080/*", "GET", "/function/world", "200", "12.5", "ms",
         "-"],
        ["db.default.svc.cluster.local:8080/*", "GET", "/function/db", "503", "12.5", "ms", "UF"],
    ]  # fmt: skip
    indents = [len(row) - len(row.lstrip()) for row in rows]
    assert indents == [0, 2, 4]  # a callee under its caller


async def test_the_cli_looks_in_the_namespace_unless_all(served: Served) -> None:
    _, default, _ = await asyncio.to_thread(served.cli, "--function", "hello")
    _, prod, _ = await asyncio.to_thread(served.cli, "--function", "hello", "-n", "prod")
    _, everywhere, _ = await asyncio.to_thread(served.cli, "--function", "hello", "-A")
    headings = [line for line in default.splitlines() if line.startswith("TRACE")]
    assert [line.split()[1] for line in headings] == [TRACE]
    assert f"TRACE {served.spans['prod'].trace_id.hex()}" in prod
    assert TRACE not in prod
    assert everywhere.count("TRACE ") == 2


async def test_the_cli_shows_one_trace_or_json(served: Served) -> None:
    code, text, _ = await asyncio.to_thread(served.cli, TRACE)
    assert code == 0
    assert text.startswith(f"TRACE {TRACE} ")
    code, text, _ = await asyncio.to_thread(served.cli, "-o", "json", "--limit", "2")
    assert code == 0
    assert [t["spanCount"] for t in json.loads(text)["traces"]] == [1, 1]
    code, _, stderr = await asyncio.to_thread(served.cli, "--function", "nobody")
    assert (code, stderr) == (0, "No traces found.\n")
    code, _, stderr = await asyncio.to_thread(served.cli, "f" * 32)
    assert code == 1
    assert stderr.startswith(f'error: trace "{"f" * 32}" not found')
