"""Benchmark: the daemon's memory for the mesh state of 1,000 Services.

Starts ``funcmesh up`` (a /16 service network, so that 1,000 ClusterIPs fit) and three
hello-world servers of its own (Node's ``http`` module on pod-style addresses), then reads the
daemon's memory (``/proc/PID/smaps_rollup``, after the daemon used no CPU for a while) at each
step:

1. nothing created;
2. ``--services`` (default 1,000) selector-less Services with a port named ``http`` and their
   hand-written Endpoints, three addresses each (the three servers), created through the API
   8 at a time;
3. a VirtualService for each (two routes: a ``uri`` prefix match with a response header, a
   default route with retries and a timeout) and a DestinationRule for every fourth (round
   robin, outlier detection, a connection pool): every Service now has mesh rules, so the
   daemon listens on each one's VIP port;
4. one request to each of ``--called`` (default 20) of those Services through their VIPs, so
   that the mesh's per-destination state (balancers, connections, metrics) fills.

Prints RSS (and USS) at each step, the differences due to the Services and Endpoints and due
to the VirtualServices and DestinationRules, how many VIP sockets listen, and anything that
failed (a creation refused, a VIP not listening, an error in the daemon's log).

    .venv/bin/python bench/mesh_memory.py [--services 1000] [--called 20]

Target (issue 5): the mesh state (Services with their Endpoints and VirtualServices) costs at
most 100 MB more than none. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import harness as h

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import DESTINATION_RULE, ENDPOINTS, SERVICE, VIRTUAL_SERVICE
from funcmesh.model.objects import RawObject

PORT = 8080
BACKENDS = ("127.128.250.1", "127.128.250.2", "127.128.250.3")
NODE_HELLO = """
const http = require('http');
http.createServer((req, res) => {
  res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': 13});
  res.end('Hello, World!');
}).listen(+process.env.PORT, process.env.HOST);
"""
DR_EVERY = 4  # every fourth Service also gets a DestinationRule
QUIET_S = 2.0  # the daemon used no CPU that long: its collections and batches are done
TARGET_MB = 100


def service_name(index: int) -> str:
    return f"svc-{index:04d}"


def endpoints_object(name: str) -> RawObject:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name, "namespace": "default"},
        "subsets": [
            {
                "addresses": [{"ip": ip} for ip in BACKENDS],
                "ports": [{"name": "http", "port": PORT}],
            }
        ],
    }


def virtual_service(name: str) -> RawObject:
    destination = {"host": name, "port": {"number": PORT}}
    routes = [
        {
            "match": [{"uri": {"prefix": "/v2/"}}],
            "headers": {"response": {"set": {"x-route": "v2"}}},
            "route": [{"destination": destination}],
        },
        {
            "route": [{"destination": destination}],
            "timeout": "5s",
            "retries": {"attempts": 2, "perTryTimeout": "1s", "retryOn": "5xx,connect-failure"},
        },
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"hosts": [name], "http": routes},
    }


def destination_rule(name: str) -> RawObject:
    policy = {
        "loadBalancer": {"simple": "ROUND_ROBIN"},
        "connectionPool": {"http": {"http1MaxPendingRequests": 100}},
        "outlierDetection": {
            "consecutive5xxErrors": 5,
            "interval": "10s",
            "baseEjectionTime": "30s",
        },
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"host": name, "trafficPolicy": policy},
    }


@contextmanager
def backends() -> Iterator[None]:
    """Three hello-world servers, the addresses every Endpoints object lists."""
    processes = [
        subprocess.Popen(
            ["node", "-e", NODE_HELLO], env={**os.environ, "HOST": ip, "PORT": str(PORT)}
        )
        for ip in BACKENDS
    ]
    try:
        for ip in BACKENDS:
            h.wait_for(lambda: answers((ip, PORT)), timeout_s=10, what=f"the server on {ip}")  # noqa: B023
        yield
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def answers(address: tuple[str, int]) -> bool:
    try:
        with h.HttpConnection(address, timeout_s=2) as connection:
            return connection.get("/").status == 200
    except OSError:
        return False


class Steps:
    """The daemon's memory after each step, once it is quiet."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rows: list[tuple[str, ...]] = []
        self.rss: dict[str, int] = {}

    def record(self, label: str, *, took_s: float | None = None) -> None:
        waited_s = h.wait_quiet(self.pid, quiet_s=QUIET_S, timeout_s=300)
        memory = h.memory_of(self.pid)
        previous = list(self.rss.values())[-1] if self.rss else memory.rss_bytes
        self.rss[label] = memory.rss_bytes
        self.rows.append(
            (
                label,
                "-" if took_s is None else f"{took_s:.1f}",
                f"{waited_s:.1f}",
                h.megabytes(memory.rss_bytes),
                h.megabytes(memory.uss_bytes),
                f"{(memory.rss_bytes - previous) / (1 << 20):+.1f}",
            )
        )
        print(f"{label}: RSS {h.megabytes(memory.rss_bytes)} MiB", flush=True)


def timed(action: Callable[[], list[str]], failures: list[str]) -> float:
    started_s = time.monotonic()
    failures.extend(action())
    return time.monotonic() - started_s


def vip_sockets(service_cidr: str) -> int:
    """Listening TCP sockets on addresses of the daemon's service network (its VIP ports)."""
    network = ipaddress.ip_network(service_cidr)
    return sum(ipaddress.ip_address(ip) in network for ip, _ in h.listening_sockets().values())


def call_some(client: ApiClient, names: list[str]) -> list[str]:
    """One GET to each Service's VIP; the failures."""
    failures = []
    for name in names:
        ip = client.get(SERVICE, "default", name)["spec"]["clusterIP"]
        try:
            with h.HttpConnection((ip, PORT), timeout_s=5) as connection:
                status = connection.get("/").status
        except OSError as exc:
            failures.append(f"GET {name} ({ip}:{PORT}): {exc}")
            continue
        if status != 200:
            failures.append(f"GET {name} ({ip}:{PORT}): HTTP {status}")
    return failures


def log_problems(daemon: h.Daemon) -> list[str]:
    text = daemon.log_path.read_text(errors="replace") if daemon.log_path.exists() else ""
    return [line for line in text.splitlines() if " ERROR " in line or "Traceback" in line]


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    cidr = f"127.{random.randint(97, 126)}.0.0/16"
    names = [service_name(i) for i in range(args.services)]
    print(
        f"{args.services:,} Services with 3 endpoints each, {args.services:,} VirtualServices "
        f"(2 routes), {len(names[::DR_EVERY]):,} DestinationRules; service network {cidr}\n",
        flush=True,
    )
    failures: list[str] = []
    with (
        h.scratch_dir() as scratch,
        backends(),
        h.Daemon(scratch, extra_env={"FUNCMESH_SERVICE_CIDR": cidr}) as daemon,
        daemon.api() as client,
    ):
        steps = Steps(daemon.pid)
        steps.record("nothing created")
        took_s = timed(
            lambda: h.create_objects(client, SERVICE, [h.http_service(n, port=PORT) for n in names])
            + h.create_objects(client, ENDPOINTS, [endpoints_object(n) for n in names]),
            failures,
        )
        steps.record(f"{args.services:,} Services + Endpoints", took_s=took_s)
        listening_before = vip_sockets(cidr)
        took_s = timed(
            lambda: h.create_objects(client, VIRTUAL_SERVICE, [virtual_service(n) for n in names])
            + h.create_objects(
                client, DESTINATION_RULE, [destination_rule(n) for n in names[::DR_EVERY]]
            ),
            failures,
        )
        steps.record("+ VirtualServices and DestinationRules", took_s=took_s)
        listening = vip_sockets(cidr)
        called = random.sample(names, min(args.called, len(names)))
        took_s = timed(lambda: call_some(client, called), failures)
        steps.record(f"+ one request to {len(called)} of them", took_s=took_s)
        peak_bytes = h.peak_rss_bytes(daemon.pid)
        failures.extend(log_problems(daemon))
    header = ("step", "create s", "quiet wait s", "RSS MiB", "USS MiB", "change MiB")
    print()
    h.print_table(header, steps.rows)
    report(steps.rss, peak_bytes=peak_bytes)
    print(
        f"VIP sockets listening: {listening_before:,} with the Services alone (kernel NAT serves "
        f"plain Services where it may), {listening:,} with mesh rules "
        f"({listening - listening_before:,} more; {args.services:,} expected)"
    )
    print(f"failures: {len(failures)}")
    for failure in failures[:20]:
        print(f"  {failure}")


def report(rss: dict[str, int], *, peak_bytes: int) -> None:
    base, services, rules, called = rss.values()
    mib = 1 << 20
    mb = 1_000_000
    print(f"Services + Endpoints over nothing: {(services - base) / mib:+.1f} MiB")
    print(
        "VirtualServices + DestinationRules over the Services alone: "
        f"{(rules - services) / mib:+.1f} MiB"
    )
    print(f"requests (caches filled): {(called - rules) / mib:+.1f} MiB")
    total = called - base
    verdict = "met" if total <= TARGET_MB * mb else "MISSED"
    print(
        f"the mesh state in all: {total / mib:+.1f} MiB = {total / mb:.1f} MB "
        f"(target <= {TARGET_MB} MB: {verdict}); peak RSS {h.megabytes(peak_bytes)} MiB"
    )


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--called", type=int, default=20)
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
