"""Instances present their mesh identity, through a real ``funcmesh up``: Python and Node.js
functions call another function's Service by name over mTLS with the certificate of their
service account (no code of theirs knows), so STRICT mTLS and AuthorizationPolicies on
principals work for them; a plain workload's Service still answers them in plaintext; a
workload gets Istio's certificate files and curl uses them.

One daemon for the module: the function ``target`` is STRICT for the whole module; the callers
``pycaller`` (urllib), ``pythreads`` (from a thread, with urllib or requests), ``nodecaller``
(http.get) and ``nodefetch`` (fetch()) run as the service account ``caller``, ``pydefault`` as
``default``. Each caller calls the URL it is given and answers "STATUS BODY"; ``pythreads``
also carries the trace context of its call into its thread."""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Daemon, api_client, work_dir_for

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
SYSTEM_PYTHON = "/usr/bin/python3"  # workloads of a root daemon run as nobody: not the venv's
CALLER = "cluster.local/ns/default/sa/caller"
TARGET_HOST = "target.default.svc.cluster.local"
DEADLINE_S = 30.0
WEB_PORT = 8081

TARGET = """\
def handler(event, context):
    return "target " + event["extensions"]["request"].path
"""
PYTHON_CALLER = """\
import urllib.error
import urllib.request


def handler(event, context):
    try:
        with urllib.request.urlopen(event["data"]["url"], timeout=10) as answer:
            return f"{answer.status} {answer.read().decode()}"
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()}"
    except OSError as error:
        return f"failed: {error}"
"""
PYTHON_THREADS = """\
import threading
import urllib.error
import urllib.request


def with_urllib(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return f"{answer.status} {answer.read().decode()}"
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()}"


def with_requests(url):
    import requests  # when the runtime's interpreter has it: no requirements.txt here

    answer = requests.get(url, timeout=10)
    return f"{answer.status_code} {answer.text}"


def handler(event, context):
    url = event["data"]["url"]
    if event["data"]["how"] == "thread":
        seen = []
        thread = threading.Thread(target=lambda: seen.append(with_urllib(url)))
        thread.start()
        thread.join()
        return seen[0]
    try:  # when the runtime's interpreter has requests (no requirements.txt here)
        import requests  # noqa: F401
        from concurrent.futures import ThreadPoolExecutor
    except ImportError:
        return "no requests"
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(with_requests, url).result()
"""
NODE_FETCH_CALLER = """\
module.exports = {
  handler: async (event) => {
    try {
      const answer = await fetch(event.data.url);
      return `${answer.status} ${await answer.text()}`;
    } catch (error) {
      return `failed: ${error.message}: ${error.cause && error.cause.message}`;
    }
  },
};
"""
NODE_CALLER = """\
const http = require('http');

module.exports = {
  handler: (event) => new Promise((resolve) => {
    http.get(event.data.url, (answer) => {
      let body = '';
      answer.on('data', (chunk) => { body += chunk; });
      answer.on('end', () => resolve(`${answer.statusCode} ${body}`));
    }).on('error', (error) => resolve(`failed: ${error.message}`));
  }),
};
"""
FUNCTION = """\
apiVersion: kubeless.io/v1beta1
kind: Function
metadata:
  name: {name}
  labels:
    app: {name}
spec:
  runtime: {runtime}
  handler: {module}.handler
  function-content-type: text
  function: {code}
  deployment:
    spec:
      template:
        spec:
          serviceAccountName: {account}
"""
STRICT_TARGET = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: target
spec:
  selector:
    matchLabels:
      function: target
  mtls:
    mode: STRICT
"""
ALLOW_CALLER = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: callers-only
spec:
  selector:
    matchLabels:
      app: target
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/caller"]
"""
WEB_SERVER = """\
import http.server, os
class Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("web " + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Web).serve_forever()
"""
CURL_WORKLOAD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: curler
spec:
  selector:
    matchLabels:
      app: curler
  template:
    metadata:
      labels:
        app: curler
    spec:
      serviceAccountName: caller
      containers:
      - name: curler
        command: ["sh", "-c", {script}]
"""
# No $(...): funcmesh expands $(VAR) in commands as Kubernetes does.
CURL_SCRIPT = """\
cd "$FUNCMESH_MESH_CERTS_DIR" && ls
curl -sS --resolve {host}:8080:{vip} --cacert root-cert.pem --cert cert-chain.pem --key key.pem \
  https://{host}:8080/from-curl
echo
curl -sS --resolve {host}:8080:{vip} --cacert root-cert.pem https://{host}:8080/no-cert \
  || echo "refused without a certificate"
echo done
exec sleep 3600
"""

EXEC_CURL_SCRIPT = """\
cd "$FUNCMESH_MESH_CERTS_DIR" && ls
curl -sS --resolve {host}:8080:{vip} --cacert root-cert.pem --cert cert-chain.pem --key key.pem \
  https://{host}:8080/from-exec
"""

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def apply(daemon: Daemon, directory: Path, text: str) -> None:
    path = directory / f"objects-{random.randrange(1 << 30)}.yaml"
    path.write_text(text)
    daemon.run("apply", "-f", str(path))


def get_json(daemon: Daemon, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(daemon.run("get", *args, "-o", "json").stdout)
    return document


def node_runtime(daemon: Daemon) -> str:
    config = daemon.run("get-server-config").stdout.splitlines()[1]
    [node] = [r for r in config.split(": ", 1)[1].split(", ") if r.startswith("nodejs")]
    return node


def deploy(
    daemon: Daemon, directory: Path, name: str, code: str, *, runtime: str, account: str
) -> None:
    """A Function running as the service account ``account``, applied as YAML."""
    text = FUNCTION.format(
        name=name, runtime=runtime, module=name, code=json.dumps(code), account=account
    )
    apply(daemon, directory, text)


def ask(
    daemon: Daemon, caller: str, url: str, *, headers: dict[str, str] | None = None, **data: str
) -> str:
    """What the function ``caller`` got from ``url`` ("STATUS BODY" or "failed: ...")."""
    answer = httpx.post(
        f"{daemon.gateway_url}/function/{caller}",
        json={"url": url, **data},
        headers=headers,
        timeout=30,
    )
    return answer.text if answer.status_code == 200 else f"caller answered {answer.status_code}"


def trace_spans(daemon: Daemon, function: str, trace_id: str, count: int) -> list[dict[str, Any]]:
    """The spans of trace ``trace_id`` that involves ``function``, once there are ``count``."""

    def spans() -> list[dict[str, Any]] | None:
        listed = json.loads(daemon.run("traces", "--function", function, "-o", "json").stdout)
        traces = listed["traces"] if isinstance(listed, dict) else listed
        found = [t for t in traces if t["traceId"] == trace_id and t["spanCount"] >= count]
        return list(found[0]["spans"]) if found else None

    return list(wait_for(spans, f"{count} spans of trace {trace_id}", timeout_s=10))


def runtime_has_requests() -> bool:
    """Whether the runtime's interpreter (the daemon's own, as the catalog finds it) can
    import requests, as its zygote runs it."""
    runtime = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    probe = subprocess.run([runtime, "-s", "-c", "import requests"], capture_output=True)
    return probe.returncode == 0


def plain_call(address: tuple[str, int]) -> str:
    """A plaintext request from the test itself: the answer's status line, or "reset"."""
    try:
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: target\r\nConnection: close\r\n\r\n")
            data = sock.recv(65536)
    except OSError:
        return "reset"
    return data.split(b"\r\n", 1)[0].decode() if data else "reset"


@pytest.fixture(scope="module")
def target(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The function every caller calls, STRICT for the whole module; its ClusterIP. The
    callers are deployed here too, all at once (each takes its time to build)."""
    directory = tmp_path_factory.mktemp("functions")
    deploy(daemon, directory, "target", TARGET, runtime=RUNTIME, account="default")
    deploy(daemon, directory, "pycaller", PYTHON_CALLER, runtime=RUNTIME, account="caller")
    deploy(daemon, directory, "pydefault", PYTHON_CALLER, runtime=RUNTIME, account="default")
    deploy(daemon, directory, "pythreads", PYTHON_THREADS, runtime=RUNTIME, account="caller")
    if shutil.which("node") is not None:
        node = node_runtime(daemon)
        deploy(daemon, directory, "nodecaller", NODE_CALLER, runtime=node, account="caller")
        deploy(daemon, directory, "nodefetch", NODE_FETCH_CALLER, runtime=node, account="caller")
    apply(daemon, directory, STRICT_TARGET)
    vip = str(get_json(daemon, "service", "target")["spec"]["clusterIP"])
    wait_for(lambda: plain_call((vip, 8080)) == "reset", "STRICT at the target's VIP")
    return vip


def test_a_python_function_calls_a_strict_service_with_its_identity(
    daemon: Daemon, target: str
) -> None:
    by_name = wait_for(
        lambda: (text := ask(daemon, "pycaller", "http://target:8080/from-python")).startswith(
            "200"
        )
        and text,
        "pycaller's call",
    )
    by_address = ask(daemon, "pycaller", f"http://{target}:8080/by-address")

    assert by_name == "200 target /from-python"
    assert by_address == "200 target /by-address"  # no SNI: checked against the mesh CA only
    assert plain_call((target, 8080)) == "reset"  # the same VIP, in plaintext
    lines = daemon.run("mesh", "logs", "--tail", "50").stdout.splitlines()
    [logged] = [line for line in lines if '"GET /from-python HTTP/1.1" 200' in line]
    assert TARGET_HOST in logged  # the SNI it sent: REQUESTED_SERVER_NAME
    with api_client(daemon) as api:
        metrics = api.get("/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_requests_total{")
        and f'source_principal="spiffe://{CALLER}"' in line
        and f'destination_service="{TARGET_HOST}"' in line
        and 'connection_security_policy="mutual_tls"' in line
        # its call left from its pod IP: the mesh knows the calling workload
        and 'source_workload="pycaller"' in line
        and 'source_workload_namespace="default"' in line
    ]
    assert counted, metrics
    pods = get_json(daemon, "pods", "-l", "function=pycaller")["items"]
    assert {pod["spec"]["serviceAccountName"] for pod in pods} == {"caller"}


@needs_node
@pytest.mark.parametrize(
    ("caller", "url", "by_address_path"),
    [
        ("nodecaller", "http://target.default:8080/from-node", "/node-by-address"),  # http
        ("nodefetch", "http://target:8080/from-fetch", "/fetch-by-address"),  # fetch()
    ],
)
def test_a_node_function_calls_a_strict_service_with_its_identity(
    daemon: Daemon, target: str, caller: str, url: str, by_address_path: str
) -> None:
    path = url.split(":8080", 1)[1]
    answer = wait_for(
        lambda: (text := ask(daemon, caller, url)).startswith("200") and text,
        f"{caller}'s call",
    )
    by_address = ask(daemon, caller, f"http://{target}:8080{by_address_path}")

    assert answer == f"200 target {path}"
    assert by_address == f"200 target {by_address_path}"
    lines = daemon.run("mesh", "logs", "--tail", "50").stdout.splitlines()
    [logged] = [line for line in lines if f'"GET {path} HTTP/1.1" 200' in line]
    assert TARGET_HOST in logged
    with api_client(daemon) as api:
        metrics = api.get("/metrics").text
    assert any(
        line.startswith("istio_requests_total{")
        and f'source_workload="{caller}"' in line
        and 'source_workload_namespace="default"' in line
        and f'destination_service="{TARGET_HOST}"' in line
        for line in metrics.splitlines()
    ), metrics


@pytest.mark.parametrize("how", ["thread", "requests-in-pool"])
def test_a_python_functions_thread_calls_with_its_identity_and_its_calls_trace(
    daemon: Daemon, target: str, how: str
) -> None:
    """A thread the handler starts (urllib), or a pool it hands work to (requests, when the
    runtime's interpreter has it): the call goes through STRICT with the function's identity,
    and the target's span is a child of the caller's."""
    trace_id = f"{random.getrandbits(128):032x}"
    parent = f"{random.getrandbits(64):016x}"
    traced = {"traceparent": f"00-{trace_id}-{parent}-01"}
    url = f"http://target:8080/from-{how}"
    answers: list[str] = []

    def answered() -> str | None:
        answers.append(ask(daemon, "pythreads", url, how=how, headers=traced))
        return answers[-1] if answers[-1][:3] in ("200", "no ") else None

    answer = wait_for(answered, "pythreads' call")
    if answer == "no requests" and not runtime_has_requests():
        pytest.skip(f"the {RUNTIME} interpreter on this machine lacks requests")

    assert answer != "no requests", "the function cannot import its interpreter's requests"

    spans = trace_spans(daemon, "pythreads", trace_id, 2)

    caller, callee = spans  # in the order they started
    assert "pythreads.default" in caller["name"]
    assert "target.default" in callee["name"]
    assert caller["parentSpanId"] == parent
    assert callee["parentSpanId"] == caller["spanId"]
    assert ask(daemon, "pythreads", url, how=how) == f"200 target /from-{how}"


def test_an_allow_policy_on_a_principal_lets_that_service_account_through_only(
    daemon: Daemon, target: str, tmp_path: Path, policies: list[tuple[str, str]]
) -> None:
    apply(daemon, tmp_path, ALLOW_CALLER)
    policies.append(("authorizationpolicy", "callers-only"))
    url = "http://target:8080/guarded"
    denied = wait_for(
        lambda: (text := ask(daemon, "pydefault", url)).startswith("403") and text, "the policy"
    )

    assert denied == "403 RBAC: access denied"
    assert ask(daemon, "pycaller", url) == "200 target /guarded"
    assert ask(daemon, "pythreads", url, how="thread") == "200 target /guarded"
    if shutil.which("node") is not None:
        assert ask(daemon, "nodecaller", url) == "200 target /guarded"
        assert ask(daemon, "nodefetch", url) == "200 target /guarded"


@pytest.fixture(scope="module")
def web(daemon: Daemon, target: str) -> Iterator[str]:
    """A plain workload behind the Service ``web`` (port 8081, no mesh rules: kernel NAT or a
    forwarder), once it has a ready endpoint."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"needs {SYSTEM_PYTHON}")
    command = f"{SYSTEM_PYTHON} -c {shlex.quote(WEB_SERVER)}"
    daemon.run("run", "web", "--labels", "app=web", "--port", "8000", "--command", command)
    daemon.run("expose", "deployment", "web", "--port", str(WEB_PORT), "--target-port", "8000")

    def endpoints_ready() -> bool:
        subsets = get_json(daemon, "endpoints", "web").get("subsets") or []
        return any(subset.get("addresses") for subset in subsets)

    wait_for(endpoints_ready, "a ready endpoint of web")
    yield str(get_json(daemon, "service", "web")["spec"]["clusterIP"])
    daemon.run("delete", "deployment", "web")
    daemon.run("delete", "service", "web")


@pytest.mark.parametrize("caller", ["pycaller", "nodecaller", "nodefetch"])
def test_a_plain_workload_behind_a_service_still_answers_the_callers(
    daemon: Daemon, web: str, caller: str
) -> None:
    """Its VIP answers the ClientHello with no mesh certificate: the shim calls again in
    plaintext, and then keeps to plaintext for that address a while."""
    if caller.startswith("node") and shutil.which("node") is None:
        pytest.skip("needs node")
    url = f"http://web:{WEB_PORT}/{caller}"
    first = wait_for(lambda: (text := ask(daemon, caller, url)).startswith("200") and text, url)

    assert first == f"200 web /{caller}"
    assert ask(daemon, caller, url + "/again") == f"200 web /{caller}/again"
    assert ask(daemon, caller, f"http://{web}:{WEB_PORT}/by-address") == "200 web /by-address"


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_a_workload_gets_certificate_files_that_curl_uses_through_strict(
    daemon: Daemon, target: str, tmp_path: Path, policies: list[tuple[str, str]]
) -> None:
    script = CURL_SCRIPT.format(host=TARGET_HOST, vip=target)
    apply(daemon, tmp_path, CURL_WORKLOAD.format(script=json.dumps(script)))
    policies.append(("deployment", "curler"))

    def finished() -> tuple[str, dict[str, Any]] | None:
        for pod in get_json(daemon, "pods", "-l", "app=curler")["items"]:
            log = daemon.run("logs", pod["metadata"]["name"], check=False).stdout
            if "done" in log.splitlines():
                return log, pod
        return None

    log, pod = wait_for(finished, "curl's output")

    lines = log.splitlines()
    assert lines[:3] == ["cert-chain.pem", "key.pem", "root-cert.pem"], log
    assert "target /from-curl" in lines, log
    assert "refused without a certificate" in lines, log
    assert pod["spec"]["serviceAccountName"] == "caller"
    if os.geteuid() == 0:  # a tmpfs in the pod's own mount namespace: nothing on the machine
        home = work_dir_for(daemon.home) / "pods" / f"default_{pod['metadata']['name']}"
        assert list((home / "mesh-certs").iterdir()) == []

    # ``funcmesh exec``'s command finds files of the pod's identity where the pod does
    exec_script = EXEC_CURL_SCRIPT.format(host=TARGET_HOST, vip=target)
    shown = daemon.run("exec", pod["metadata"]["name"], "--", "sh", "-c", exec_script).stdout
    assert shown.splitlines() == ["cert-chain.pem", "key.pem", "root-cert.pem", "target /from-exec"]
