"""Traces through a real ``funcmesh up``: a function that calls another by its cluster name
gives one trace with both calls' spans, the second a child of the first, without the handler
copying any header; an incoming ``traceparent`` keeps its trace id; ``funcmesh traces`` shows
them."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"

BACK = """\
def handler(event, context):
    return "back"
"""

FRONT = """\
import urllib.request

def handler(event, context):
    with urllib.request.urlopen("http://tback:8080/", timeout=10) as answer:
        return "front+" + answer.read().decode()
"""


def deploy(daemon: Daemon, tmp_path: Path, name: str, code: str) -> None:
    source = tmp_path / f"{name}.py"
    source.write_text(code)
    daemon.run(
        "function", "deploy", name, "--runtime", RUNTIME, "--handler", f"{name}.handler",
        "--from-file", str(source),
    )  # fmt: skip


@pytest.fixture(scope="module")
def functions(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    tmp_path = tmp_path_factory.mktemp("traces")
    deploy(daemon, tmp_path, "tback", BACK)
    deploy(daemon, tmp_path, "tfront", FRONT)
    yield
    for name in ("tfront", "tback"):
        daemon.run("function", "delete", name, check=False)


def traces_of(daemon: Daemon, function: str) -> list[dict[str, Any]]:
    listed = daemon.run("traces", "--function", function, "-o", "json").stdout
    document = json.loads(listed)
    return list(document["traces"] if isinstance(document, dict) else document)


def trace_with(daemon: Daemon, trace_id: str, spans: int) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        found = [t for t in traces_of(daemon, "tfront") if t["traceId"] == trace_id]
        if found and found[0]["spanCount"] >= spans:
            return found[0]
        assert time.monotonic() < deadline, traces_of(daemon, "tfront")
        time.sleep(0.1)


def test_a_call_to_another_function_is_one_trace_with_both_spans(
    daemon: Daemon, functions: None
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    response = httpx.get(
        f"{daemon.gateway_url}/function/tfront",
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
        timeout=30,
    )
    assert response.text == "front+back"
    trace = trace_with(daemon, trace_id, 2)
    spans = trace["spans"]
    assert len(spans) == 2, spans
    front, back = spans  # in the order they started
    assert "tfront.default" in front["name"]
    assert "tback.default" in back["name"]
    assert front["parentSpanId"] == parent  # the caller's span
    assert back["parentSpanId"] == front["spanId"]  # the front function's call is its parent
    assert {span["statusCode"] for span in spans} == {200}


def test_a_call_without_context_starts_a_trace(daemon: Daemon, functions: None) -> None:
    before = {t["traceId"] for t in traces_of(daemon, "tfront")}
    assert httpx.get(f"{daemon.gateway_url}/function/tfront", timeout=30).text == "front+back"
    deadline = time.monotonic() + 10
    while not (new := [t for t in traces_of(daemon, "tfront") if t["traceId"] not in before]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    trace = trace_with(daemon, new[0]["traceId"], 2)
    front, back = trace["spans"]
    assert front["parentSpanId"] is None
    assert back["parentSpanId"] == front["spanId"]
    tree = daemon.run("traces", new[0]["traceId"]).stdout
    assert "tfront" in tree
    assert "tback" in tree
