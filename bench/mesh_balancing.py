"""Benchmark: how the mesh's balancers share calls between a slow replica and two fast ones.

Starts ``funcmesh up`` with three Deployments of one replica each, all labelled ``app: hello``
(Node's ``http`` module answering with its pod name after ``DELAY_MS``): ``hello-slow`` answers
in 50 ms, ``hello-fast-a`` and ``hello-fast-b`` in 1 ms. For each load-balancing policy there is
a Service selecting ``app: hello`` (port named ``http``) and a DestinationRule for it, created
before the Service so that its VIP is served by the mesh from the start: ``hello-p2c`` without
``loadBalancer`` (the default, peak EWMA with power-of-two choices), ``hello-rr`` with
``loadBalancer: {simple: ROUND_ROBIN}`` and ``hello-lr`` with ``LEAST_REQUEST``. One Service per
policy, all in front of the same three pods, so that no change of a rule has to be waited for.

For each, ``--calls`` calls (default 2,000) at concurrency ``--concurrency`` (default 10: that
many threads, each with a keep-alive connection to the VIP; the mesh balances each request, not
each connection), from the first call on (no warm-up: the balancer learns the latencies from
these calls). Prints the share of calls each replica answered, the total time and the latency
p50/p99, and checks ``istio_requests_total`` counted every call.

    .venv/bin/python bench/mesh_balancing.py [--calls 2000] [--concurrency 10]
        [--policies default,ROUND_ROBIN,LEAST_REQUEST]

Target (issue 5): with the default balancer the slow replica gets at most 10 % of the calls
(round robin gives it a third). It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass

import harness as h

from funcmesh.client.api import ApiClient
from funcmesh.model.kinds import DEPLOYMENT, DESTINATION_RULE, SERVICE
from funcmesh.model.objects import RawObject

PORT = 8080
APP = "hello"
REPLICAS = {"hello-slow": 50, "hello-fast-a": 1, "hello-fast-b": 1}  # name -> answer delay, ms
SLOW = "hello-slow"
SERVICES = {"default": "hello-p2c", "ROUND_ROBIN": "hello-rr", "LEAST_REQUEST": "hello-lr"}
NODE_DELAYED = """
const http = require('http');
const delay = +process.env.DELAY_MS;
const body = Buffer.from(process.env.POD_NAME);
const server = http.createServer((req, res) => {
  setTimeout(() => {
    res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': body.length});
    res.end(body);
  }, delay);
});
server.keepAliveTimeout = 75000;
server.listen(+process.env.PORT, process.env.HOST);
"""
SLOW_SHARE_TARGET = 0.10


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    replica: str  # the Deployment whose pod answered ("" when the call failed)
    latency_ms: float


def destination_rule(service: str, policy: str) -> RawObject:
    spec: dict[str, object] = {"host": service}
    if policy != "default":
        spec["trafficPolicy"] = {"loadBalancer": {"simple": policy}}
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": service, "namespace": "default"},
        "spec": spec,
    }


def start_replicas(client: ApiClient) -> None:
    for name, delay_ms in REPLICAS.items():
        labels = {"app": APP, "replica": name}
        env = {"DELAY_MS": str(delay_ms)}
        client.create(
            DEPLOYMENT, h.node_deployment(name, NODE_DELAYED, labels=labels, port=PORT, env=env)
        )


def start_service(client: ApiClient, policy: str) -> tuple[str, int]:
    """The policy's DestinationRule, then its Service; the VIP once it has three endpoints."""
    name = SERVICES[policy]
    client.create(DESTINATION_RULE, destination_rule(name, policy))
    service = client.create(SERVICE, h.http_service(name, port=PORT, selector={"app": APP}))
    h.wait_for(
        lambda: len(h.ready_endpoints(client, name)) == len(REPLICAS),
        timeout_s=30,
        what=f"three endpoints of {name}",
    )
    vip = (str(service["spec"]["clusterIP"]), PORT)
    h.wait_for(lambda: answers(vip), timeout_s=10, what=f"the VIP of {name}")
    return vip


def answers(address: tuple[str, int]) -> bool:
    try:
        with h.HttpConnection(address, timeout_s=1) as connection:
            return connection.get("/").status == 200
    except OSError:
        return False


def replica_of(pod: bytes) -> str:
    name = pod.decode()
    return next((replica for replica in REPLICAS if name.startswith(f"{replica}-")), name)


def call_all(
    address: tuple[str, int], *, calls: int, concurrency: int
) -> tuple[list[Answer], float]:
    """``calls`` GETs from ``concurrency`` threads; the answers and the wall time taken."""
    tickets = itertools.count()
    answers: list[Answer] = []
    lock = threading.Lock()

    def caller() -> None:
        mine: list[Answer] = []
        with h.HttpConnection(address) as connection:
            while next(tickets) < calls:
                timed = connection.get("/")
                replica = replica_of(timed.body) if timed.status == 200 else ""
                mine.append(
                    Answer(replica=replica, latency_ms=(timed.done_s - timed.sent_s) * 1000)
                )
        with lock:
            answers.extend(mine)

    threads = [threading.Thread(target=caller) for _ in range(concurrency)]
    started_s = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers, time.monotonic() - started_s


def row(policy: str, answers: list[Answer], took_s: float, counted: float) -> tuple[str, ...]:
    served = Counter(a.replica for a in answers)
    latencies = [a.latency_ms for a in answers]
    shares = [f"{served[name] / len(answers):.1%}" for name in REPLICAS]
    return (
        policy,
        f"{len(answers):,}",
        *shares,
        str(len(answers) - sum(served[name] for name in REPLICAS)),
        f"{took_s:.2f}",
        f"{h.percentile(latencies, 0.5):.2f}",
        f"{h.percentile(latencies, 0.99):.2f}",
        f"{counted:,.0f}",
    )


def measure(args: argparse.Namespace) -> None:
    print(h.describe_machine())
    delays = ", ".join(f"{name} {delay} ms" for name, delay in REPLICAS.items())
    print(
        f"{args.calls:,} calls at concurrency {args.concurrency} per policy; replicas: {delays}\n"
    )
    rows = []
    with h.scratch_dir() as scratch, h.Daemon(scratch) as daemon, daemon.api() as client:
        start_replicas(client)
        for policy in args.policies.split(","):
            vip = start_service(client, policy)
            answers, took_s = call_all(vip, calls=args.calls, concurrency=args.concurrency)
            fqdn = f"{SERVICES[policy]}.default.svc.cluster.local"
            metrics = h.api_text(daemon, "/metrics")
            counted = h.metric_sum(metrics, "istio_requests_total", destination_service=fqdn)
            rows.append(row(policy, answers, took_s, counted))
            shares = Counter(a.replica for a in answers)
            print(
                f"{policy}: the slow replica served {shares[SLOW] / len(answers):.1%}", flush=True
            )
    print()
    header = (
        "balancer",
        "calls",
        *(f"{name} ({delay} ms)" for name, delay in REPLICAS.items()),
        "failed",
        "total s",
        "p50 ms",
        "p99 ms",
        "mesh counted",
    )
    h.print_table(header, rows)
    print(
        f"target: the default balancer sends the slow replica at most {SLOW_SHARE_TARGET:.0%}; "
        "'mesh counted' is istio_requests_total for the Service (the calls, plus one check)"
    )


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--policies", default=",".join(SERVICES))
    args = parser.parse_args()
    unknown = set(args.policies.split(",")) - set(SERVICES)
    if unknown:
        parser.error(f"unknown --policies {sorted(unknown)}: use some of {', '.join(SERVICES)}")
    measure(args)


if __name__ == "__main__":
    main()
