"""The Node.js mTLS shim (funcmesh_mtls.js) with a real ``node`` against the servers of the
Python shim's tests: http.get through the patched agent reaches the mesh entrance over mTLS
with the instance's certificate (the name it sends when the code named a Service), falls back
to plaintext for a plain workload, leaves other addresses alone, and asks the daemon for
credentials once."""

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

# Calls each URL in turn with http.get (through "hello" -> 127.0.0.1 when named so) and prints
# {"results": [...], "asked": N, "errors": [...]}.
SCRIPT = """\
const http = require('http');
const fs = require('fs');
const mtls = require(process.argv[2]);
const config = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'));
let asked = 0;
mtls.install({
  cidr: config.cidr,
  fetchCredentials: (callback) => {
    asked += 1;
    setTimeout(() => config.payload ? callback(null, config.payload)
                                    : callback(new Error('no identity')), 10);
  },
  resolver: { serviceName: (host) => (host === 'hello' ? config.hello : null) },
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
(async () => {
  const results = [];
  for (const url of config.urls) results.push(await get(url));
  console.log(JSON.stringify({ results, asked }));
})();
"""


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> MeshIdentity:
    return MeshIdentity.open(tmp_path_factory.mktemp("mesh"))


@pytest.fixture
def mesh_vip(identity: MeshIdentity) -> Iterator[Server]:
    yield from _serve(identity.server_context(), _http_answer)


@pytest.fixture
def workload() -> Iterator[Server]:
    yield from _serve(None, _http_answer)


def run_node(
    tmp_path: Path, identity: MeshIdentity | None, urls: list[str], *, cidr: str = "127.0.0.0/8"
) -> tuple[dict[str, Any], str]:
    """Run the script; what it printed, and its stderr."""
    assert NODE is not None
    payload = None
    if identity is not None:
        issued = identity.issue("default", "caller")
        payload = json.loads(credentials_payload(issued, renew_at_s=time.time() + 3600))
    config = {"cidr": cidr, "payload": payload, "hello": HELLO, "urls": urls}
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
