"""Benchmark: the latency the mesh adds at 1,000 requests/s, next to calling the pod directly.

Starts ``funcmesh up`` with a hello-world workload (a Deployment of one replica running Node's
``http`` module, the fastest small server at hand), a Service ``hello`` whose port is named
``http`` and a VirtualService for it with one route (a ``uri`` prefix match on ``/`` that sets a
response header), so every request on the Service's VIP is served by the gateway: routing, the
destination's balancer (peak EWMA), metrics (``istio_requests_total``) and the access log, all
on. Then an open-loop load at a fixed rate (default 1,000 requests/s) from an asyncio client on
uvloop, on a few keep-alive connections (default 4), in alternating slices (default 1 s) to the
pod directly (its pod IP) and through the VIP, for ``--duration-s`` each (default 20). Each
request's latency is taken from the moment it was written to the moment its last byte came back.

Why alternating slices at the full rate, not two loads at 500 requests/s at once: each path sees
the rate the target names, the two never queue behind each other in the one-threaded pod, and
with short slices both sample the same moments of a shared machine (a slow second lands on
both). Open loop: request k is due at start + k / rate whatever the answers do; it goes out on
the connection idle longest (one request in flight per connection, no pipelining) or waits for
one to be free, and the "from due time" columns count that wait and the pacer's lateness (libuv
timers have millisecond resolution, so a request may leave up to ~1 ms after it was due: equal
for both paths).

The pacer sleeps whole milliseconds and never spins. Until 2026-11-27 it asked libuv for the
sub-millisecond rest, which libuv fires at once, so the client spun for up to ~0.5 ms before
each due time. On this machine's two cores the kernel often wakes the proxy on the core of the
client that just wrote to it, and `perf sched timehist` showed the proxy waiting there 0.2-0.5 ms
for the spinning client: a measurement artefact that grew with the proxy's CPU per request (a
bare uvloop relay burning 60 us per request read +0.48 ms at p90 with the spinning pacer and
+0.16 ms without it), and that the pod, called directly by Node in ~30 us, mostly escaped.

Then (unless ``--no-mtls``) the same with a PeerAuthentication STRICT for the hello pods: the
VIP then takes only mTLS, and the client presents a certificate of the mesh CA (``funcmesh mesh
cert``'s API) on its keep-alive connections (target: at most 0.5 ms added at p90, against the
pod called in plaintext). Then (unless ``--no-function``) the same for a Python hello-world
function (one instance: min-scale = max-scale = 1): ``/function/hello-fn`` on the gateway,
which takes the same mesh path (one destination, telemetry and the access log), against the
function's instance on its pod IP.

    .venv/bin/python bench/mesh_latency.py [--duration-s 20] [--rate 1000] [--slice-s 1]
        [--connections 4] [--no-mtls] [--no-function] [--rounds 1]

With ``--rounds N`` it measures N times, each with a fresh daemon, and ends with each
comparison's spread and how many rounds met each target: one round's p90 moves by about
+-0.05 ms from one daemon to the next on this machine.

The client, the daemon and the pod share the machine's cores: compare the rows of one run. The
daemon CPU line is the daemon's CPU time during the mesh slices less that during the direct
slices, per mesh request. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import math
import re
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import harness as h
import uvloop

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import (
    DEPLOYMENT,
    FUNCTION,
    PEER_AUTHENTICATION,
    SERVICE,
    VIRTUAL_SERVICE,
)
from funcmesh.model.objects import RawObject

PORT = 8080
SERVICE_NAME = "hello"
FUNCTION_NAME = "hello-fn"
ROUTE_HEADER = b"x-bench-route"  # set by the VirtualService's route: the answer was routed
NODE_HELLO = """
const http = require('http');
const server = http.createServer((req, res) => {
  res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': 13});
  res.end('Hello, World!');
});
server.keepAliveTimeout = 75000;
server.listen(+process.env.PORT, process.env.HOST);
"""
WARMUP_S = 1.0
TARGETS = {"p90": 0.3, "p99": 0.5}  # issue 5: what the mesh may add, in ms
MTLS_TARGETS = {"p90": 0.5}  # with PeerAuthentication STRICT
CUTS = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))


# ---- the open-loop client ----


@dataclass(slots=True)
class Exchange:
    """One request: when it was due, written, and answered (monotonic seconds)."""

    due_s: float
    sent_s: float = 0.0
    done_s: float = 0.0
    status: int = 0
    routed: bool = False


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight; reads the status line and
    Content-Length only, so the client adds next to nothing to what it times."""

    def __init__(self, request: bytes, on_done: Callable[[Connection, Exchange], None]) -> None:
        self._request = request
        self._on_done = on_done
        self._transport = cast(asyncio.Transport, None)
        self._buffer = b""
        self._exchange: Exchange | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def send(self, exchange: Exchange) -> None:
        self._exchange = exchange
        exchange.sent_s = time.monotonic()
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head, found, rest = self._buffer.partition(b"\r\n\r\n")
        if not found:
            return
        match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if match is None:
            raise RuntimeError(f"an answer without Content-Length: {head!r}")
        length = int(match.group(1))
        if len(rest) < length:
            return
        done_s = time.monotonic()
        exchange, self._exchange = self._exchange, None
        self._buffer = rest[length:]
        if exchange is None:
            raise RuntimeError("an answer to no request")
        exchange.done_s = done_s
        exchange.status = int(head.split(b" ", 2)[1])
        exchange.routed = ROUTE_HEADER in head.lower()
        self._on_done(self, exchange)

    def close(self) -> None:
        self._transport.close()


class Load:
    """Requests due at a fixed rate to one address, over keep-alive connections: a request goes
    out on a free connection or waits for the next one freed."""

    def __init__(
        self,
        label: str,
        address: tuple[str, int],
        path: str,
        *,
        routed: bool,
        tls: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        self.label = label
        self.tls = tls  # mTLS with a mesh certificate (the VIP's STRICT mode)
        self.server_name = server_name
        self.address = address
        self.path = path
        self.routed = routed  # answers must carry the route's header
        self.exchanges: list[Exchange] = []
        self.busy_s = 0.0  # the wall time of this load's slices
        self.daemon_cpu_ns = 0  # the daemon's CPU time during them
        self._open: list[Connection] = []
        self._free: collections.deque[Connection] = collections.deque()  # longest idle first
        self._waiting: collections.deque[Exchange] = collections.deque()
        self._left = 0
        self._finished: asyncio.Future[None] | None = None

    async def open(self, connections: int) -> None:
        request = f"GET {self.path} HTTP/1.1\r\nHost: {self.address[0]}\r\n\r\n".encode()
        loop = asyncio.get_running_loop()
        for _ in range(connections):
            _, connection = await loop.create_connection(
                lambda: Connection(request, self._answered),
                *self.address,
                ssl=self.tls,
                server_hostname=self.server_name if self.tls is not None else None,
            )
            self._open.append(connection)
        self._free.extend(self._open)

    def close(self) -> None:
        for connection in self._open:
            connection.close()

    async def run(self, *, rate: float, duration_s: float, keep: bool = True) -> None:
        """Send ``rate * duration_s`` requests due from now on; return once all are answered."""
        loop = asyncio.get_running_loop()
        count = round(rate * duration_s)
        interval_s = 1.0 / rate
        start_s = time.monotonic()
        self._left = count
        self._finished = loop.create_future()
        due = [Exchange(due_s=start_s + i * interval_s) for i in range(count)]
        pending = iter(due)
        upcoming: Exchange | None = next(pending, None)

        def tick() -> None:
            nonlocal upcoming
            now = time.monotonic()
            while upcoming is not None and upcoming.due_s <= now:
                self._dispatch(upcoming)
                upcoming = next(pending, None)
            if upcoming is not None:
                # Sleep whole milliseconds, never spin: libuv's timers count milliseconds, so
                # a shorter wait fires at once and the tick runs again and again until the due
                # time. That spin shared the core with the proxy just woken to take a request,
                # which then waited for it to end (see the module's docstring).
                wait_ms = math.ceil((upcoming.due_s - time.monotonic()) * 1000)
                loop.call_later(max(wait_ms, 0) / 1000, tick)

        tick()
        await asyncio.wait(
            [self._finished, *(c.lost for c in self._open)],
            timeout=60,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not self._finished.done():
            raise RuntimeError(
                f"{self.label}: {self._left} requests unanswered (a connection closed?)"
            )
        if keep:
            self.exchanges.extend(due)

    def _dispatch(self, exchange: Exchange) -> None:
        if self._free:
            self._free.popleft().send(exchange)
        else:
            self._waiting.append(exchange)

    def _answered(self, connection: Connection, exchange: Exchange) -> None:
        if self._waiting:
            connection.send(self._waiting.popleft())
        else:
            self._free.append(connection)
        self._left -= 1
        if self._left == 0 and self._finished is not None and not self._finished.done():
            self._finished.set_result(None)


async def interleave(loads: Sequence[Load], *, args: argparse.Namespace, daemon_pid: int) -> None:
    """Warm each load up, then alternate slices of the fixed rate until each had its duration."""
    for load in loads:
        await load.open(args.connections)
    try:
        for load in loads:
            await load.run(rate=args.rate, duration_s=WARMUP_S, keep=False)
        slices = max(1, round(args.duration_s / args.slice_s))
        gc.disable()  # a collection in the client would land on one slice only
        try:
            for _ in range(slices):
                for load in loads:
                    started_s, cpu_before = time.monotonic(), h.cpu_ns(daemon_pid)
                    await load.run(rate=args.rate, duration_s=args.slice_s)
                    load.busy_s += time.monotonic() - started_s
                    load.daemon_cpu_ns += h.cpu_ns(daemon_pid) - cpu_before
        finally:
            gc.enable()
    finally:
        for load in loads:
            load.close()


# ---- the numbers ----


def cuts_ms(values: Sequence[float]) -> list[float]:
    return [h.percentile(values, q) for _, q in CUTS] + [max(values)]


def print_comparison(
    direct: Load, mesh: Load, *, targets: dict[str, float] = TARGETS
) -> dict[str, float]:
    """Print the two loads' latencies and what the mesh adds; return the added ms by cut."""
    header = ("path", "requests", "errors", *(f"{n} ms" for n, _ in CUTS), "max ms")
    rows = []
    measured: dict[str, list[float]] = {}
    for load in (direct, mesh):
        sent = [(e.done_s - e.sent_s) * 1000 for e in load.exchanges]
        due = [(e.done_s - e.due_s) * 1000 for e in load.exchanges]
        errors = sum(e.status != 200 for e in load.exchanges)
        measured[load.label] = cuts_ms(sent)
        for what, values in (("written -> answered", sent), ("from due time", due)):
            cells = [f"{v:.3f}" for v in cuts_ms(values)]
            rows.append((f"{load.label}, {what}", len(load.exchanges), errors, *cells))
    added = [m - d for d, m in zip(measured[direct.label], measured[mesh.label], strict=True)]
    rows.append(("added by the mesh (written -> answered)", "", "", *(f"{v:+.3f}" for v in added)))
    h.print_table(header, rows)
    names = [n for n, _ in CUTS]
    for name, limit_ms in targets.items():
        value = added[names.index(name)]
        verdict = "met" if value <= limit_ms else "MISSED"
        print(f"the mesh adds {value:.3f} ms at {name} (target <= {limit_ms} ms: {verdict})")
    if mesh.routed:
        routed = sum(e.routed for e in mesh.exchanges)
        print(f"{routed:,} of {len(mesh.exchanges):,} answers carried the route's header")
    mesh_cpu_ns = mesh.daemon_cpu_ns / mesh.busy_s - direct.daemon_cpu_ns / direct.busy_s
    per_request_us = mesh_cpu_ns * mesh.busy_s / max(len(mesh.exchanges), 1) / 1000
    print(
        f"daemon CPU: {mesh.daemon_cpu_ns / mesh.busy_s / 1e7:.1f} % of a core in the mesh slices, "
        f"{direct.daemon_cpu_ns / direct.busy_s / 1e7:.1f} % in the direct ones: "
        f"{per_request_us:.0f} us per mesh request\n",
        flush=True,
    )
    return dict(zip(names, added, strict=False))


# ---- the workloads ----


def route_object() -> RawObject:
    """A VirtualService with one route: a uri prefix match that sets a response header."""
    route = {
        "match": [{"uri": {"prefix": "/"}}],
        "headers": {"response": {"set": {ROUTE_HEADER.decode(): "hello"}}},
        "route": [{"destination": {"host": SERVICE_NAME, "port": {"number": PORT}}}],
    }
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": SERVICE_NAME, "namespace": "default"},
        "spec": {"hosts": [SERVICE_NAME], "http": [route]},
    }


def routed_answer(address: tuple[str, int]) -> bool:
    """True once the VIP answers with the route's header (the mesh serves it)."""
    request = f"GET / HTTP/1.1\r\nHost: {address[0]}\r\nConnection: close\r\n\r\n"
    answer = b""
    try:
        with socket.create_connection(address, timeout=1) as sock:
            sock.sendall(request.encode())
            while chunk := sock.recv(65536):
                answer += chunk
    except OSError:
        return False
    return ROUTE_HEADER in answer.partition(b"\r\n\r\n")[0].lower()


def start_hello(client: ApiClient) -> tuple[tuple[str, int], tuple[str, int]]:
    """The Node Deployment, its Service and the VirtualService; (pod, VIP) addresses."""
    labels = {"app": SERVICE_NAME}
    client.create(DEPLOYMENT, h.node_deployment(SERVICE_NAME, NODE_HELLO, labels=labels, port=PORT))
    service = client.create(SERVICE, h.http_service(SERVICE_NAME, port=PORT, selector=labels))
    client.create(VIRTUAL_SERVICE, route_object())
    h.wait_for(
        lambda: len(h.ready_endpoints(client, SERVICE_NAME)) == 1, timeout_s=30, what="the pod"
    )
    [pod_ip] = h.ready_endpoints(client, SERVICE_NAME)
    vip = (str(service["spec"]["clusterIP"]), PORT)
    h.wait_for(lambda: routed_answer(vip), timeout_s=10, what="the VIP to route", interval_s=0.05)
    return (pod_ip, PORT), vip


def start_function(daemon: h.Daemon, client: ApiClient) -> tuple[str, int]:
    """A Python hello-world function with exactly one instance; its pod address."""
    one = h.scaling(min_scale="1", max_scale="1", target_concurrency="50")
    client.create(FUNCTION, h.hello_function(FUNCTION_NAME, annotations=one))
    h.wait_all_ready(client, [FUNCTION_NAME])
    h.wait_for(
        lambda: len(h.running_pods(daemon, FUNCTION_NAME)) == 1, timeout_s=30, what="the instance"
    )
    return (h.running_pods(daemon, FUNCTION_NAME)[0]["IP"], PORT)


def telemetry_counts(daemon: h.Daemon, service: str) -> tuple[float, int]:
    """Requests ``istio_requests_total`` counted for ``service`` and access log lines naming it."""
    text = h.api_text(daemon, "/metrics")
    fqdn = f"{service}.default.svc.cluster.local"
    counted = h.metric_sum(text, "istio_requests_total", destination_service=fqdn)
    log = daemon.home / "logs" / "mesh-access.log"
    lines = sum(fqdn in line for line in log.read_text().splitlines()) if log.exists() else 0
    return counted, lines


def strict_mtls(client: ApiClient) -> ssl.SSLContext:
    """A PeerAuthentication STRICT for the hello pods, and a client context with a mesh
    certificate (identity default/bench) that the VIP then requires; plaintext is reset."""
    client.create(
        PEER_AUTHENTICATION,
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {"name": SERVICE_NAME, "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": SERVICE_NAME}},
                "mtls": {"mode": "STRICT"},
            },
        },
    )
    issued = client.mesh_certificate("default", "bench")
    directory = Path(tempfile.mkdtemp(prefix="funcmesh-bench-mtls-"))
    (directory / "cert.pem").write_text(issued.certificate)
    (directory / "key.pem").write_text(issued.private_key)
    (directory / "ca.pem").write_text(issued.ca_certificate)
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.load_cert_chain(str(directory / "cert.pem"), str(directory / "key.pem"))
    time.sleep(0.5)  # the next connection takes the new mode
    return context


Added = dict[str, list[dict[str, float]]]  # per comparison, each round's added ms by cut


def measure(args: argparse.Namespace, added: Added) -> None:
    """One round: a fresh daemon, each comparison once; what the mesh added goes to ``added``."""
    print(h.describe_machine())
    print(
        f"open loop at {args.rate:g} requests/s, {args.connections} keep-alive connections per "
        f"path, alternating {args.slice_s:g} s slices, {args.duration_s:g} s per path "
        f"(after {WARMUP_S:g} s of warm-up each)\n",
        flush=True,
    )
    # the access log in its costliest form: every line formatted and written to the file
    access_log = {"FUNCMESH_ACCESS_LOG": "file"}
    with (
        h.scratch_dir() as scratch,
        h.Daemon(scratch, extra_env=access_log) as daemon,
        daemon.api() as client,
    ):
        pod, vip = start_hello(client)
        print(f"Node hello world: pod {pod[0]}:{pod[1]}, Service VIP {vip[0]}:{vip[1]} (routed)")
        direct = Load("pod directly", pod, "/", routed=False)
        mesh = Load("Service VIP (mesh)", vip, "/", routed=True)
        uvloop.run(interleave([direct, mesh], args=args, daemon_pid=daemon.pid))
        added.setdefault("plaintext, routed", []).append(print_comparison(direct, mesh))
        time.sleep(1.5)  # the access log is written in batches
        counted, lines = telemetry_counts(daemon, SERVICE_NAME)
        sent = len(mesh.exchanges) + round(args.rate * WARMUP_S)
        print(
            f"telemetry: istio_requests_total {counted:,.0f} and {lines:,} access log lines for "
            f"{SERVICE_NAME} ({sent:,} requests sent through the VIP, and the checks that it "
            "routes)\n"
        )
        if args.mtls:
            tls = strict_mtls(client)
            server_name = f"{SERVICE_NAME}.default.svc.cluster.local"
            print(f"PeerAuthentication STRICT for app={SERVICE_NAME}: mTLS with a mesh certificate")
            direct = Load("pod directly (plaintext)", pod, "/", routed=False)
            mtls = Load("Service VIP (mesh, mTLS)", vip, "/", routed=True, tls=tls,
                        server_name=server_name)  # fmt: skip
            uvloop.run(interleave([direct, mtls], args=args, daemon_pid=daemon.pid))
            mtls_added = print_comparison(direct, mtls, targets=MTLS_TARGETS)
            added.setdefault("mTLS STRICT", []).append(mtls_added)
        if args.function:
            instance = start_function(daemon, client)
            print(f"Python function {FUNCTION_NAME}: instance {instance[0]}:{instance[1]}")
            direct = Load("instance directly", instance, "/", routed=False)
            path = f"/function/{FUNCTION_NAME}"
            gateway = Load(f"gateway {path}", daemon.gateway_address, path, routed=False)
            uvloop.run(interleave([direct, gateway], args=args, daemon_pid=daemon.pid))
            added.setdefault("function path", []).append(print_comparison(direct, gateway))


def print_rounds(added: Added) -> None:
    """Each comparison's added latency over the rounds, and how many met each target."""
    print(f"over {max(len(rounds) for rounds in added.values())} rounds (a fresh daemon each):")
    for label, rounds in added.items():
        targets = MTLS_TARGETS if label == "mTLS STRICT" else TARGETS
        for name, limit_ms in targets.items():
            values = sorted(r[name] for r in rounds)
            met = sum(v <= limit_ms for v in values)
            print(
                f"  {label}: added at {name} {values[0]:+.3f} to {values[-1]:+.3f} ms, median "
                f"{statistics.median(values):+.3f}; target <= {limit_ms} ms met in {met} of "
                f"{len(values)}"
            )


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--duration-s", type=float, default=20.0, help="per path")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s")
    parser.add_argument("--slice-s", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=4, help="per path")
    parser.add_argument("--function", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--mtls",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also through the VIP with PeerAuthentication STRICT and a mesh certificate",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure this many times, with a fresh daemon each"
    )
    args = parser.parse_args()
    added: Added = {}
    for _ in range(args.rounds):
        measure(args, added)
    if args.rounds > 1:
        print_rounds(added)


if __name__ == "__main__":
    main()
