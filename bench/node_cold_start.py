"""Benchmark: cold start of a hello-world Node.js function, through the gateway, to first byte.

Deploys N Node.js functions with the same code, restarts the daemon so that no instance runs (a
restart does not re-check generations that loaded before), makes one call to a spare function
(a fresh ``node``, after which the daemon keeps its spare processes started), waits until the
spares are warm and the machine is quiet, then calls each function once over one keep-alive
client connection: every one of those calls is a scale from zero, served by specialising a
spare. Then each function is called again, warm. ``--gap-ms`` pauses before every call; spares
are replenished in the background after each take, so with gaps shorter than a ``node`` start
(about 60 ms of CPU) some calls find a spare still booting, or none (``--gap-ms 0``: a burst).
For comparison, the same hello world through a fresh ``node`` process per call is timed too.

    .venv/bin/python bench/node_cold_start.py [--functions 100] [--gap-ms 200]

It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import harness as h

from funcmesh.model.objects import RawObject

WARMUP_FUNCTION = "warmup"
NODE_CODE = "module.exports = { foo: (event, context) => 'hello world' };\n"
FRESH_SCRIPT = (
    "const http = require('http');"
    "const server = http.createServer((q, s) => s.end('hello world'));"
    "server.listen(0, '127.0.0.1', () => process.stdout.write(server.address().port + '\\n'));"
)


def node_function(name: str, runtime: str) -> RawObject:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": "default", "labels": {"function": name}},
        "spec": {
            "runtime": runtime,
            "handler": "hello.foo",
            "function": NODE_CODE,
            "function-content-type": "text",
            "deps": "",
        },
    }


def node_runtime(daemon: h.Daemon) -> str:
    output = daemon.cli("get-server-config").stdout
    found = [word.strip(",") for word in output.split() if word.startswith("nodejs")]
    if not found:
        raise SystemExit(f"this machine offers no Node.js runtime:\n{output}")
    return found[0]


def node_processes(daemon_pid: int) -> tuple[list[int], list[int]]:
    """(instances, spares): the daemon's ``node`` children; a spare still has ``--spare`` in
    its command line, an instance has been renamed after its pod."""
    instances, spares = [], []
    for pid in h.children(daemon_pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "--spare" in command:
            spares.append(pid)
        elif command.startswith("funcmesh-node"):
            instances.append(pid)
    return instances, spares


def prepare_cold(daemon: h.Daemon, spares: int) -> None:
    daemon.restart()
    h.wait_quiet(daemon.pid)
    if node_processes(daemon.pid) != ([], []):
        raise RuntimeError("Node.js processes are running after the restart")
    with h.HttpConnection(daemon.gateway_address) as connection:
        answer = connection.get(f"/function/{WARMUP_FUNCTION}")
        if answer.status != 200:
            raise RuntimeError(f"warm-up call answered {answer.status}: {answer.body!r}")
    h.wait_for(
        lambda: len(node_processes(daemon.pid)[1]) >= spares, timeout_s=30, what="the spares"
    )
    wait_all_quiet(daemon.pid)


def wait_all_quiet(daemon_pid: int) -> None:
    h.wait_quiet(daemon_pid)
    for pid in h.children(daemon_pid):
        h.wait_quiet(pid)


def call_each(
    daemon: h.Daemon, names: Sequence[str], gap_s: float
) -> tuple[list[h.Timed], list[h.Timed], dict[str, float]]:
    before = set(h.children(daemon.pid))
    daemon_cpu = h.cpu_ns(daemon.pid)
    with h.HttpConnection(daemon.gateway_address) as connection:
        cold = [_call(connection, name, gap_s) for name in names]
        daemon_cpu = h.cpu_ns(daemon.pid) - daemon_cpu
        instances, _ = node_processes(daemon.pid)
        instance_cpu = sum(h.cpu_ns(pid) for pid in instances if pid not in before)
        new_spares = [p for p in node_processes(daemon.pid)[1] if p not in before]
        warm = [_call(connection, name, gap_s) for name in names]
    cpu_ms = {
        "daemon": daemon_cpu / 1e6 / len(names),
        "instance": instance_cpu / 1e6 / len(names),
        "spare still waiting, each": sum(map(h.cpu_ns, new_spares)) / 1e6 / max(1, len(new_spares)),
    }
    return cold, warm, cpu_ms


def _call(connection: h.HttpConnection, name: str, gap_s: float) -> h.Timed:
    time.sleep(gap_s)
    answer = connection.get(f"/function/{name}")
    if answer.status != 200 or answer.body != b"hello world":
        raise RuntimeError(f"{name} answered {answer.status}: {answer.body[:200]!r}")
    return answer


def fresh_node(trials: int) -> list[float]:
    """ms from starting ``node`` with a hello-world server to its first answer byte."""
    node = shutil.which("node")
    if node is None:
        return []
    times = []
    for _ in range(trials):
        started = time.monotonic()
        with subprocess.Popen([node, "-e", FRESH_SCRIPT], stdout=subprocess.PIPE) as process:
            assert process.stdout is not None
            port = int(process.stdout.readline())
            with h.HttpConnection(("127.0.0.1", port)) as connection:
                connection.get("/")
            times.append((time.monotonic() - started) * 1000.0)
            process.kill()
    return times


def measure(args: argparse.Namespace) -> None:
    names = [f"node-cold-{i:04d}" for i in range(args.functions)]
    print(h.describe_machine())
    with h.scratch_dir(keep=args.keep) as scratch, h.Daemon(scratch) as daemon:
        runtime = node_runtime(daemon)
        started = time.monotonic()
        with daemon.api() as client:
            h.create_all(client, [node_function(n, runtime) for n in [WARMUP_FUNCTION, *names]])
            h.wait_all_ready(client, [WARMUP_FUNCTION, *names])
        print(f"deployed {len(names) + 1} {runtime} functions in {time.monotonic() - started:.1f}s")
        rows = []
        for gap_ms in args.gap_ms:
            prepare_cold(daemon, args.spares)
            cold, warm, cpu_ms = call_each(daemon, names, gap_ms / 1000.0)
            cold_ms = [c.ttfb_ms for c in cold]
            warm_ms = [w.ttfb_ms for w in warm]
            rows.append((f"cold, {gap_ms:g} ms apart", *h.summary_ms(cold_ms)))
            rows.append((f"warm, {gap_ms:g} ms apart", *h.summary_ms(warm_ms)))
            cpu = ", ".join(f"{who} {ms:.2f} ms" for who, ms in cpu_ms.items())
            print(f"CPU per cold start ({gap_ms:g} ms apart): {cpu}")
        fresh = fresh_node(args.fresh_trials)
        if fresh:
            rows.append(("a fresh `node` per call (no funcmesh)", *h.summary_ms(fresh)))
        print(f"\n{len(names)} cold starts per row, time to first byte through the gateway:")
        h.print_table(("call", *h.SUMMARY_HEADER), rows)


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--functions", type=int, default=100, help="cold starts (default 100)")
    parser.add_argument(
        "--gap-ms",
        type=float,
        nargs="+",
        default=[200.0, 50.0],
        help="pause before each call; one row pair per value (default 200 50)",
    )
    parser.add_argument("--spares", type=int, default=2, help="spares the daemon keeps (default 2)")
    parser.add_argument("--fresh-trials", type=int, default=20, help="fresh node starts timed")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
