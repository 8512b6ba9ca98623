"""Benchmark: warm calls of a hello-world function through the gateway, next to its peers.

Starts ``funcmesh up``, deploys the same hello-world handler under several scaling settings
(``autoscaling.funcmesh.io/target-concurrency`` and ``max-scale``), warms each up, and loads
each with ``wrk -t2 -c50 -d10s --latency`` through the gateway. In the same run it loads the
same handler served by Google's functions-framework in its default mode (Flask on gunicorn,
from a separate venv: ``--peers-venv``), one worker directly on its pod IP (found with
``funcmesh get pods -o wide``), and that worker directly and through the gateway at one
connection, whose p50 difference is what the gateway adds to a call.

    .venv/bin/python bench/warm_throughput.py [--duration-s 10] [--peers-venv bench/.venv-peers]

The peers venv: ``python3 -m venv bench/.venv-peers && bench/.venv-peers/bin/pip install
functions-framework==3.10.2``; without it the functions-framework row is skipped. wrk, the daemon
and its workers share the machine's cores. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import harness as h

FF_HANDLER = 'def handler(request):\n    return "hello world"\n'
PINNED = "t50-max1"  # min-scale 1: one worker, reachable directly on its pod IP


@dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    name: str
    label: str
    annotations: dict[str, str]


VARIANTS = (
    Variant(name="t1-max10", label="target 1, max-scale 10 (defaults)", annotations={}),
    Variant(
        name=PINNED,
        label="target 50, max-scale 1",
        annotations=h.scaling(target_concurrency="50", max_scale="1", min_scale="1"),
    ),
    Variant(
        name="t50-max2",
        label="target 50, max-scale 2",
        annotations=h.scaling(target_concurrency="50", max_scale="2"),
    ),
    Variant(
        name="t25-max2",
        label="target 25, max-scale 2",
        annotations=h.scaling(target_concurrency="25", max_scale="2"),
    ),
)


def pod_ip(daemon: h.Daemon, function: str) -> str:
    pods = h.running_pods(daemon, function)
    if len(pods) != 1:
        raise RuntimeError(f"expected one running pod of {function}, found {len(pods)}")
    return pods[0]["IP"]


@contextlib.contextmanager
def functions_framework(venv: Path, scratch: Path) -> Iterator[str | None]:
    """Google's functions-framework in its default mode; yields its URL (None if missing)."""
    command = venv / "bin" / "functions-framework"
    if not command.exists():
        print(f"functions-framework row skipped: {command} is missing (see --help)\n")
        yield None
        return
    source = scratch / "ff" / "main.py"
    source.parent.mkdir()
    source.write_text(FF_HANDLER)
    port = h.free_port()
    args = ["--target", "handler", "--source", str(source), "--host", "127.0.0.1"]
    with open(scratch / "ff.log", "wb") as log:
        process = subprocess.Popen(
            [str(command), *args, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        h.wait_for(lambda: _answers(("127.0.0.1", port)), timeout_s=30, what="functions-framework")
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(10)


def _answers(address: tuple[str, int]) -> bool:
    try:
        with h.HttpConnection(address, timeout_s=1) as connection:
            return connection.get("/").status == 200
    except OSError:
        return False


def load(url: str, *, connections: int, duration_s: float, warmup_s: float) -> h.LoadResult:
    if warmup_s > 0:
        h.run_wrk(url, connections=connections, threads=2, duration_s=warmup_s)
    return h.run_wrk(url, connections=connections, threads=2, duration_s=duration_s)


def row(label: str, connections: int, result: h.LoadResult) -> tuple[str, ...]:
    return (
        label,
        str(connections),
        f"{result.requests_per_s:,.0f}",
        f"{result.p50_ms:.3f}",
        f"{result.p99_ms:.3f}",
        str(result.errors),
    )


HEADER = ("server", "conns", "req/s", "p50 ms", "p99 ms", "errors")


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    duration_s, warmup_s = args.duration_s, args.warmup_s
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon:
        with daemon.api() as client:
            functions = [h.hello_function(v.name, annotations=v.annotations) for v in VARIANTS]
            h.create_all(client, functions)
            h.wait_all_ready(client, [v.name for v in VARIANTS])
        rows = []
        for variant in VARIANTS:
            url = f"{daemon.gateway_url}/function/{variant.name}"
            result = load(url, connections=50, duration_s=duration_s, warmup_s=warmup_s)
            instances = len(h.running_pods(daemon, variant.name))
            plural = "" if instances == 1 else "s"
            rows.append(row(f"gateway, {variant.label}: {instances} instance{plural}", 50, result))
        direct_url = f"http://{pod_ip(daemon, PINNED)}:8080/"
        result = load(direct_url, connections=50, duration_s=duration_s, warmup_s=0)
        rows.append(row("one funcmesh worker, directly (no gateway)", 50, result))
        with functions_framework(args.peers_venv, scratch) as ff_url:
            if ff_url is not None:
                result = load(ff_url, connections=50, duration_s=duration_s, warmup_s=warmup_s)
                rows.append(row("functions-framework 3.10.2 (Flask, gunicorn)", 50, result))
        print()
        h.print_table(HEADER, rows)
        gateway_url = f"{daemon.gateway_url}/function/{PINNED}"
        single_connection(direct_url, gateway_url, args)


def single_connection(direct_url: str, gateway_url: str, args: argparse.Namespace) -> None:
    """Alternate direct and gateway runs at -c1; the p50 difference is the gateway's cost."""
    p50s: dict[str, list[float]] = {"direct": [], "gateway": []}
    rows = []
    for _ in range(args.rounds):
        for label, url in (("direct", direct_url), ("gateway", gateway_url)):
            result = h.run_wrk(url, connections=1, threads=1, duration_s=args.latency_duration_s)
            p50s[label].append(result.p50_ms)
            rows.append(row(f"{label}: the same worker ({PINNED})", 1, result))
    h.print_table(HEADER, rows)
    added_ms = statistics.median(p50s["gateway"]) - statistics.median(p50s["direct"])
    print(f"the gateway adds {added_ms:.3f} ms at p50 (medians of {args.rounds} rounds)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--duration-s", type=float, default=10, help="per -c50 row (10)")
    parser.add_argument("--warmup-s", type=float, default=1, help="before each -c50 row (1)")
    parser.add_argument("--latency-duration-s", type=float, default=3, help="per -c1 row (3)")
    parser.add_argument("--rounds", type=int, default=2, help="-c1 rounds (2)")
    parser.add_argument(
        "--peers-venv",
        type=Path,
        default=h.REPO / "bench" / ".venv-peers",
        help="venv with functions-framework (bench/.venv-peers)",
    )
    measure(parser.parse_args(argv))


if __name__ == "__main__":
    main()
