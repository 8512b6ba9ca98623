"""Benchmark: the gateway's instructions per function call, counted, so a change can be judged
on a noisy machine.

Time and CPU per request move with whatever else the machine runs; the number of instructions
a request costs does not. This runs ``bench/mesh_cpu.py``'s pieces (the gateway with a mesh
table and a Service table, a tiny upstream and a client on one uvloop loop, requests one after
the other on one keep-alive connection to ``/function/fn``) under valgrind's callgrind, once
for ``--base`` and once for ``--base + --extra`` requests, and prints the difference divided by
``--extra``: instructions per request, start-up excluded (about +-1,500 between runs). Rows:

- ``client and upstream``: the requests sent to the upstream directly (what the gateway
  rows include besides the gateway);
- ``gateway, no telemetry``: no metrics, access log or tracer;
- ``gateway, metrics``: Istio's metrics only;
- ``gateway, the defaults``: metrics, the access log in memory, and a tracer that samples no
  new trace (as under load, past the default 100 traces a second: valgrind slows the clock
  that the rate limit reads, so the limit is set to 0 here to count the common case);
- ``gateway, the defaults, every call traced``: the same with every new trace sampled;
- ``gateway, the defaults, routed by a VirtualService``: the defaults, calling the Service
  ``hello`` whose VirtualService (a uri prefix match, a response header set) picks the route,
  as in ``bench/mesh_latency.py``.

    .venv/bin/python bench/mesh_instructions.py [--base 1000] [--extra 2000] [--rows MODE,...]

Needs ``valgrind`` (Debian's package of that name). Only user-space instructions are counted,
not the kernel's work for the sockets. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness as h

ROWS = (
    ("client and upstream", "direct"),
    ("gateway, no telemetry", "none"),
    ("gateway, metrics", "metrics"),
    ("gateway, the defaults", "defaults"),
    ("gateway, the defaults, every call traced", "traced"),
    ("gateway, the defaults, routed by a VirtualService", "routed"),
)
_COLLECTED = re.compile(rb"Collected : (\d+)")


async def serve(mode: str, count: int) -> None:
    """``count`` requests through the gateway set up for ``mode`` (one process, no sleeps)."""
    import mesh_cpu as m
    from prometheus_client import CollectorRegistry

    loop = asyncio.get_running_loop()
    server = await loop.create_server(m.Upstream, *m.UPSTREAM)
    upstream = server.sockets[0].getsockname()[:2]
    services, table = m.fill_tables(upstream)
    telemetry = tracer = None
    if mode != "none":
        access_log = None if mode == "metrics" else m.AccessLog(None, call_later=loop.call_later)
        telemetry = m.Telemetry(CollectorRegistry(), access_log, call_later=loop.call_later)
    if mode in ("defaults", "traced", "routed"):
        per_second = float("inf") if mode == "traced" else 0.0
        tracer = m.Tracer(m.TraceStore(), traces_per_second=per_second)
    gateway = m.make_gateway(upstream, services, table, telemetry=telemetry, tracer=tracer)
    await gateway.start()
    try:
        if mode == "direct":
            await m.run_requests(upstream, "/", count)
        elif mode == "routed":
            m.routed(table)
            await m.run_requests(gateway.address, "/function/hello", count)
        else:
            await m.run_requests(gateway.address, "/function/fn", count)
    finally:
        await gateway.close(1.0)
        server.close()


def instructions(mode: str, count: int) -> int:
    """User-space instructions of a whole run of ``count`` requests, start-up included."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        mode,
        str(count),
    ]
    result = subprocess.run(command, capture_output=True, check=True, cwd=h.REPO)
    found = _COLLECTED.search(result.stderr)
    if found is None:
        raise RuntimeError(f"callgrind printed no total: {result.stderr[-500:]!r}")
    return int(found.group(1))


def per_request(mode: str, base: int, extra: int) -> float:
    with ThreadPoolExecutor(2) as pool:
        short, long = pool.map(lambda count: instructions(mode, count), (base, base + extra))
    return (long - short) / extra


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        import uvloop

        uvloop.run(serve(sys.argv[2], int(sys.argv[3])))
        return
    parser = h.argument_parser(__doc__)
    parser.add_argument("--base", type=int, default=1000)
    parser.add_argument("--extra", type=int, default=2000)
    parser.add_argument("--rows", default="", help="only these modes, comma-separated")
    args: argparse.Namespace = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is missing: apt-get install valgrind")
    print(h.describe_machine())
    rows = []
    wanted = set(args.rows.split(",")) if args.rows else None
    for label, mode in ROWS:
        if wanted is not None and mode not in wanted:
            continue
        rows.append((label, f"{per_request(mode, args.base, args.extra):,.0f}"))
    h.print_table(("path", "instructions per request"), rows)


if __name__ == "__main__":
    main()
