"""``funcmesh dns lookup`` against a real DNS server (run in a thread with its own loop)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from funcmesh.cli.main import cli
from funcmesh.nameserver.server import NameServer
from tests.unit.nameserver.cluster import cluster, endpoints, service


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    """HOST:PORT of a server for the test cluster plus a headless Service too big for UDP."""
    table = cluster()
    table.put_service(service("big", None, ("http", 80, "TCP")))
    table.put_endpoints(
        endpoints("big", [(f"127.128.1.{n}", None) for n in range(1, 61)], ("http", 80))
    )
    loop = asyncio.new_event_loop()
    server = NameServer(table, forwarder=None)
    address = loop.run_until_complete(server.listen("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"{address[0]}:{address[1]}"
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def lookup(server: str, *args: str) -> tuple[int, str]:
    runner = CliRunner()
    result = runner.invoke(cli, ["dns", "lookup", *args, "--dns-server", server])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["web"], "Name:\tweb.default.svc.cluster.local\nAddress: 127.96.0.20\n"),
        (["web.default.svc"], "Name:\tweb.default.svc.cluster.local\nAddress: 127.96.0.20\n"),
        (["api", "-n", "prod"], "Name:\tapi.prod.svc.cluster.local\nAddress: 127.96.0.40\n"),
        (["v6", "AAAA"], "Name:\tv6.default.svc.cluster.local\nAddress: fd00::20\n"),
        (
            ["_http._tcp.web", "srv"],
            "_http._tcp.web.default.svc.cluster.local\tservice = 0 100 80 "
            "web.default.svc.cluster.local.\n",
        ),
        (["127.96.0.20"], "20.0.96.127.in-addr.arpa\tname = web.default.svc.cluster.local.\n"),
        (["dns-version.cluster.local", "TXT"], 'dns-version.cluster.local\ttext = "1.1.0"\n'),
        (["cluster.local.", "NS"], "cluster.local\tnameserver = ns.dns.cluster.local.\n"),
        (
            ["ext", "CNAME"],
            "ext.default.svc.cluster.local\tcanonical name = example.test.\n",
        ),
        (["cluster.local.", "SOA"], "ns.dns.cluster.local. hostmaster.cluster.local. "),
    ],
    ids=["short", "ns.svc", "namespace", "aaaa", "srv", "ptr", "txt", "ns", "cname", "soa"],
)
def test_lookups_print_like_nslookup(dns_server: str, args: list[str], expected: str) -> None:
    code, output = lookup(dns_server, *args)

    assert code == 0, output
    assert output.startswith(
        f"Server:\t\t127.0.0.1\nAddress:\t127.0.0.1#{dns_server.split(':')[1]}\n"
    )
    assert expected in output


def test_a_long_answer_comes_whole_over_tcp(dns_server: str) -> None:
    code, output = lookup(dns_server, "big")

    assert code == 0
    assert output.count("Address: 127.128.1.") == 60


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nothing"], "** server can't find nothing: NXDOMAIN\n"),
        (["web", "MX"], "*** Can't find web: No answer\n"),
        (["example.com."], "** server can't find example.com.: REFUSED\n"),
    ],
)
def test_failures_exit_1(dns_server: str, args: list[str], expected: str) -> None:
    code, output = lookup(dns_server, *args)

    assert code == 1
    assert output.endswith(expected)


def test_a_server_that_does_not_answer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        code, output = lookup(f"127.0.0.1:{silent.getsockname()[1]}", "web")

    assert code == 1
    assert "no servers could be reached" in output


def test_bad_arguments_are_usage_errors(dns_server: str) -> None:
    assert lookup(dns_server, "web", "BOGUS")[0] == 2
    assert lookup("nonsense", "web")[0] == 2
