"""Benchmark: a 90/10 canary between two versions of a function, through the gateway and a VIP.

Starts ``funcmesh up`` with two Python Functions, ``hello-v1`` and ``hello-v2`` (labels
``app: hello`` and ``version: v1``/``v2``; each answers its version), a Service ``hello``
selecting ``app: hello`` (port 8080 named ``http``, targetPort 8080), a DestinationRule with the
subsets ``v1`` and ``v2`` by the ``version`` label and a VirtualService sending 90 % to ``v1`` and
10 % to ``v2``: the Istio YAML of tests/e2e/test_mesh_routing.py, the weighted route alone. Then
``--calls`` calls (default 2,000) one after another on one keep-alive connection, through the
gateway (``/function/hello``) and through the Service's VIP, and prints the share of ``v2``
each way.

    .venv/bin/python bench/mesh_canary.py [--calls 2000]

Target (issue 5): 10 +/- 2 % to v2. Over 2,000 independent draws of 10 % the share has a
standard deviation of 0.67 %, so 8-12 % is three of them. It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import harness as h

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import DESTINATION_RULE, FUNCTION, SERVICE, VIRTUAL_SERVICE
from funcmesh.model.objects import RawObject

PORT = 8080
APP = "hello"
VERSIONS = ("v1", "v2")
WEIGHTS = {"v1": 90, "v2": 10}
CANARY = "v2"
TARGET_SHARE, TARGET_TOLERANCE = 0.10, 0.02
VERSION_CODE = 'def handler(event, context):\n    return "{version}"\n'


def version_function(version: str) -> RawObject:
    function = h.hello_function(f"{APP}-{version}")
    function["metadata"]["labels"].update({"app": APP, "version": version})
    function["spec"]["function"] = VERSION_CODE.replace("{version}", version)
    return function


def destination_rule() -> RawObject:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": APP, "namespace": "default"},
        "spec": {
            "host": APP,
            "subsets": [{"name": v, "labels": {"version": v}} for v in VERSIONS],
        },
    }


def virtual_service() -> RawObject:
    route = [
        {"destination": {"host": APP, "subset": version}, "weight": weight}
        for version, weight in WEIGHTS.items()
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": APP, "namespace": "default"},
        "spec": {"hosts": [APP], "http": [{"route": route}]},
    }


def start_canary(client: ApiClient) -> tuple[str, int]:
    """The two functions, the Service and the rules; the Service's VIP."""
    for version in VERSIONS:
        client.create(FUNCTION, version_function(version))
    h.wait_all_ready(client, [f"{APP}-{v}" for v in VERSIONS])
    client.create(DESTINATION_RULE, destination_rule())
    client.create(VIRTUAL_SERVICE, virtual_service())
    service = client.create(SERVICE, h.http_service(APP, port=PORT, selector={"app": APP}))
    return str(service["spec"]["clusterIP"]), PORT


def answers(address: tuple[str, int], path: str) -> bool:
    try:
        with h.HttpConnection(address, timeout_s=5) as connection:
            return connection.get(path).status == 200
    except OSError:
        return False


def call_many(address: tuple[str, int], path: str, calls: int) -> tuple[Counter[str], list[float]]:
    """``calls`` GETs on one connection: the answers' bodies counted, the latencies in ms."""
    seen: Counter[str] = Counter()
    latencies = []
    with h.HttpConnection(address) as connection:
        for _ in range(calls):
            timed = connection.get(path)
            seen[timed.body.decode() if timed.status == 200 else f"HTTP {timed.status}"] += 1
            latencies.append((timed.done_s - timed.sent_s) * 1000)
    return seen, latencies


def row(label: str, seen: Counter[str], latencies: list[float], took_s: float) -> tuple[str, ...]:
    calls = sum(seen.values())
    share = seen[CANARY] / calls
    verdict = "met" if abs(share - TARGET_SHARE) <= TARGET_TOLERANCE else "MISSED"
    failed = calls - sum(seen[v] for v in VERSIONS)
    return (
        label,
        f"{calls:,}",
        *(f"{seen[v]:,}" for v in VERSIONS),
        f"{share:.2%} ({verdict})",
        str(failed),
        f"{took_s:.2f}",
        f"{h.percentile(latencies, 0.5):.2f}",
        f"{h.percentile(latencies, 0.99):.2f}",
    )


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    sd = math.sqrt(TARGET_SHARE * (1 - TARGET_SHARE) / args.calls)
    print(
        f"{args.calls:,} calls each way, one keep-alive connection; weights "
        f"{WEIGHTS}; the share of {CANARY} has a standard deviation of {sd:.2%}\n"
    )
    rows = []
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon, daemon.api() as client:
        vip = start_canary(client)
        entries = {
            "gateway /function/hello": (daemon.gateway_address, f"/function/{APP}"),
            f"Service VIP {vip[0]}:{vip[1]}": (vip, "/"),
        }
        for label, (address, path) in entries.items():
            h.wait_for(lambda: answers(address, path), timeout_s=30, what=label)  # noqa: B023
            started_s = time.monotonic()
            seen, latencies = call_many(address, path, args.calls)
            rows.append(row(label, seen, latencies, time.monotonic() - started_s))
    header = (
        "entry",
        "calls",
        *VERSIONS,
        f"{CANARY} share",
        "failed",
        "total s",
        "p50 ms",
        "p99 ms",
    )
    h.print_table(header, rows)
    print(f"target: {TARGET_SHARE:.0%} +/- {TARGET_TOLERANCE:.0%} to {CANARY}")


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    measure(parser.parse_args())


if __name__ == "__main__":
    main()
