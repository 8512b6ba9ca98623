"""The Node.js mTLS shim (funcmesh_mtls.js) with a real ``node`` against the servers of the
Python shim's tests: http.get through the patched agent, and fetch() through the shim's undici
dispatcher, reach the mesh entrance over mTLS with the instance's certificate (the name they
send when the code named a Service), fall back to plaintext for a plain workload, leave other
addresses and https alone, and ask the daemon for credentials once."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from funcmesh.mesh.identity import MeshIdentity
from funcmesh.runtime.mesh_credentials import credentials_payload
from funcmesh.runtime.node_processes import SHIM_PATH
from tests.unit.runtime.test_mtls_shim import CALLER, HELLO, Server, _http_answer, _serve

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="needs node")

# Calls each URL in turn with http.get or fetch() (config.how; "hello" is 127.0.0.1) and
# prints {"results": [...], "asked": N}: "STATUS BODY", for fetch() "STATUS URL BODY".
SCRIPT = """\
const dns = require('dns');
const http = require('http');
const fs = require('fs');
const config = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
const lookupFirst = dns.lookup; // the names shim's place: net, and so fetch(), use it
dns.lookup = (host, options, callback) =>
  lookupFirst(host === 'hello' ? '127.0.0.1' : host, options, callback);
const mtls = require(process.argv[2]);
let asked = 0;
mtls.install({
  cidr: config.cidr,
  fetchCredentials: (callback) => {
    asked += 1;
    setTimeout(() => config.payload ? callback(null, config.payload)
                                    : callback(new Error('no identity')), 10);
  },
  resolver: {
    serviceName: (host) => (host === 'hello' ? config.hello : null),
    resolve: (host, callback) => callback(host === 'hello' ? ['127.0.0.1'] : []),
  },
  podIp: config.podIp,
});
function lookup(host, options, callback) {
  const address = host === 'hello' ? '127.0.0.1' : host;
  if (options && options.all) callback(null, [{ address, family: 4 }]);
  else callback(null, address, 4);
}
function get(url) {
  return new Promise((resolve) => {
    http.get(url, { lookup }, (answer) => {
      let body = '';
      answer.on('data', (chunk) => { body += chunk; });
      answer.on('end', () => resolve(`${answer.statusCode} ${body}`));
    }).on('error', (error) => resolve(`failed: ${error.message}`));
  });
}
async function viaFetch(url) {
  try {
    const answer = await fetch(url);
    const body = await answer.text();
    return `${answer.status} ${answer.url} ${body}`;
  } catch (error) {
    return `failed: ${error.message}${error.cause ? `: ${error.cause.message}` : ''}`;
  }
}
(async () => {
  const results = [];
  for (const url of config.urls) results.push(await (config.how === 'fetch' ? viaFetch : get)(url));
  console.log(JSON.stringify({ results, asked }));
})();
"""


def run_node(
    tmp_path: Path,
    identity: MeshIdentity | None,
    urls: list[str],
    *,
    cidr: str = "127.0.0.0/8",
    how: str = "get",
    pod_ip: str = "",
) -> tuple[dict[str, Any], str]:
    """Run the script; what it printed, and its stderr."""
    assert NODE is not None
    payload = None
    if identity is not None:
        issued = identity.issue("default", "caller")
        payload = json.loads(credentials_payload(issued, renew_at_s=time.time() + 3600))
    config = {
        "cidr": cidr,
        "payload": payload,
        "hello": HELLO,
        "urls": urls,
        "how": how,
        "podIp": pod_ip,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "script.js").write_text(SCRIPT)
    shim = SHIM_PATH.with_name("funcmesh_mtls.js")
    done = subprocess.run(
        [NODE, str(tmp_path / "script.js"), str(shim), str(tmp_path / "config.json")],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed, done.stderr


def test_calls_to_a_mesh_vip_carry_the_identity_and_the_service_name(
    tmp_path: Path, identity: MeshIdentity, mesh_vip: Server
) -> None:
    port = mesh_vip.port
    urls = [f"http://127.0.0.1:{port}/a", f"http://hello:{port}/b", f"http://hello:{port}/c"]

    printed, _ = run_node(tmp_path, identity, urls)

    by_name = f"200 {CALLER} {HELLO}"
    assert printed["results"] == [f"200 {CALLER} -", by_name, by_name]
    assert printed["asked"] == 1  # the credentials are kept
    assert mesh_vip.resumed == [False, False, True]  # a session per address and name
    assert mesh_vip.seen == [f"tls {CALLER} -", f"tls {CALLER} {HELLO}", f"tls {CALLER} {HELLO}"]


def test_a_plain_workload_gets_the_call_again_in_plaintext_and_then_plaintext_only(
    tmp_path: Path, identity: MeshIdentity, workload: Server
) -> None:
    urls = [f"http://127.0.0.1:{workload.port}/first", f"http://127.0.0.1:{workload.port}/next"]

    printed, _ = run_node(tmp_path, identity, urls)

    assert printed["results"] == ["200 plain /first", "200 plain /next"]
    assert workload.seen == ["garbage", "plain", "plain"]


def test_outside_the_service_cidr_nothing_changes(
    tmp_path: Path, identity: MeshIdentity, workload: Server
) -> None:
    printed, _ = run_node(
        tmp_path, identity, [f"http://127.0.0.1:{workload.port}/x"], cidr="10.96.0.0/12"
    )

    assert printed == {"results": ["200 plain /x"], "asked": 0}
    assert workload.seen == ["plain"]


def test_without_credentials_calls_go_in_plaintext_and_it_says_so_once(
    tmp_path: Path, workload: Server
) -> None:
    urls = [f"http://127.0.0.1:{workload.port}/x"] * 2

    printed, stderr = run_node(tmp_path, None, urls)

    assert printed["results"] == ["200 plain /x", "200 plain /x"]
    assert workload.seen == ["plain", "plain"]
    assert stderr.count("funcmesh: no mesh credentials (no identity)") == 1


def _redirecting_answer(text: str, path: str) -> bytes:
    """/redirect/X answers 302 to /X, the rest as _http_answer."""
    if path.startswith("/redirect/"):
        where = path[len("/redirect") :]
        return (
            b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n"
            b"Connection: close\r\n\r\n" % where.encode()
        )
    return _http_answer(f"{text} {path}")


@pytest.fixture
def redirecting_vip(identity: MeshIdentity) -> Iterator[Server]:
    yield from _serve(identity.server_context(), _redirecting_answer)


def test_fetch_to_a_mesh_vip_carries_the_identity_and_the_service_name(
    tmp_path: Path, identity: MeshIdentity, mesh_vip: Server
) -> None:
    port = mesh_vip.port
    urls = [f"http://127.0.0.1:{port}/a", f"http://hello:{port}/b", f"http://hello:{port}/c"]

    printed, _ = run_node(tmp_path, identity, urls, how="fetch")

    assert printed["results"] == [
        f"200 {urls[0]} {CALLER} -",
        f"200 {urls[1]} {CALLER} {HELLO}",
        f"200 {urls[2]} {CALLER} {HELLO}",
    ]
    assert printed["asked"] == 1
    assert mesh_vip.seen == [f"tls {CALLER} -", f"tls {CALLER} {HELLO}", f"tls {CALLER} {HELLO}"]
    assert mesh_vip.resumed == [False, False, True]


def test_fetch_follows_redirects_over_mtls_as_fetch_does(
    tmp_path: Path, identity: MeshIdentity, redirecting_vip: Server
) -> None:
    url = f"http://hello:{redirecting_vip.port}/redirect/after"

    printed, _ = run_node(tmp_path, identity, [url], how="fetch")

    after = f"http://hello:{redirecting_vip.port}/after"
    assert printed["results"] == [f"200 {after} {CALLER} {HELLO} /after"]  # the response's URL
    assert redirecting_vip.seen == [f"tls {CALLER} {HELLO}"] * 2


def test_fetch_to_a_plain_workload_goes_again_in_plaintext_and_then_plaintext_only(
    tmp_path: Path, identity: MeshIdentity, workload: Server
) -> None:
    urls = [f"http://127.0.0.1:{workload.port}/first", f"http://hello:{workload.port}/next"]

    printed, _ = run_node(tmp_path, identity, urls, how="fetch")

    assert printed["results"] == [f"200 {urls[0]} plain /first", f"200 {urls[1]} plain /next"]
    assert workload.seen == ["garbage", "plain", "plain"]


def test_fetch_outside_the_service_cidr_is_left_alone(
    tmp_path: Path, identity: MeshIdentity, workload: Server
) -> None:
    url = f"http://127.0.0.1:{workload.port}/x"

    printed, _ = run_node(tmp_path, identity, [url], cidr="10.96.0.0/12", how="fetch")

    assert printed == {"results": [f"200 {url} plain /x"], "asked": 0}
    assert workload.seen == ["plain"]


def test_fetch_over_https_gets_no_identity_of_the_shim(
    tmp_path: Path, identity: MeshIdentity, mesh_vip: Server
) -> None:
    """https: origins stay with undici's own agent: the mesh entrance, which requires a client
    certificate, sees none (and the call fails on the certificate of an unknown CA)."""
    printed, _ = run_node(tmp_path, identity, [f"https://127.0.0.1:{mesh_vip.port}/"], how="fetch")

    assert printed["results"][0].startswith("failed: fetch failed"), printed
    assert printed["asked"] == 0
    assert f"tls {CALLER} -" not in mesh_vip.seen


POD_IP = "127.128.250.7"  # the instance's own address: any loopback address can be bound


@pytest.mark.parametrize("how", ["get", "fetch"])
def test_calls_to_cluster_addresses_leave_from_the_pod_ip(
    tmp_path: Path, identity: MeshIdentity, workload: Server, how: str
) -> None:
    port = workload.port
    urls = [f"http://127.0.0.1:{port}/by-address", f"http://hello:{port}/by-name"]

    printed, _ = run_node(tmp_path, identity, urls, cidr="10.96.0.0/12", how=how, pod_ip=POD_IP)

    assert [result.rsplit(" ", 1)[-1] for result in printed["results"]] == [
        "/by-address",
        "/by-name",
    ]
    assert workload.peers == [POD_IP, POD_IP]


@pytest.mark.parametrize("how", ["get", "fetch"])
def test_an_upgraded_call_leaves_from_the_pod_ip_too(
    tmp_path: Path, identity: MeshIdentity, mesh_vip: Server, how: str
) -> None:
    printed, _ = run_node(
        tmp_path, identity, [f"http://hello:{mesh_vip.port}/x"], how=how, pod_ip=POD_IP
    )

    assert printed["results"][0].endswith(f"{CALLER} {HELLO}")
    assert mesh_vip.peers == [POD_IP]


@pytest.mark.parametrize("how", ["get", "fetch"])
def test_a_pod_ip_that_cannot_be_bound_leaves_calls_as_they_were(
    tmp_path: Path, identity: MeshIdentity, workload: Server, how: str
) -> None:
    urls = [f"http://127.0.0.1:{workload.port}/first", f"http://127.0.0.1:{workload.port}/second"]

    printed, _ = run_node(
        tmp_path, identity, urls, cidr="10.96.0.0/12", how=how, pod_ip="192.0.2.1"
    )

    assert [result.rsplit(" ", 1)[-1] for result in printed["results"]] == ["/first", "/second"]
    assert workload.peers == ["127.0.0.1", "127.0.0.1"]
