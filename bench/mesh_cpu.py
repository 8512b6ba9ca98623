"""Benchmark: the gateway's CPU per request on the mesh path, in one process, without noise.

The latency a proxy adds at a low rate is mostly the CPU it spends on the request's way there
and back (each hop wakes an idle process). This measures that CPU where nothing else competes:
one uvloop loop in this process runs the gateway (``funcmesh.gateway.server.Gateway`` with a
mesh table, a Service table and telemetry: access log in memory, Istio's metrics, traces), a
tiny HTTP upstream (the "pod") and a client that sends requests one after the other on one
keep-alive connection. The rows compare:

- ``upstream directly``: the client and the upstream alone (what the client and the pod cost);
- ``function call``: ``/function/fn``, a function without mesh rules whose instance always has
  room (one attempt, measured: metrics, access log, span);
- ``mesh, no rules``: ``/function/hello`` where ``hello`` is a Service without rules (the
  default route, one attempt);
- ``mesh, routed``: the same with a VirtualService (a uri prefix match and a response header),
  as ``bench/mesh_latency.py`` routes;

and the difference of the last two to the first is the gateway's CPU per request, user and
system (``resource.getrusage``), averaged over ``--requests`` (default 20,000) after a warm-up.

    .venv/bin/python bench/mesh_cpu.py [--requests 20000] [--profile function|service|routed]

``--profile ROW`` prints the top functions of a cProfile run of that row (``function``,
``service`` or ``routed``). It prints; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
import time
from typing import cast

import harness as h
import uvloop
from prometheus_client import CollectorRegistry

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.gateway.server import Gateway
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.table import MeshTable
from funcmesh.mesh.telemetry import Telemetry
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.mesh.tracing import Tracer
from funcmesh.model.istio_networking import parse_virtual_service

UPSTREAM = ("127.0.0.1", 0)
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"


class Upstream(asyncio.Protocol):
    """Answers every request (one per read: the client sends one at a time)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._transport.write(ANSWER)


class Client(asyncio.Protocol):
    """Sends the next request when the answer is complete (it ends with the 13-byte body)."""

    def __init__(self, request: bytes, count: int, done: asyncio.Future[None]) -> None:
        self._request = request
        self._left = count
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not data.endswith(b"Hello, World!"):
            return
        self._left -= 1
        if self._left:
            self._transport.write(self._request)
        elif not self._done.done():
            self._done.set_result(None)


class Lease:
    """A function instance's lease, as the runtime's pool gives one (here: the upstream)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.instance_id = "fn-0"
        self.timeout_s = 60.0

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        pass

    def kill(self, reason: str) -> None:
        pass

    async def exit_reason(self, wait_s: float) -> str | None:
        return None


class Function:
    """One function whose instance always has room (the fast path of the runtime's pool)."""

    display_name = "default/fn"
    namespace = "default"

    def __init__(self, address: tuple[str, int]) -> None:
        self._lease = Lease(address)
        self.labels = {"function": "fn"}

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # never busy: nothing to queue for

    def try_acquire(self) -> Lease:
        return self._lease

    async def acquire(self) -> Lease:
        return self._lease


class Functions:
    generation = 0

    def __init__(self, function: Function) -> None:
        self._function = function

    def lookup(self, namespace: str, name: str) -> Function | None:
        return self._function if name == "fn" else None

    def select(self, namespace: str, selector: object) -> list[object]:
        return []


async def run_requests(address: tuple[str, int], path: str, count: int) -> float:
    """CPU seconds (user + system) this process spent on ``count`` requests to ``address``."""
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: hello\r\nUser-Agent: bench\r\n\r\n".encode()
    warm: asyncio.Future[None] = loop.create_future()
    transport, _ = await loop.create_connection(lambda: Client(request, 500, warm), *address)
    await warm
    transport.close()
    done: asyncio.Future[None] = loop.create_future()
    before = resource.getrusage(resource.RUSAGE_SELF)
    transport, _ = await loop.create_connection(lambda: Client(request, count, done), *address)
    await done
    after = resource.getrusage(resource.RUSAGE_SELF)
    transport.close()
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fill_tables(upstream: tuple[str, int]) -> tuple[ServiceTable, MeshTable]:
    services = ServiceTable()
    port = ServicePortView(name="http", protocol="TCP", port=8080, target_port=upstream[1])
    services.put_service(
        ServiceView(
            namespace="default",
            name="hello",
            type="ClusterIP",
            cluster_ip=None,
            ports=(port,),
            selector=None,
        )
    )
    subset = EndpointSubsetView(
        ready=(EndpointAddressView(ip=upstream[0], pod="hello-5d8f7c9b4-x7k2q"),),
        not_ready=(),
        ports=(EndpointPortView(name="http", port=upstream[1]),),
    )
    services.put_endpoints(EndpointsView(namespace="default", name="hello", subsets=(subset,)))
    return services, MeshTable()


def routed(table: MeshTable) -> None:
    table.put_virtual_service(
        parse_virtual_service(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "hello", "namespace": "default"},
                "spec": {
                    "hosts": ["hello"],
                    "http": [
                        {
                            "match": [{"uri": {"prefix": "/"}}],
                            "headers": {"response": {"set": {"x-bench-route": "hello"}}},
                            "route": [{"destination": {"host": "hello"}}],
                        }
                    ],
                },
            }
        )
    )


def make_gateway(
    upstream: tuple[str, int],
    services: ServiceTable,
    table: MeshTable,
    *,
    telemetry: Telemetry | None,
    tracer: Tracer | None,
) -> Gateway:
    """The gateway, with the one function ``fn`` whose instance is ``upstream``."""
    return Gateway(
        Functions(Function(upstream)),  # type: ignore[arg-type]
        port=0,
        mesh=table,
        services=services,
        telemetry=telemetry,
        tracer=tracer,
    )


async def measure(args: argparse.Namespace) -> list[tuple[str, float]]:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, *UPSTREAM)
    upstream = cast(tuple[str, int], server.sockets[0].getsockname()[:2])
    services, table = fill_tables(upstream)
    access_log = AccessLog(None, call_later=loop.call_later)
    telemetry = Telemetry(CollectorRegistry(), access_log, call_later=loop.call_later)
    tracer = Tracer(TraceStore())
    gateway = make_gateway(upstream, services, table, telemetry=telemetry, tracer=tracer)
    await gateway.start()
    rows: list[tuple[str, float]] = []
    try:
        count = args.requests
        direct = await run_requests(upstream, "/", count)
        rows.append(("upstream directly", direct))
        for key, name, path in (
            ("function", "function call", "/function/fn"),
            ("service", "mesh, no rules", "/function/hello"),
            ("routed", "mesh, routed", "/function/hello"),
        ):
            if key == "routed":
                routed(table)
            profiler = cProfile.Profile() if args.profile == key else None
            if profiler is not None:
                profiler.enable()
            rows.append((name, await run_requests(gateway.address, path, count)))
            if profiler is not None:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(35)
    finally:
        await gateway.close(1.0)
        server.close()
    return rows


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--profile", choices=("function", "service", "routed"))
    args = parser.parse_args()
    print(h.describe_machine())
    started = time.monotonic()
    rows = uvloop.run(measure(args))
    direct = rows[0][1]
    table = [
        (name, f"{cpu / args.requests * 1e6:.1f}", f"{(cpu - direct) / args.requests * 1e6:+.1f}")
        for name, cpu in rows
    ]
    h.print_table(("path", "CPU us per request", "gateway's share us"), table)
    print(f"({args.requests:,} sequential requests per row, {time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
