"""The Python mTLS shim with the HTTP clients functions use besides urllib: requests (urllib3),
httpx (sync and async) and aiohttp, each in a Python process of its own (the shim patches them
for the whole process) against the real TLS and HTTP servers of test_mtls_shim.py.

The process installs the shims as a worker forked by the zygote does (``_funcmesh_worker``
first, then ``_funcmesh_mtls.install``) before the client is imported, unless a test says
otherwise, and prints what each call answered: "STATUS SCHEME BODY", the scheme being the one
of the URL the client reports for the response (the code asked for http://, so it stays)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import funcmesh.runtime
from funcmesh.mesh.identity import MeshIdentity
from funcmesh.runtime.mesh_credentials import MeshCredential
from tests.unit.runtime.test_mtls_shim import (
    CALLER,
    HELLO,
    LOOPBACK,
    Server,
)

SHIMS = Path(funcmesh.runtime.__file__).parent / "shims"
CLIENTS = [
    name
    for name, module in (
        ("requests", "requests"),
        ("httpx", "httpx"),
        ("httpx-async", "httpx"),
        ("aiohttp", "aiohttp"),
    )
    if importlib.util.find_spec(module) is not None
]
LIBRARIES = ("urllib3", "requests", "httpcore", "httpx", "aiohttp")
POD_IP = "127.128.250.7"  # the instance's own address: any loopback address can be bound

# argv: shims directory, credentials fd, config (JSON). Prints {"results", "imported_first"}.
SCRIPT = """\
import asyncio, json, socket, ssl, sys
shims, fd, config = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
sys.path.insert(0, shims)
import _funcmesh_worker
import _funcmesh_mtls

LIBRARIES = LIBRARIES_HERE
for name in config.get("preimport", ()):
    __import__(name)
imported_first = sorted(name for name in LIBRARIES if name in sys.modules)


class Resolver:  # the names shim's, as far as the mTLS shim asks: "hello" is a Service
    def service_name(self, host):
        return config["hello"] if host == "hello" else None

    def resolve(self, host):
        return ["127.0.0.1"] if host == "hello" else []


lookup = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):  # anyio asks with bytes, the names shim takes both
    return lookup("127.0.0.1" if host in ("hello", b"hello") else host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
_funcmesh_mtls.install(fd, config["cidr"], Resolver(), pod_ip=config.get("pod_ip", ""))
imported_by_shim = sorted(
    name for name in LIBRARIES if name in sys.modules and name not in imported_first
)

own = None  # the code's own client certificate, for https://
if config.get("own"):
    own = ssl.create_default_context(cafile=config["own"]["ca"])
    own.check_hostname = False
    own.load_cert_chain(config["own"]["cert"], config["own"]["key"])


def scheme(url):
    return str(url).split(":", 1)[0]


def with_requests(url):
    import requests
    if own is None:
        answer = requests.get(url, timeout=10)
    else:
        import urllib3
        urllib3.disable_warnings()
        own_files = (config["own"]["cert"], config["own"]["key"])
        answer = requests.get(url, timeout=10, verify=False, cert=own_files)
    return "%d %s %s" % (answer.status_code, scheme(answer.url), answer.text)


def with_httpx(url):
    import httpx
    with httpx.Client(timeout=10, verify=own or True) as client:
        answer = client.get(url)
    return "%d %s %s" % (answer.status_code, scheme(answer.url), answer.text)


async def with_httpx_async(url):
    import httpx
    async with httpx.AsyncClient(timeout=10, verify=own or True) as client:
        answer = await client.get(url)
    return "%d %s %s" % (answer.status_code, scheme(answer.url), answer.text)


async def with_aiohttp(url):
    import aiohttp
    async with aiohttp.ClientSession() as session:
        async with session.get(url, ssl=own if own is not None else True) as answer:
            text = await answer.text()
    return "%d %s %s" % (answer.status, scheme(answer.url), text)


CLIENTS = {
    "requests": with_requests,
    "httpx": with_httpx,
    "httpx-async": lambda url: asyncio.run(with_httpx_async(url)),
    "aiohttp": lambda url: asyncio.run(with_aiohttp(url)),
}
results = []
for url in config["urls"]:
    try:
        results.append(CLIENTS[config["client"]](url))
    except Exception as error:
        results.append("failed: %s: %s" % (type(error).__name__, error))
print(json.dumps({
    "results": results, "imported_first": imported_first, "imported_by_shim": imported_by_shim,
}))
""".replace("LIBRARIES_HERE", repr(LIBRARIES))


def run_client(
    credential: MeshCredential,
    client: str,
    urls: list[str],
    *,
    cidr: str = LOOPBACK,
    **config: Any,
) -> dict[str, Any]:
    """Run SCRIPT with ``client``; what it printed."""
    fd = os.dup(credential.reader_fd)
    try:
        options = {"client": client, "urls": urls, "cidr": cidr, "hello": HELLO, **config}
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(SHIMS), str(fd), json.dumps(options)],
            capture_output=True,
            text=True,
            timeout=30,
            pass_fds=(fd,),
            env={"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", "/")},
        )
    finally:
        os.close(fd)
    assert done.returncode == 0, done.stderr
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed


@pytest.mark.parametrize("client", CLIENTS)
def test_calls_to_a_mesh_vip_carry_the_identity_and_the_service_name(
    credential: MeshCredential, mesh_vip: Server, client: str
) -> None:
    port = mesh_vip.port
    urls = [f"http://127.0.0.1:{port}/by-address", f"http://hello:{port}/by-name"]

    printed = run_client(credential, client, urls)

    assert printed["results"] == [f"200 http {CALLER} -", f"200 http {CALLER} {HELLO}"]
    assert mesh_vip.seen == [f"tls {CALLER} -", f"tls {CALLER} {HELLO}"]
    assert printed["imported_first"] == []
    assert printed["imported_by_shim"] == []  # patched when the code imports them, not before


@pytest.mark.parametrize("client", CLIENTS)
def test_a_client_imported_before_the_shim_is_adapted_too(
    credential: MeshCredential, mesh_vip: Server, client: str
) -> None:
    library = client.partition("-")[0]

    printed = run_client(
        credential, client, [f"http://hello:{mesh_vip.port}/x"], preimport=[library]
    )

    assert library in printed["imported_first"]
    assert printed["results"] == [f"200 http {CALLER} {HELLO}"]


@pytest.mark.parametrize("client", CLIENTS)
def test_a_plain_workload_gets_the_call_again_in_plaintext_and_then_plaintext_only(
    credential: MeshCredential, workload: Server, client: str
) -> None:
    urls = [f"http://127.0.0.1:{workload.port}/first", f"http://hello:{workload.port}/second"]

    printed = run_client(credential, client, urls)

    assert printed["results"] == ["200 http plain /first", "200 http plain /second"]
    assert workload.seen == ["garbage", "plain", "plain"]  # one ClientHello, then plaintext


@pytest.mark.parametrize("client", CLIENTS)
def test_outside_the_service_cidr_nothing_changes(
    credential: MeshCredential, workload: Server, client: str
) -> None:
    printed = run_client(
        credential, client, [f"http://127.0.0.1:{workload.port}/x"], cidr="10.96.0.0/12"
    )

    assert printed["results"] == ["200 http plain /x"]
    assert workload.seen == ["plain"]


@pytest.mark.parametrize("client", CLIENTS)
def test_https_the_code_asks_for_is_never_touched(
    credential: MeshCredential,
    mesh_vip: Server,
    identity: MeshIdentity,
    tmp_path: Path,
    client: str,
) -> None:
    """The code's own HTTPS call with its own certificate: the VIP sees that one."""
    own = identity.issue("default", "own")
    files = {"ca": own.ca_pem, "cert": own.cert_pem, "key": own.key_pem}
    for name, text in files.items():
        (tmp_path / f"{name}.pem").write_text(text)
    paths = {name: str(tmp_path / f"{name}.pem") for name in files}

    printed = run_client(credential, client, [f"https://127.0.0.1:{mesh_vip.port}/"], own=paths)

    assert printed["results"] == ["200 https cluster.local/ns/default/sa/own -"]


@pytest.mark.skipif("requests" not in CLIENTS, reason="needs requests")
def test_requests_resumes_the_tls_session_of_its_last_connection(
    credential: MeshCredential, mesh_vip: Server
) -> None:
    urls = [f"http://127.0.0.1:{mesh_vip.port}/{n}" for n in range(3)]

    printed = run_client(credential, "requests", urls)

    assert printed["results"] == [f"200 http {CALLER} -"] * 3
    assert mesh_vip.resumed == [False, True, True]


@pytest.mark.parametrize("client", CLIENTS)
def test_calls_to_cluster_addresses_leave_from_the_pod_ip(
    credential: MeshCredential, workload: Server, client: str
) -> None:
    """By address and by a cluster name: the server sees the instance's pod IP."""
    urls = [f"http://127.0.0.1:{workload.port}/by-address", f"http://hello:{workload.port}/name"]

    printed = run_client(credential, client, urls, cidr="10.96.0.0/12", pod_ip=POD_IP)

    assert printed["results"] == ["200 http plain /by-address", "200 http plain /name"]
    assert workload.peers == [POD_IP, POD_IP]


@pytest.mark.parametrize("client", CLIENTS)
def test_an_upgraded_call_leaves_from_the_pod_ip_too(
    credential: MeshCredential, mesh_vip: Server, client: str
) -> None:
    printed = run_client(credential, client, [f"http://hello:{mesh_vip.port}/x"], pod_ip=POD_IP)

    assert printed["results"] == [f"200 http {CALLER} {HELLO}"]
    assert mesh_vip.peers == [POD_IP]
