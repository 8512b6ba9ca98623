"""Benchmark: what the gateway costs on the hot path, next to calling the instance directly.

Starts a minimal upstream (a raw asyncio Protocol that answers ``hello``, in its own process on a
pod-style address), a ``Gateway`` in this process with a fake ``Backends`` that leases that
upstream, and loads both with wrk (``apt-get install -y wrk``) or, without wrk, with a small
asyncio load generator in another process. Prints requests/s and latency for each, and for the
gateway the CPU time it spent per call (user plus system, of this process, which runs it).

    .venv/bin/python bench/gateway_proxy.py [--duration-s 10] [--connections 50] [--threads 2]
        [--rounds 1] [--gateway-only]

It measures; it asserts nothing. The load generator, the gateway and the upstream share the
machine's cores, so compare the two rows, not the absolute numbers with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import cast

import uvloop

from funcmesh.gateway.backends import Backend, Lease
from funcmesh.gateway.server import Gateway

UPSTREAM_HOST = "127.128.0.2"
HELLO = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


# ---- the upstream: answers every request on a keep-alive connection with "hello" ----


class HelloProtocol(asyncio.Protocol):
    """Counts request heads (blank lines) and answers each; pipelining-safe, no parsing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._tail = b""

    def data_received(self, data: bytes) -> None:
        data = self._tail + data
        count = data.count(b"\r\n\r\n")
        self._tail = data[data.rfind(b"\r\n\r\n") + 4 :] if count else data[-3:]
        if count:
            self._transport.write(HELLO * count)


async def serve_upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HelloProtocol, UPSTREAM_HOST, port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


# ---- the fake seam: every call is leased to the one upstream ----


class BenchLease:
    def __init__(self, port: int) -> None:
        self._address = (UPSTREAM_HOST, port)

    @property
    def address(self) -> tuple[str, int]:
        return self._address

    @property
    def instance_id(self) -> str:
        return "hello-bench"

    @property
    def timeout_s(self) -> float:
        return 30.0

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        pass

    def kill(self, reason: str) -> None:
        pass

    async def exit_reason(self, wait_s: float) -> str | None:
        return None


class BenchBackend:
    labels: dict[str, str] = {}  # noqa: RUF012 (read only)

    def __init__(self, port: int) -> None:
        self._lease = BenchLease(port)

    @property
    def display_name(self) -> str:
        return "default/hello"

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # never busy: nothing to queue for

    def try_acquire(self) -> Lease | None:
        return self._lease

    async def acquire(self) -> Lease:
        return self._lease


class BenchBackends:
    def __init__(self, port: int) -> None:
        self._backend = BenchBackend(port)

    def lookup(self, namespace: str, name: str) -> Backend | None:
        return self._backend if (namespace, name) == ("default", "hello") else None


# ---- load generators ----


async def run_wrk(url: str, *, connections: int, threads: int, duration_s: int) -> Result:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", url]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    output, _ = await process.communicate()
    return parse_wrk(output.decode())


def parse_wrk(text: str) -> Result:
    def latency_ms(percentile: str) -> float:
        match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"no {percentile}% latency in wrk output:\n{text}")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return float(match.group(1)) * scale

    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    error_count = int(errors.group(1)) if errors else 0
    if socket_errors:
        error_count += sum(int(n) for n in socket_errors.groups())
    if rate is None or total is None:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{text}")
    return Result(
        requests_per_s=float(rate.group(1)),
        p50_ms=latency_ms("50"),
        p99_ms=latency_ms("99"),
        errors=error_count,
        requests=int(total.group(1)),
    )


async def run_python_load(url: str, *, connections: int, threads: int, duration_s: int) -> Result:
    """Without wrk: the asyncio load generator, in a child process (``threads`` is ignored)."""
    command = [
        sys.executable,
        __file__,
        "--role=load",
        f"--url={url}",
        f"--connections={connections}",
        f"--duration-s={duration_s}",
    ]
    process = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE)
    output, _ = await process.communicate()
    rate, p50, p99, errors, requests = output.decode().split()
    return Result(
        requests_per_s=float(rate),
        p50_ms=float(p50),
        p99_ms=float(p99),
        errors=int(errors),
        requests=int(requests),
    )


async def generate_load(url: str, connections: int, duration_s: float) -> None:
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    request = f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\n\r\n".encode()
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration_s

    async def one_connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
        writer.close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    cut = statistics.quantiles(latencies, n=100)
    rate = len(latencies) / duration_s
    print(f"{rate:.0f} {cut[49] * 1000:.3f} {cut[98] * 1000:.3f} {errors} {len(latencies)}")


# ---- the benchmark ----


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def benchmark(args: argparse.Namespace) -> None:
    port = free_port(UPSTREAM_HOST)
    upstream = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--role=upstream", f"--port={port}", stdout=subprocess.PIPE
    )
    gateway = Gateway(BenchBackends(port), port=0)
    try:
        assert upstream.stdout is not None
        await upstream.stdout.readline()
        await gateway.start()
        host, gateway_port = gateway.address
        urls = {
            "direct": f"http://{UPSTREAM_HOST}:{port}/",
            "gateway": f"http://{host}:{gateway_port}/function/hello",
        }
        if args.gateway_only:
            del urls["direct"]
        await compare(urls, args)
    finally:
        await gateway.close(drain_s=1.0)
        upstream.send_signal(signal.SIGTERM)
        await upstream.wait()


async def compare(urls: dict[str, str], args: argparse.Namespace) -> None:
    load = run_wrk if shutil.which("wrk") and not args.python_load else run_python_load
    print(
        f"load: {'wrk' if load is run_wrk else 'asyncio load generator'}, "
        f"{args.duration_s}s per row; {os.cpu_count()} cores shared by load, gateway, upstream"
    )
    print(
        f"{'path':8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
        f"{'gateway CPU us/call':>19}"
    )
    phases = [("throughput", args.connections, args.threads), ("latency", 1, 1)]
    for phase, connections, threads in phases:
        p50s: dict[str, list[float]] = {label: [] for label in urls}
        for _ in range(args.rounds):
            for label, url in urls.items():
                cpu_before_s = time.process_time()  # the gateway runs in this process
                result = await load(
                    url, connections=connections, threads=threads, duration_s=args.duration_s
                )
                cpu_s = time.process_time() - cpu_before_s
                p50s[label].append(result.p50_ms)
                per_call_us = cpu_s / max(result.requests, 1) * 1e6 if label == "gateway" else None
                print_row(label, connections, result, per_call_us)
        if len(urls) == 2:
            added_ms = statistics.median(p50s["gateway"]) - statistics.median(p50s["direct"])
            print(f"  {phase}: the gateway adds {added_ms:.3f} ms at p50")


def print_row(label: str, connections: int, result: Result, cpu_us: float | None) -> None:
    cpu = "-" if cpu_us is None else f"{cpu_us:.1f}"
    print(
        f"{label:8} {connections:5d} {result.requests_per_s:9.0f} {result.p50_ms:8.3f} "
        f"{result.p99_ms:8.3f} {result.errors:6d} {cpu:>19}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["bench", "upstream", "load"], default="bench")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--url", default="")
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--python-load", action="store_true", help="use the asyncio generator")
    parser.add_argument("--gateway-only", action="store_true", help="skip the direct rows")
    args = parser.parse_args()
    if args.role == "upstream":
        uvloop.run(serve_upstream(args.port))
    elif args.role == "load":
        uvloop.run(generate_load(args.url, args.connections, args.duration_s))
    else:
        uvloop.run(benchmark(args))


if __name__ == "__main__":
    main()
