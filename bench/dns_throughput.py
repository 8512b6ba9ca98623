"""Benchmark: the cluster DNS server of a real ``funcmesh up`` against dnsmasq, with dnsperf.

Starts the daemon on free loopback ports (its DNS server too, no upstream), creates a few
Services through the CLI, and starts dnsmasq answering one static name. Then, in the same run:

1. saturation: ``dnsperf -l DURATION`` (1 client, 100 queries outstanding) on cluster names
   (3 Services and 1 name that does not exist, as a search-list walk asks) against funcmesh,
   and on the static name against dnsmasq: queries/s, and funcmesh's share of dnsmasq's;
2. latency at a fixed rate: ``dnsperf -Q 20000`` against funcmesh, every reply's latency
   (``-v``) turned into p50/p99/max.

    .venv/bin/python bench/dns_throughput.py [--duration-s 10] [--rounds 1] [--qps 20000]

Needs dnsperf and dnsmasq (``scripts/setup --bench``). It measures; it asserts nothing. The
load generator and the servers share the machine's cores: compare the rows of one run.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import harness as h

SERVICES = ("web", "api", "db")
CLUSTER_QUERIES = [
    *(f"{name}.default.svc.cluster.local A" for name in SERVICES),
    "nothing.default.svc.cluster.local A",  # NXDOMAIN, as the search list walk asks
]
STATIC_NAME = "web.fn.local"
READY_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    queries_per_s: float
    lost: int
    average_ms: float
    latencies_ms: tuple[float, ...] = ()


def free_dns_port() -> int:
    """A loopback port free for UDP and TCP."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with contextlib.suppress(OSError):
                tcp.bind(("127.0.0.1", port))
                return port


def run_dnsperf(port: int, queries: Path, *, duration_s: float, qps: int | None = None) -> Run:
    """``dnsperf -s 127.0.0.1 -p PORT -d QUERIES -l DURATION [-Q QPS -v]``."""
    command = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries)]
    command += ["-l", f"{duration_s:g}"]
    if qps is not None:
        command += ["-Q", str(qps), "-v"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rate = re.search(r"Queries per second:\s+([\d.]+)", output)
    lost = re.search(r"Queries lost:\s+(\d+)", output)
    average = re.search(r"Average Latency \(s\):\s+([\d.]+)", output)
    if rate is None or lost is None or average is None:
        raise RuntimeError(f"unexpected dnsperf output:\n{output[-2000:]}")
    latencies = tuple(
        float(line.rsplit(" ", 1)[1]) * 1000.0 for line in output.splitlines() if line[:2] == "> "
    )
    return Run(
        queries_per_s=float(rate.group(1)),
        lost=int(lost.group(1)),
        average_ms=float(average.group(1)) * 1000.0,
        latencies_ms=latencies,
    )


@contextlib.contextmanager
def dnsmasq(port: int) -> Iterator[None]:
    """dnsmasq answering STATIC_NAME only, in the foreground, stopped by its PID."""
    command = [
        shutil.which("dnsmasq") or "dnsmasq",
        "-k",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        f"--port={port}",
        f"--host-record={STATIC_NAME},127.1.2.3",
        "--pid-file=",
    ]
    if os.geteuid() == 0:
        command.append("--user=root")  # else it drops to "nobody" and needs no more
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_answering(port, STATIC_NAME)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)


def wait_answering(port: int, name: str) -> None:
    """Until the server on ``port`` answers ``name`` with an address."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    query = dns.message.make_query(name, "A")
    while True:
        with contextlib.suppress(OSError, dns.exception.Timeout):
            response = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
            if response.rcode() == dns.rcode.NOERROR and response.answer:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing on 127.0.0.1:{port} answers {name}")
        time.sleep(0.05)


def create_services(daemon: h.Daemon, directory: Path, dns_port: int) -> None:
    documents = []
    for name in SERVICES:
        documents.append(
            "apiVersion: v1\nkind: Service\n"
            f"metadata: {{name: {name}}}\n"
            f"spec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 80}}]}}\n"
        )
    path = directory / "services.yaml"
    path.write_text("---\n".join(documents))
    daemon.cli("apply", "-f", str(path))
    for name in SERVICES:
        wait_answering(dns_port, f"{name}.default.svc.cluster.local")


def query_file(directory: Path, name: str, lines: Sequence[str]) -> Path:
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


def benchmark(duration_s: float, rounds: int, qps: int) -> None:
    for tool in ("dnsperf", "dnsmasq"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: scripts/setup --bench")
    print(h.describe_machine(), flush=True)
    dns_port, dnsmasq_port = free_dns_port(), free_dns_port()
    env = {
        "FUNCMESH_DNS_ADDR": f"127.0.0.1:{dns_port}",
        "FUNCMESH_DNS_UPSTREAM": "none",
        "FUNCMESH_SERVICE_CIDR": f"127.{random.randint(97, 126)}.{random.randint(0, 255)}.0/24",
    }
    with h.scratch_dir() as scratch, tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        cluster = query_file(directory, "cluster.txt", CLUSTER_QUERIES)
        static = query_file(directory, "static.txt", [f"{STATIC_NAME} A"])
        with h.Daemon(scratch, extra_env=env) as daemon, dnsmasq(dnsmasq_port):
            create_services(daemon, directory, dns_port)
            rows = []
            for number in range(1, rounds + 1):
                ours = run_dnsperf(dns_port, cluster, duration_s=duration_s)
                theirs = run_dnsperf(dnsmasq_port, static, duration_s=duration_s)
                share = f"{100 * ours.queries_per_s / theirs.queries_per_s:.0f} %"
                rows.append(_row(f"funcmesh, cluster names (round {number})", ours, share))
                rows.append(_row(f"dnsmasq, static name (round {number})", theirs, "100 %"))
            print(f"saturation: dnsperf -l {duration_s:g}, 1 client, 100 queries outstanding")
            h.print_table(("server", "queries/s", "lost", "avg ms", "of dnsmasq"), rows)
            fixed = run_dnsperf(dns_port, cluster, duration_s=duration_s, qps=qps)
            latencies = fixed.latencies_ms
            print(f"fixed rate: dnsperf -Q {qps} -l {duration_s:g} against funcmesh")
            h.print_table(
                ("server", "queries/s", "lost", "p50 ms", "p99 ms", "max ms"),
                [
                    (
                        "funcmesh, cluster names",
                        f"{fixed.queries_per_s:,.0f}",
                        fixed.lost,
                        f"{h.percentile(latencies, 0.5):.3f}",
                        f"{h.percentile(latencies, 0.99):.3f}",
                        f"{max(latencies):.3f}",
                    )
                ],
            )


def _row(label: str, run: Run, share: str) -> tuple[str, ...]:
    return (label, f"{run.queries_per_s:,.0f}", str(run.lost), f"{run.average_ms:.3f}", share)


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--qps", type=int, default=20000, help="the fixed rate for latency")
    args = parser.parse_args()
    benchmark(args.duration_s, args.rounds, args.qps)


if __name__ == "__main__":
    main()
