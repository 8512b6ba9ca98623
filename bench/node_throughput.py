"""Benchmark: warm calls of a hello-world Node.js function through the gateway.

Starts ``funcmesh up``, deploys the same Node.js hello world under several scaling settings
(``autoscaling.funcmesh.io/target-concurrency`` and ``max-scale``), warms each up and loads each
with ``wrk -t2 -c50 -d10s --latency`` through the gateway. For reference it also loads one
instance directly on its pod IP (no gateway) and a bare ``node`` hello-world server. wrk, the
daemon and its instances share the machine's cores.

    .venv/bin/python bench/node_throughput.py [--duration-s 10] [--warmup-s 3]

It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import harness as h
from node_cold_start import node_function, node_runtime

from funcmesh.model.objects import RawObject

PINNED = "node-t50-max1"  # min-scale 1: one instance, reachable directly on its pod IP
BARE_NODE = (
    "const http = require('http');"
    "const server = http.createServer((q, s) => s.end('hello world'));"
    "server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    name: str
    label: str
    annotations: dict[str, str]


VARIANTS = (
    Variant(name="node-t1-max10", label="target 1, max-scale 10 (defaults)", annotations={}),
    Variant(
        name=PINNED,
        label="target 50, max-scale 1",
        annotations=h.scaling(target_concurrency="50", max_scale="1", min_scale="1"),
    ),
    Variant(
        name="node-t25-max2",
        label="target 25, max-scale 2",
        annotations=h.scaling(target_concurrency="25", max_scale="2"),
    ),
)


def function(variant: Variant, runtime: str) -> RawObject:
    obj = node_function(variant.name, runtime)
    obj["metadata"]["annotations"] = variant.annotations
    return obj


@contextlib.contextmanager
def bare_node() -> Iterator[str | None]:
    node = shutil.which("node")
    if node is None:
        yield None
        return
    with subprocess.Popen([node, "-e", BARE_NODE], stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.terminate()


def load(url: str, *, duration_s: float, warmup_s: float) -> h.LoadResult:
    if warmup_s > 0:
        h.run_wrk(url, connections=50, threads=2, duration_s=warmup_s)
    return h.run_wrk(url, connections=50, threads=2, duration_s=duration_s)


def row(label: str, result: h.LoadResult) -> tuple[str, ...]:
    return (
        label,
        f"{result.requests_per_s:,.0f}",
        f"{result.p50_ms:.3f}",
        f"{result.p99_ms:.3f}",
        str(result.errors),
    )


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon:
        runtime = node_runtime(daemon)
        with daemon.api() as client:
            h.create_all(client, [function(v, runtime) for v in VARIANTS])
            h.wait_all_ready(client, [v.name for v in VARIANTS])
        rows = []
        for variant in VARIANTS:
            url = f"{daemon.gateway_url}/function/{variant.name}"
            result = load(url, duration_s=args.duration_s, warmup_s=args.warmup_s)
            instances = len(h.running_pods(daemon, variant.name))
            plural = "" if instances == 1 else "s"
            label = f"gateway, {variant.label}: {instances} instance{plural}"
            rows.append(row(label, result))
        [pod] = h.running_pods(daemon, PINNED)
        direct = load(f"http://{pod['IP']}:8080/", duration_s=args.duration_s, warmup_s=0)
        rows.append(row("one instance directly on its pod IP (no gateway)", direct))
        with bare_node() as url:
            if url is not None:
                result = load(url, duration_s=args.duration_s, warmup_s=args.warmup_s)
                rows.append(row("bare node http hello world (no funcmesh)", result))
        print(f"\nwrk -t2 -c50 -d{args.duration_s:g}s, {runtime} hello world:")
        h.print_table(("server", "req/s", "p50 ms", "p99 ms", "errors"), rows)


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--duration-s", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="before each (default 3)")
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
