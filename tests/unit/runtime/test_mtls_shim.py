"""The Python mTLS shim against real TLS and HTTP servers on loopback: which connections it
upgrades, the identity and name they carry, the fallback to plaintext, credentials loaded from
memory and read again after a renewal.

The servers stand for the daemon's mesh entrance (``MeshIdentity.server_context``: a client
certificate of the mesh CA required), a plain workload, and a TLS server of another CA. The
service CIDR is loopback's, so they all count as VIPs unless a test says otherwise."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import funcmesh.runtime
from funcmesh.mesh.identity import MeshIdentity, principal_of, requested_server_name
from funcmesh.runtime.mesh_credentials import MeshCredential, credentials_payload

LOOPBACK = "127.0.0.0/8"
CALLER = "cluster.local/ns/default/sa/caller"
HELLO = "hello.default.svc.cluster.local"


def _load_shim(name: str) -> ModuleType:
    path = Path(funcmesh.runtime.__file__).parent / "shims" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mtls = _load_shim("_funcmesh_mtls")
names = _load_shim("_funcmesh_names")


@dataclass
class Server:
    """A server on loopback in a thread: what each connection looked like."""

    port: int
    seen: list[str] = field(default_factory=list)  # per connection: "tls P SNI", "plain", ...
    resumed: list[bool] = field(default_factory=list)  # per TLS connection
    peers: list[str] = field(default_factory=list)  # per connection: the client's address

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def _serve(context: ssl.SSLContext | None, answer: Callable[[str, str], bytes]) -> Iterator[Server]:
    """Accept connections; over TLS (when ``context``) answer ``answer("principal SNI",
    path)``, in plaintext answer an HTTP request (``answer("plain PATH", path)``), or 400 what
    is none."""
    listener = socket.create_server(("127.0.0.1", 0))
    server = Server(port=listener.getsockname()[1])
    stop = threading.Event()

    def handle(sock: socket.socket) -> None:
        sock.settimeout(5)
        try:
            if context is not None:
                tls = context.wrap_socket(sock, server_side=True)
                sni = requested_server_name(tls) or "-"
                server.seen.append(f"tls {principal_of(tls.getpeercert()) or '-'} {sni}")
                server.resumed.append(tls.session_reused)
                sock = tls
                head = _read_head(sock)
                who = f"{principal_of(tls.getpeercert())} {sni}"
                sock.sendall(answer(who, _path_of(head)))
                return
            head = _read_head(sock)
            if head.startswith(b"GET "):
                server.seen.append("plain")
                sock.sendall(answer("plain " + _path_of(head), _path_of(head)))
            else:
                server.seen.append("garbage")
                sock.sendall(b"HTTP/1.0 400 Bad request\r\nContent-Length: 0\r\n\r\n")
        except (OSError, ValueError):
            server.seen.append("failed")
        finally:
            sock.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                sock, peer = listener.accept()
            except OSError:
                return
            server.peers.append(peer[0])
            threading.Thread(target=handle, args=(sock,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server
    stop.set()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
    listener.close()
    thread.join(5)


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n" not in data[:1024]:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _path_of(head: bytes) -> str:
    parts = head.split(b" ", 2)
    return parts[1].decode() if len(parts) > 2 else ""


def _http_answer(text: str, path: str = "") -> bytes:
    body = text.encode()
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        len(body),
        body,
    )


@pytest.fixture
def client() -> Iterator[None]:
    """``http.client`` as it was before the test installs the shim, afterwards."""
    original = http.client.HTTPConnection.connect
    yield
    http.client.HTTPConnection.connect = original  # type: ignore[method-assign]


class Resolver:
    """The names shim's resolver, as far as the mTLS shim asks: ``hello`` is a Service."""

    def service_name(self, host: str) -> str | None:
        return HELLO if host == "hello" else None


def install(credential: MeshCredential, cidr: str) -> Any:
    """The shim for ``http.client`` in this process; the other clients' patches (which
    ``_funcmesh_worker`` would apply on import) are left out here: test_mtls_shim_clients.py
    runs them in a process of their own."""
    return mtls.install(
        os.dup(credential.reader_fd), cidr, Resolver(), when_imported=lambda name, patch: None
    )


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return str(answer.read().decode())


def test_a_call_to_a_mesh_vip_by_address_carries_the_identity(
    client: None, credential: MeshCredential, mesh_vip: Server
) -> None:
    install(credential, LOOPBACK)

    answer = get(f"http://127.0.0.1:{mesh_vip.port}/by-address")

    assert answer == f"{CALLER} -"  # no SNI: the VIP's certificate checked against the CA only
    assert mesh_vip.seen == [f"tls {CALLER} -"]


def test_a_call_by_service_name_sends_and_checks_that_name(
    client: None,
    credential: MeshCredential,
    mesh_vip: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookup = socket.getaddrinfo

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        return lookup("127.0.0.1" if host == "hello" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    install(credential, LOOPBACK)
    connection = http.client.HTTPConnection("hello", mesh_vip.port, timeout=10)

    connection.request("GET", "/by-name")
    answer = connection.getresponse().read().decode()
    connection.close()

    assert answer == f"{CALLER} {HELLO}"


def test_a_plain_workload_gets_the_call_again_in_plaintext_and_then_plaintext_only(
    client: None, credential: MeshCredential, workload: Server
) -> None:
    install(credential, LOOPBACK)

    first = get(f"http://127.0.0.1:{workload.port}/first")
    second = get(f"http://127.0.0.1:{workload.port}/second")

    assert (first, second) == ("plain /first", "plain /second")
    assert workload.seen == ["garbage", "plain", "plain"]  # one ClientHello, then plaintext


def test_a_tls_server_of_another_ca_gets_plaintext_never_the_call_over_tls(
    client: None, credential: MeshCredential, tmp_path: Path
) -> None:
    foreign = MeshIdentity.open(tmp_path / "foreign")
    originator = mtls.Originator(os.dup(credential.reader_fd), LOOPBACK)
    for server in _serve(foreign.server_context(), _http_answer):
        sock = socket.create_connection(server.address, timeout=10)

        upgraded = originator.upgrade(sock, "127.0.0.1")

        assert upgraded is mtls.AGAIN_IN_PLAINTEXT
        assert sock.fileno() == -1  # closed
        assert originator.plain_until[server.address] > time.time() + 20


def test_https_the_code_asks_for_is_never_touched(
    client: None,
    credential: MeshCredential,
    mesh_vip: Server,
    identity: MeshIdentity,
    tmp_path: Path,
) -> None:
    """The code's own HTTPS client with its own certificate: the VIP sees that one."""
    install(credential, LOOPBACK)
    own = identity.issue("default", "own")
    (tmp_path / "own.pem").write_text(own.key_pem + own.cert_pem)
    context = ssl.create_default_context(cadata=own.ca_pem)
    context.check_hostname = False
    context.load_cert_chain(tmp_path / "own.pem")
    connection = http.client.HTTPSConnection("127.0.0.1", mesh_vip.port, context=context)

    connection.request("GET", "/")
    answer = connection.getresponse().read().decode()
    connection.close()

    assert answer == "cluster.local/ns/default/sa/own -"


def test_outside_the_service_cidr_nothing_changes(
    client: None, credential: MeshCredential, workload: Server
) -> None:
    install(credential, "10.96.0.0/12")

    assert get(f"http://127.0.0.1:{workload.port}/x") == "plain /x"
    assert workload.seen == ["plain"]


def test_the_key_is_loaded_from_memory_and_leaves_no_descriptor_or_file(
    credential: MeshCredential, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir("/proc/self/fd"))

    credentials = mtls.Credentials(mtls.read_payload(credential.reader_fd))

    assert set(os.listdir("/proc/self/fd")) == before
    assert list(tmp_path.iterdir()) == []
    assert credentials.spiffe_id == f"spiffe://{CALLER}"
    assert credentials.by_name.check_hostname
    assert not credentials.by_address.check_hostname
    assert credentials.by_address.verify_mode == ssl.CERT_REQUIRED


def test_renewed_credentials_are_read_after_their_renewal_time(
    credential: MeshCredential, identity: MeshIdentity
) -> None:
    now = [time.time()]
    originator = mtls.Originator(os.dup(credential.reader_fd), LOOPBACK, clock=lambda: now[0])
    first = originator.current(now[0])
    assert first is not None
    renew_at_s = first.renew_at

    now[0] = renew_at_s + mtls.REREAD_AFTER_S + 1  # due, but the daemon has not renewed yet
    assert originator.current(now[0]) is first
    assert originator.read_after == now[0] + mtls.REREAD_RETRY_S

    renewed = identity.issue("default", "caller", ttl_s=7200)  # another certificate
    payload = credentials_payload(renewed, renew_at_s=renew_at_s + 100)
    credential.replace(payload, renew_at_s=renew_at_s + 100)
    now[0] += mtls.REREAD_RETRY_S
    second = originator.current(now[0])

    assert second is not None
    assert second is not first
    assert second.renew_at == renew_at_s + 100


def test_unreadable_credentials_leave_calls_in_plaintext_and_say_so_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    fd = os.memfd_create("garbage")
    os.write(fd, b"not json")
    originator = mtls.Originator(fd, LOOPBACK)
    try:
        assert originator.current(time.time()) is None
        originator.read_after = 0.0
        assert originator.current(time.time()) is None
    finally:
        os.close(fd)

    said = capsys.readouterr().err.splitlines()
    assert len(said) == 1
    assert said[0].startswith("funcmesh: cannot read the mesh credentials: ")
    assert said[0].endswith("calls to Services go in plaintext")


@pytest.mark.parametrize(
    ("cidr", "address", "inside"),
    [
        ("127.96.0.0/16", "127.96.3.4", True),
        ("127.96.0.0/16", "127.97.0.1", False),
        ("10.0.0.0/8", "10.255.255.255", True),
        ("10.0.0.0/8", "::1", False),
        ("127.96.0.10/32", "127.96.0.10", True),
    ],
)
def test_which_addresses_are_vips(cidr: str, address: str, inside: bool) -> None:
    assert mtls.Originator(-1, cidr).is_vip(address) is inside


def test_the_names_shim_says_which_service_a_name_resolved_to() -> None:
    resolver = names.ClusterResolver(
        ("127.0.0.1", 53), ["default.svc.cluster.local", "svc.cluster.local"], "cluster.local"
    )
    far = time.monotonic() + 60
    resolver._cache["hello.default.svc.cluster.local"] = (far, ["127.96.0.5"])
    resolver._cache["db-0.db.default.svc.cluster.local"] = (far, ["127.128.0.9"])
    resolver._cache["gone.default.svc.cluster.local"] = (far, [])

    assert resolver.service_name("hello") == HELLO
    assert resolver.service_name("hello.default") == HELLO
    assert resolver.service_name("HELLO.default.svc.cluster.local.") == HELLO
    assert resolver.service_name("db-0.db") is None  # a pod's name: no VIP
    assert resolver.service_name("gone") is None
    assert resolver.service_name("example.com") is None
    assert json.dumps(resolver.service_name("never-asked")) == "null"


def test_the_next_connection_to_a_vip_resumes_the_session_with_the_same_identity(
    client: None, credential: MeshCredential, mesh_vip: Server
) -> None:
    install(credential, LOOPBACK)

    answers = [get(f"http://127.0.0.1:{mesh_vip.port}/{n}") for n in range(3)]

    assert answers == [f"{CALLER} -"] * 3  # the principal survives the resumption
    assert mesh_vip.resumed == [False, True, True]


def test_the_other_clients_are_adapted_when_imported_and_never_imported_by_the_shim(
    client: None, credential: MeshCredential
) -> None:
    registered: list[str] = []
    before = set(sys.modules)

    mtls.install(
        os.dup(credential.reader_fd),
        LOOPBACK,
        when_imported=lambda name, patch: registered.append(name),
    )

    assert registered == [
        "urllib3.connection",
        "httpcore._sync.connection",
        "httpcore._async.connection",
        "aiohttp.connector",
    ]
    assert set(sys.modules) == before


POD_IP = "127.128.250.7"  # the instance's own address: any loopback address can be bound


class ClusterNames(Resolver):
    """A resolver that knows ``hello`` (a VIP on loopback) and nothing else."""

    def resolve(self, host: str) -> list[str]:
        return ["127.0.0.1"] if host == "hello" else []


def test_calls_to_cluster_addresses_leave_from_the_pod_ip(
    client: None,
    credential: MeshCredential,
    workload: Server,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lookup = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *rest: lookup("127.0.0.1" if host == "hello" else host, *rest),
    )
    mtls.install(
        os.dup(credential.reader_fd),
        "10.96.0.0/12",
        ClusterNames(),
        when_imported=lambda name, patch: None,
        pod_ip=POD_IP,
    )

    by_address = get(f"http://127.0.0.1:{workload.port}/by-address")
    by_name = get(f"http://hello:{workload.port}/by-name")

    assert (by_address, by_name) == ("plain /by-address", "plain /by-name")
    assert workload.peers == [POD_IP, POD_IP]


def test_a_pod_ip_that_cannot_be_bound_leaves_calls_as_they_were(
    client: None, credential: MeshCredential, workload: Server
) -> None:
    originator = mtls.install(
        os.dup(credential.reader_fd),
        "10.96.0.0/12",
        when_imported=lambda name, patch: None,
        pod_ip="192.0.2.1",  # TEST-NET-1: no address of this machine
    )

    assert get(f"http://127.0.0.1:{workload.port}/x") == "plain /x"
    assert workload.peers == ["127.0.0.1"]
    assert originator.bindable is False  # tried once, not at every call


@pytest.mark.parametrize(
    ("pod_ip", "host", "source"),
    [
        (POD_IP, "127.96.0.12", (POD_IP, 0)),  # a ClusterIP
        (POD_IP, "127.128.3.4", (POD_IP, 0)),  # another pod
        (POD_IP, "hello", (POD_IP, 0)),  # a cluster name
        (POD_IP, "example.com", None),  # a name the cluster does not know
        (POD_IP, "10.1.2.3", None),  # beyond the machine
        (POD_IP, "::1", None),  # IPv6: no pod IP of that family
        ("", "127.96.0.12", None),  # not in a pod
    ],
)
def test_which_connections_leave_from_the_pod_ip(
    pod_ip: str, host: str, source: tuple[str, int] | None
) -> None:
    originator = mtls.Originator(-1, LOOPBACK, pod_ip=pod_ip, resolve=ClusterNames().resolve)

    assert originator.source_for(host) == source
