"""The runtime shims carry the trace context of the call they serve into the HTTP requests the
handler makes (so a function calling another by name makes one trace), with a real Python worker
and a real ``node`` serving handlers that call a local HTTP server, which reports the trace
headers it received."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

import funcmesh.runtime
from funcmesh.runtime.node_processes import SHIM_PATH
from funcmesh.runtime.workers import SpawnRequest
from funcmesh.runtime.zygote import Zygote

SHIMS = Path(funcmesh.runtime.__file__).parent / "shims"
NODE = shutil.which("node")
PYTHON_3_8 = sorted(Path.home().glob(".pyenv/versions/3.8.*/bin/python3.8"))
START_TIMEOUT_S = 10.0
TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OWN = "00-11111111111111111111111111111111-2222222222222222-01"

PYTHON_HANDLER = """
import http.client, json, threading, time, urllib.parse, urllib.request

def call(event, context):
    how, url = event["data"]["how"], event["data"]["url"]
    if how == "urllib":
        with urllib.request.urlopen(url) as answer:
            return answer.read().decode()
    if how == "http.client":
        parts = urllib.parse.urlsplit(url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port)
        connection.request("GET", parts.path, headers={"X-Other": "1"})
        return connection.getresponse().read().decode()
    if how == "own":
        request = urllib.request.Request(url, headers={"traceparent": "OWN_TRACEPARENT"})
        with urllib.request.urlopen(request) as answer:
            return answer.read().decode()
    if how == "requests":
        import requests
        return requests.get(url).text
    if how == "slow":
        time.sleep(0.2)
        with urllib.request.urlopen(url) as answer:
            return answer.read().decode()
    if how == "thread":
        seen = []
        thread = threading.Thread(target=lambda: seen.append(urllib.request.urlopen(url).read()))
        thread.start()
        thread.join()
        return seen[0].decode()
""".replace("OWN_TRACEPARENT", OWN)

NODE_HANDLER = """
const http = require('http');
const { request: bareRequest } = require('http');

function read(res, resolve) {
  let body = '';
  res.on('data', (chunk) => { body += chunk; });
  res.on('end', () => resolve(body));
}

module.exports.call = (event) => new Promise((resolve, reject) => {
  const { how, url } = event.data;
  const { hostname, port, pathname } = new URL(url);
  if (how === 'get') http.get(url, (res) => read(res, resolve)).on('error', reject);
  else if (how === 'url-options') {
    http.get(new URL(url), { headers: { 'x-other': '1' } }, (res) => read(res, resolve));
  } else if (how === 'options') {
    const req = bareRequest({ hostname, port, path: pathname, headers: { 'X-Other': '1' } },
      (res) => read(res, resolve));
    req.end();
  } else if (how === 'own') {
    http.get(url, { headers: { TraceParent: 'OWN_TRACEPARENT' } }, (res) => read(res, resolve));
  } else if (how === 'later') {
    setTimeout(() => http.get(url, (res) => read(res, resolve)), 50);
  } else if (how === 'fetch') {
    fetch(url, { headers: { 'x-other': '1' } }).then((res) => res.text()).then(resolve, reject);
  } else if (how === 'fetch-own') {
    const own = { headers: { traceparent: 'OWN_TRACEPARENT' } };
    fetch(url, own).then((res) => res.text()).then(resolve);
  }
});
""".replace("OWN_TRACEPARENT", OWN)


class Upstream(http.server.ThreadingHTTPServer):
    """Answers every GET with the trace headers it received, as JSON."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Reporter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/seen"


class _Reporter(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        seen = {name: self.headers[name] for name in TRACE_HEADERS if name in self.headers}
        body = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def free_port() -> int:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


@dataclass
class Function:
    """One runtime process (a Kubeless runtime container's way) serving ``call``."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def call(self, how: str, upstream: Upstream, **headers: str) -> dict[str, str]:
        response = httpx.post(
            self.url, json={"how": how, "url": upstream.url}, headers=headers, timeout=10
        )
        assert response.status_code == 200, response.text
        seen: dict[str, str] = json.loads(response.text)
        return seen

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(5)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def start(command: list[str], directory: Path, module: str) -> Function:
    port = free_port()
    log_path = directory / f"{module}.log"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "MOD_NAME": module,
        "FUNC_HANDLER": "call",
        "FUNC_PORT": str(port),
        "KUBELESS_INSTALL_VOLUME": str(directory),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    function = Function(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited {process.returncode}: {log_path.read_text()}")
        try:
            if httpx.get(f"{function.url}/healthz", timeout=1).status_code == 200:
                return function
        except httpx.TransportError:
            time.sleep(0.02)
    function.stop()
    raise AssertionError(f"did not serve in {START_TIMEOUT_S}s: {log_path.read_text()}")


@pytest.fixture(scope="module")
def python_function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Function]:
    directory = tmp_path_factory.mktemp("python-function")
    (directory / "tracing_handler.py").write_text(PYTHON_HANDLER)
    worker = str(SHIMS / "_funcmesh_worker.py")
    function = start([sys.executable, worker], directory, "tracing_handler")
    yield function
    function.stop()


@pytest.fixture(scope="module")
def node_function(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Function]:
    if NODE is None:
        pytest.skip("needs node")
    directory = tmp_path_factory.mktemp("node-function")
    (directory / "tracing_handler.js").write_text(NODE_HANDLER)
    function = start([NODE, str(SHIM_PATH)], directory, "tracing_handler")
    yield function
    function.stop()


INCOMING = {
    "traceparent": TRACEPARENT,
    "tracestate": "congo=t61rcWkgMzE",
    "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
    "x-b3-spanid": "00f067aa0ba902b7",
    "x-b3-sampled": "1",
}
PYTHON_WAYS = ["urllib", "http.client"]
if importlib.util.find_spec("requests") is not None:
    PYTHON_WAYS.append("requests")


@pytest.mark.parametrize("how", PYTHON_WAYS)
def test_a_python_handler_passes_its_calls_trace_context_on(
    python_function: Function, upstream: Upstream, how: str
) -> None:
    assert python_function.call(how, upstream, **INCOMING) == INCOMING
    assert python_function.call(how, upstream, traceparent=TRACEPARENT) == {
        "traceparent": TRACEPARENT
    }


@pytest.mark.skipif(not PYTHON_3_8, reason="needs a Python 3.8 (pyenv)")
def test_the_oldest_python_passes_the_context_on(tmp_path: Path, upstream: Upstream) -> None:
    (tmp_path / "tracing_handler.py").write_text(PYTHON_HANDLER)
    worker = str(SHIMS / "_funcmesh_worker.py")
    function = start([str(PYTHON_3_8[-1]), worker], tmp_path, "tracing_handler")
    try:
        assert function.call("http.client", upstream, **INCOMING) == INCOMING
        assert function.call("own", upstream, **INCOMING) == {"traceparent": OWN}
    finally:
        function.stop()


def test_a_python_call_without_context_adds_none(
    python_function: Function, upstream: Upstream
) -> None:
    assert python_function.call("urllib", upstream) == {}


def test_a_python_handler_that_sets_its_own_traceparent_keeps_it(
    python_function: Function, upstream: Upstream
) -> None:
    assert python_function.call("own", upstream, **INCOMING) == {"traceparent": OWN}


def test_concurrent_python_calls_keep_their_own_context(
    python_function: Function, upstream: Upstream
) -> None:
    parents = [f"00-{'%032x' % (n + 1)}-{'%016x' % (n + 1)}-01" for n in range(4)]

    def call(parent: str) -> dict[str, str]:
        return python_function.call("slow", upstream, traceparent=parent)

    with ThreadPoolExecutor(len(parents)) as pool:
        seen = list(pool.map(call, parents))
    assert [s["traceparent"] for s in seen] == parents


def test_a_thread_the_python_handler_starts_carries_the_context(
    python_function: Function, upstream: Upstream
) -> None:
    """Thread.start takes it along (test_trace_clients.py: pools, httpx, aiohttp)."""
    assert python_function.call("thread", upstream, traceparent=TRACEPARENT) == {
        "traceparent": TRACEPARENT
    }


@pytest.mark.parametrize("how", ["get", "url-options", "options", "later", "fetch"])
def test_a_node_handler_passes_its_calls_trace_context_on(
    node_function: Function, upstream: Upstream, how: str
) -> None:
    assert node_function.call(how, upstream, **INCOMING) == INCOMING


@pytest.mark.parametrize("how", ["own", "fetch-own"])
def test_a_node_handler_that_sets_its_own_traceparent_keeps_it(
    node_function: Function, upstream: Upstream, how: str
) -> None:
    assert node_function.call(how, upstream, **INCOMING) == {"traceparent": OWN}


def test_a_node_call_without_context_adds_none(node_function: Function, upstream: Upstream) -> None:
    assert node_function.call("get", upstream) == {}
    assert node_function.call("fetch", upstream) == {}


def test_concurrent_node_calls_keep_their_own_context(
    node_function: Function, upstream: Upstream
) -> None:
    parents = [f"00-{'%032x' % (n + 1)}-{'%016x' % (n + 1)}-01" for n in range(4)]
    with ThreadPoolExecutor(len(parents)) as pool:
        seen = list(
            pool.map(lambda p: node_function.call("later", upstream, traceparent=p), parents)
        )
    assert [s["traceparent"] for s in seen] == parents


async def test_a_worker_forked_by_the_zygote_passes_the_context_on(
    tmp_path: Path, upstream: Upstream
) -> None:
    """The daemon's way: the zygote loads the handler in a forked worker."""
    (tmp_path / "tracing_handler.py").write_text(PYTHON_HANDLER)
    zygote = await Zygote.start(sys.executable)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    log_read_fd, log_write_fd = os.pipe()
    request = SpawnRequest(
        pod_name="tracing-1",
        module="tracing_handler",
        function="call",
        function_name="tracing",
        code_dir=str(tmp_path),
        sys_paths=(),
        env={},
        timeout_s=10,
        runtime="python3.11",
        memory_limit="0",
    )
    try:
        worker = await zygote.spawn(request, listen_socket=listener, log_fd=log_write_fd)
        try:
            url = "http://{}:{}/".format(*listener.getsockname())
            async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
                response = await client.post(
                    url, json={"how": "urllib", "url": upstream.url}, headers=INCOMING
                )
            assert response.json() == INCOMING
        finally:
            worker.kill()
    finally:
        os.close(log_write_fd)
        os.close(log_read_fd)
        listener.close()
        await zygote.close()
