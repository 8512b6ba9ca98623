"""Mesh identity and access through a real ``funcmesh up``: certificates from ``funcmesh mesh
cert``, mTLS at a function's Service VIP (Python ``ssl`` plays the calling workload),
PeerAuthentication modes and AuthorizationPolicy decisions, as a caller sees them."""

from __future__ import annotations

import json
import random
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from funcmesh.mesh.identity import MeshIdentity
from tests.e2e.conftest import Daemon, api_client

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
HELLO = "hello.default.svc.cluster.local"
FRONTEND = "cluster.local/ns/default/sa/frontend"
CODE = """\
def handler(event, context):
    return "hello " + event["extensions"]["request"].path
"""

Answer = tuple[int, str]  # status, body


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def apply(daemon: Daemon, tmp_path: Path, text: str) -> None:
    path = tmp_path / f"objects-{random.randrange(1 << 30)}.yaml"
    path.write_text(text)
    daemon.run("apply", "-f", str(path))


def exchange(sock: socket.socket, path: str) -> Answer:
    """One HTTP/1.1 request on ``sock`` (closed after), its status and body."""
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        raise ConnectionResetError("closed without an answer")
    return int(head.split(b" ", 2)[1]), body.decode()


def plain(address: tuple[str, int], path: str = "/") -> Answer:
    return exchange(socket.create_connection(address, timeout=10), path)


def mtls(
    address: tuple[str, int], certs: Path, path: str = "/", *, trust: Path | None = None
) -> Answer:
    """A request over mTLS presenting ``certs`` (``funcmesh mesh cert``'s files), trusting
    ``trust``'s root (default: the same directory's), the Service's name as SNI."""
    context = ssl.create_default_context(cafile=(trust or certs) / "root-cert.pem")
    context.load_cert_chain(certs / "cert-chain.pem", certs / "key.pem")
    sock = socket.create_connection(address, timeout=10)
    return exchange(context.wrap_socket(sock, server_hostname=HELLO), path)


def outcome(call: Callable[[], Answer]) -> str:
    """``200 body`` or the failure's kind: what the caller notices."""
    try:
        status, body = call()
    except ssl.SSLError as exc:
        return f"tls refused: {exc.reason}"
    except OSError:
        return "reset"
    return f"{status} {body}"


@pytest.fixture(scope="module")
def vip(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The function ``hello``'s Service VIP."""
    source = tmp_path_factory.mktemp("code") / "hello.py"
    source.write_text(CODE)
    daemon.run(
        "function", "deploy", "hello", "--runtime", RUNTIME, "--handler", "hello.handler",
        "--from-file", str(source), "--label", "app=hello",
    )  # fmt: skip
    service = json.loads(daemon.run("get", "service", "hello", "-o", "json").stdout)
    address = (service["spec"]["clusterIP"], 8080)
    wait_for(lambda: outcome(lambda: plain(address)) == "200 hello /", "the function's VIP")
    yield address
    daemon.run("function", "delete", "hello", check=False)


@pytest.fixture(scope="module")
def certs(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``funcmesh mesh cert`` for default/frontend and default/backend, and a certificate of
    another CA (for frontend too) next to the mesh CA's root."""
    root = tmp_path_factory.mktemp("certs")
    found = {}
    for account in ("frontend", "backend"):
        out = root / account
        printed = daemon.run("mesh", "cert", "--service-account", account, "--out", str(out))
        assert f"spiffe://cluster.local/ns/default/sa/{account}" in printed.stdout
        assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
        found[account] = out
    foreign = MeshIdentity.open(root / "foreign-ca").issue("default", "frontend")
    (root / "foreign").mkdir()
    (root / "foreign" / "cert-chain.pem").write_text(foreign.cert_pem)
    (root / "foreign" / "key.pem").write_text(foreign.key_pem)
    (root / "foreign" / "root-cert.pem").write_text(foreign.ca_pem)
    found["foreign"] = root / "foreign"
    return found


def test_permissive_by_default_accepts_plaintext_and_mtls(
    vip: tuple[str, int], certs: dict[str, Path]
) -> None:
    assert outcome(lambda: plain(vip, "/a")) == "200 hello /a"
    assert outcome(lambda: mtls(vip, certs["frontend"], "/b")) == "200 hello /b"


def test_strict_takes_only_mesh_mtls_and_permissive_both_again(
    daemon: Daemon,
    tmp_path: Path,
    vip: tuple[str, int],
    certs: dict[str, Path],
    policies: list[tuple[str, str]],
) -> None:
    apply(daemon, tmp_path, PEER_AUTHENTICATION.format(mode="STRICT"))
    policies.append(("peerauthentication", "hello"))
    wait_for(lambda: outcome(lambda: plain(vip)) == "reset", "STRICT")
    assert outcome(lambda: mtls(vip, certs["frontend"])) == "200 hello /"
    refused = outcome(lambda: mtls(vip, certs["foreign"], trust=certs["frontend"]))
    assert refused.startswith(("tls refused", "reset")), refused  # the handshake fails

    apply(daemon, tmp_path, PEER_AUTHENTICATION.format(mode="PERMISSIVE"))
    wait_for(lambda: outcome(lambda: plain(vip)) == "200 hello /", "PERMISSIVE")
    assert outcome(lambda: mtls(vip, certs["backend"])) == "200 hello /"


def test_disable_takes_only_plaintext(
    daemon: Daemon,
    tmp_path: Path,
    vip: tuple[str, int],
    certs: dict[str, Path],
    policies: list[tuple[str, str]],
) -> None:
    apply(daemon, tmp_path, PEER_AUTHENTICATION.format(mode="DISABLE"))
    policies.append(("peerauthentication", "hello"))
    wait_for(lambda: not outcome(lambda: mtls(vip, certs["frontend"])).startswith("200"), "DISABLE")
    assert outcome(lambda: plain(vip, "/p")) == "200 hello /p"


def test_an_allow_policy_lets_its_principal_through_and_no_one_else(
    daemon: Daemon,
    tmp_path: Path,
    vip: tuple[str, int],
    certs: dict[str, Path],
    policies: list[tuple[str, str]],
) -> None:
    apply(daemon, tmp_path, ALLOW_FRONTEND)
    policies.append(("authorizationpolicy", "frontend-only"))
    denied = "403 RBAC: access denied"
    wait_for(lambda: outcome(lambda: plain(vip)) == denied, "the policy")
    assert outcome(lambda: mtls(vip, certs["frontend"], "/x")) == "200 hello /x"
    assert outcome(lambda: mtls(vip, certs["backend"])) == denied
    with api_client(daemon) as api:  # the gateway's callers have no certificate either
        assert api.get("/api/v1/namespaces/default/services/hello/proxy/").status_code == 403


def test_a_deny_policy_beats_an_allow_and_shows_in_the_access_log_and_metrics(
    daemon: Daemon,
    tmp_path: Path,
    vip: tuple[str, int],
    certs: dict[str, Path],
    policies: list[tuple[str, str]],
) -> None:
    apply(daemon, tmp_path, ALLOW_FRONTEND + "---\n" + DENY_ADMIN)
    policies += [("authorizationpolicy", "frontend-only"), ("authorizationpolicy", "no-admin")]
    wait_for(
        lambda: outcome(lambda: mtls(vip, certs["frontend"], "/admin/users")).startswith("403"),
        "the DENY policy",
    )
    assert outcome(lambda: mtls(vip, certs["frontend"], "/shop")) == "200 hello /shop"

    lines = daemon.run("mesh", "logs", "--tail", "20").stdout.splitlines()
    denied = [line for line in lines if '"GET /admin/users HTTP/1.1" 403' in line]
    assert denied, lines
    assert " 403 - rbac_access_denied_matched_policy[default.no-admin] " in denied[-1]
    assert HELLO in denied[-1]  # the SNI the caller sent: REQUESTED_SERVER_NAME
    with api_client(daemon) as api:
        metrics = api.get("/metrics").text
    served = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_requests_total{")
        and f'source_principal="spiffe://{FRONTEND}"' in line
        and 'connection_security_policy="mutual_tls"' in line
        and 'response_code="403"' in line
    ]
    assert served, metrics


def test_strict_moves_a_plain_service_to_the_daemon(
    daemon: Daemon, tmp_path: Path, certs: dict[str, Path], policies: list[tuple[str, str]]
) -> None:
    """A Service of a namespace under STRICT (here: in front of the function's pod address,
    as a hand-written Endpoints) answers mTLS only, whatever served it before."""
    pods = json.loads(daemon.run("get", "pods", "-l", "function=hello", "-o", "json").stdout)
    pod_ip = pods["items"][0]["status"]["podIP"]
    apply(daemon, tmp_path, PLAIN_SERVICE.format(ip=pod_ip))
    policies += [("service", "plain"), ("endpoints", "plain")]
    service = json.loads(daemon.run("get", "service", "plain", "-o", "json").stdout)
    address = (service["spec"]["clusterIP"], 8080)
    wait_for(lambda: outcome(lambda: plain(address)) == "200 hello /", "the plain Service")

    apply(daemon, tmp_path, NAMESPACE_STRICT)
    policies.append(("peerauthentication", "default"))
    wait_for(lambda: outcome(lambda: plain(address)) == "reset", "STRICT for the namespace")
    assert outcome(lambda: mtls(address, certs["backend"], "/p")) == "200 hello /p"


def test_a_certificate_for_a_namespace_that_does_not_exist_is_refused(
    daemon: Daemon, tmp_path: Path
) -> None:
    result = daemon.run(
        "mesh", "cert", "-n", "ghost", "--out", str(tmp_path / "ghost"), check=False
    )
    assert result.returncode != 0
    assert 'namespaces "ghost" not found' in result.stderr
    assert not (tmp_path / "ghost").exists()


PEER_AUTHENTICATION = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: hello
spec:
  selector:
    matchLabels:
      function: hello
  mtls:
    mode: {mode}
"""

NAMESPACE_STRICT = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls:
    mode: STRICT
"""

ALLOW_FRONTEND = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: frontend-only
spec:
  selector:
    matchLabels:
      app: hello
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/frontend"]
"""

DENY_ADMIN = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-admin
spec:
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin*"]
"""

PLAIN_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: plain
spec:
  ports:
  - name: http
    port: 8080
    targetPort: 8080
---
apiVersion: v1
kind: Endpoints
metadata:
  name: plain
subsets:
- addresses:
  - ip: {ip}
  ports:
  - name: http
    port: 8080
"""
