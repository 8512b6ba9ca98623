"""The worker shim's cluster-name resolver against a real UDP/TCP DNS server on loopback.

The server here is a small dnspython responder the test controls (it stands for funcmesh's
nameserver, which has its own suite): what is tested is the shim's search-list expansion,
its wire handling (UDP, truncation and TCP), caching, and the fallback to the machine's
resolver.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import socketserver
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

import funcmesh.runtime


def _load_shim(name: str) -> ModuleType:
    path = Path(funcmesh.runtime.__file__).parent / "shims" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


names = _load_shim("_funcmesh_names")

SEARCH = ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"]


class Records:
    def __init__(self) -> None:
        self.a: dict[str, list[str]] = {}
        self.asked: list[str] = []
        self.truncate = False


def answer(records: Records, wire: bytes, *, over_tcp: bool) -> bytes:
    query = dns.message.from_wire(wire)
    question = query.question[0]
    name = question.name.to_text().rstrip(".").lower()
    records.asked.append(name)
    reply = dns.message.make_response(query)
    if name not in records.a:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif records.truncate and not over_tcp:
        reply.flags |= dns.flags.TC
    else:
        reply.answer.append(dns.rrset.from_text(question.name, 5, "IN", "A", *records.a[name]))
    return reply.to_wire()


@pytest.fixture
def server() -> Iterator[tuple[Records, tuple[str, int]]]:
    records = Records()

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            sock.sendto(answer(records, data, over_tcp=False), self.client_address)

    class Tcp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            (length,) = struct.unpack("!H", self.request.recv(2))
            reply = answer(records, self.request.recv(length), over_tcp=True)
            self.request.sendall(struct.pack("!H", len(reply)) + reply)

    for _ in range(20):  # a port free for both UDP and TCP
        udp = socketserver.ThreadingUDPServer(("127.0.0.1", 0), Udp)
        port = udp.server_address[1]
        try:
            tcp = socketserver.ThreadingTCPServer(("127.0.0.1", port), Tcp)
            break
        except OSError:
            udp.server_close()
    else:
        pytest.fail("no port free for both UDP and TCP")
    threads = [
        threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True) for s in (udp, tcp)
    ]
    for thread in threads:
        thread.start()
    yield records, ("127.0.0.1", port)
    for srv in (udp, tcp):
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def restore_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    for attribute in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        monkeypatch.setattr(socket, attribute, getattr(socket, attribute))


def test_short_names_expand_with_the_search_list_within_the_zone() -> None:
    resolver = names.ClusterResolver(("127.0.0.1", 53), SEARCH, "cluster.local")
    assert resolver.candidates("hello") == [f"hello.{domain}" for domain in SEARCH]
    assert resolver.candidates("hello.default")[0] == "hello.default.default.svc.cluster.local"
    assert "hello.default.svc.cluster.local" in resolver.candidates("hello.default")
    # fewer than ndots(5) dots: search list first, then the name as it is
    assert resolver.candidates("web.default.svc.cluster.local")[-1] == (
        "web.default.svc.cluster.local"
    )
    assert resolver.candidates("web.default.svc.cluster.local.") == [
        "web.default.svc.cluster.local"
    ]
    assert resolver.candidates("example.com.") == []  # absolute and outside the zone


def test_a_service_name_resolves_through_getaddrinfo(
    server: tuple[Records, tuple[str, int]], restore_socket: None
) -> None:
    records, address = server
    records.a["hello.default.svc.cluster.local"] = ["127.96.0.7"]
    env = {names.SERVER_ENV: f"{address[0]}:{address[1]}", names.SEARCH_ENV: " ".join(SEARCH)}
    assert names.install(env) is not None

    infos = socket.getaddrinfo("hello", 8080, type=socket.SOCK_STREAM)
    assert [info[4] for info in infos] == [("127.96.0.7", 8080)]
    assert socket.gethostbyname("hello.default") == "127.96.0.7"
    assert socket.gethostbyname_ex("HELLO.default.svc.cluster.local")[2] == ["127.96.0.7"]
    asked = len(records.asked)
    socket.getaddrinfo("hello", 80)
    assert len(records.asked) == asked  # cached for the answer's TTL


def test_names_the_cluster_does_not_know_go_to_the_machine_resolver(
    server: tuple[Records, tuple[str, int]], restore_socket: None
) -> None:
    records, address = server
    names.install({names.SERVER_ENV: f"{address[0]}:{address[1]}"})

    assert socket.gethostbyname("localhost") == "127.0.0.1"
    assert socket.getaddrinfo("127.0.0.5", 1)[0][4] == ("127.0.0.5", 1)
    assert records.asked == []  # neither localhost nor an address literal is asked
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("nosuch-service-xyz", 80)
    assert records.asked  # the cluster was asked first


def test_a_truncated_answer_is_fetched_over_tcp(
    server: tuple[Records, tuple[str, int]], restore_socket: None
) -> None:
    records, address = server
    records.truncate = True
    records.a["big.default.svc.cluster.local"] = [f"127.128.0.{n}" for n in range(1, 40)]
    resolver = names.ClusterResolver(address, SEARCH, "cluster.local")
    assert len(resolver.resolve("big")) == 39


def test_a_dns_server_that_is_down_leaves_names_to_the_machine(restore_socket: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    names.install({names.SERVER_ENV: f"127.0.0.1:{closed_port}"})
    assert socket.gethostbyname("localhost") == "127.0.0.1"
    with pytest.raises(socket.gaierror):  # the cluster refused, the machine does not know it
        socket.getaddrinfo("hello", 80)


@pytest.mark.parametrize(
    "reply",
    [b"", b"\x00" * 5, struct.pack("!HHHHHH", 7, 0x8180, 1, 1, 0, 0) + b"\x05hello"],
)
def test_malformed_replies_are_os_errors(reply: bytes) -> None:
    with pytest.raises(OSError, match="DNS reply"):
        names.decode_a_answer(reply, 7)


NODE_PROBE = r"""
const names = require(process.argv[1]);
const dns = require('dns');
const http = require('http');
names.install(process.env);
const server = http.createServer((req, res) => res.end('reached')).listen(0, '127.0.0.1', () => {
  dns.lookup('hello', { all: true }, (err, all) => {
    dns.lookup('hello.default', (err2, first, family) => {
      dns.lookup('nosuch-service-xyz', (err3) => {
        http.get(`http://hello:${server.address().port}/`, (res) => {
          let body = '';
          res.on('data', (chunk) => { body += chunk; });
          res.on('end', () => {
            console.log(JSON.stringify({ all, first, family, missing: err3 && err3.code, body }));
            server.close();
          });
        });
      });
    });
  });
});
"""


def test_node_functions_resolve_cluster_names_through_dns_lookup(
    server: tuple[Records, tuple[str, int]],
) -> None:
    """http.get("http://hello:PORT") in Node reaches the address the cluster DNS gives."""
    records, address = server
    records.a["hello.default.svc.cluster.local"] = ["127.0.0.1"]
    shim = Path(funcmesh.runtime.__file__).parent / "shims" / "funcmesh_names.js"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        names.SERVER_ENV: f"{address[0]}:{address[1]}",
        names.SEARCH_ENV: " ".join(SEARCH),
    }
    result = subprocess.run(
        ["node", "-e", NODE_PROBE, str(shim)],
        capture_output=True, text=True, env=env, timeout=30, check=True,
    )  # fmt: skip
    seen = json.loads(result.stdout)
    assert seen["all"] == [{"address": "127.0.0.1", "family": 4}]
    assert (seen["first"], seen["family"]) == ("127.0.0.1", 4)
    assert seen["missing"] == "ENOTFOUND"  # not in the cluster: the machine's answer
    assert seen["body"] == "reached"
    assert "hello.default.svc.cluster.local" in records.asked
