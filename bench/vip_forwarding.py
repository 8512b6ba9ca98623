"""Benchmark: HTTP through a Service VIP next to the same pod called directly, and a pod deleted
under load.

Starts hello-world pods on pod-style addresses (``127.128.77.x``; Node's ``http`` module by
default, or ``--pod-kind uvloop``: a small httptools server on uvloop), and a Service VIP in
front of them: by default a real ``funcmesh up`` (its own service CIDR and DNS port) with a
Service and hand-written Endpoints created through the API, or with ``--vip-in process`` the VIP
listeners alone (``funcmesh.gateway.vips.VipListeners`` on uvloop, as in the daemon) in a
process of their own over a ``ServiceTable`` filled directly. ``--vip-nat on`` (the default)
lets the VIP take the kernel NAT path where it may (root and ``nft``: an nftables DNAT rule, as
kube-proxy's iptables mode), ``off`` keeps it in the daemon (``FUNCMESH_VIP_NAT=off``); each
measure says which path served. Then:

1. throughput: ``wrk -t2 -c50`` on the pod directly, then through the VIP (one endpoint);
2. latency: the same at one connection (``wrk -t1 -c1``); the p50 difference is what the VIP
   adds to a request;
3. a pod deleted under load: two pods behind the VIP, ``wrk -t2 -c50``; after a third of the run
   one pod is killed (SIGKILL) and its endpoint is removed 100 ms later (the endpoints
   controller's budget). wrk's errors are the requests that failed; the connections that were
   open on the killed pod are the requests in flight on it (wrk keeps one request in flight per
   connection);
4. with the daemon: the same through a real Deployment (two Node replicas run by funcmesh, a
   Service with a selector) and ``funcmesh delete pod`` during the run, so that the endpoints
   controller, the workload supervisor and the VIP all take part.

    .venv/bin/python bench/vip_forwarding.py [--duration-s 10] [--pod-kind node|uvloop]
        [--vip-in daemon|process] [--vip-nat on|off] [--rounds 1]

wrk (``apt-get install -y wrk``), the pods and the VIP share the machine's cores: compare the
rows of one run. The VIP CPU column is the daemon's (or the VIP process's) CPU time over the run,
in percent of one core and per request (near zero on the kernel path: the kernel's NAT work is
counted to the client and the pod). It prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, cast

import harness as h
import httptools
import uvloop

from funcmesh.client.api import ApiClient
from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.errors import NotFound, Unavailable
from funcmesh.gateway.vip_nat import TOOLS_PATH, NatTable, open_nat_table, table_name
from funcmesh.gateway.vips import VipListeners
from funcmesh.model.kinds import DEPLOYMENT, ENDPOINTS, SERVICE
from funcmesh.model.objects import RawObject

VIP = "127.96.77.7"
VIP_PORT = 8088  # above 1024: no root needed
SERVICE_NAME = "hello"
POD_IPS = ("127.128.77.1", "127.128.77.2")
POD_PORT = 8080
HELLO = b"Hello, World!"
NODE_POD = """
const http = require('http');
const server = http.createServer((req, res) => {
  res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': 13});
  res.end('Hello, World!');
});
server.keepAliveTimeout = 75000;
server.listen(+process.env.PORT, process.env.HOST, () => console.log('ready'));
"""
PROCESS_CIDR = "127.96.77.0/24"  # --vip-in process: the NAT table's, holding VIP
SEARCH_PATH = f"{os.environ.get('PATH', os.defpath)}:{TOOLS_PATH}"
KILL_AFTER_FRACTION = 1 / 3
ENDPOINT_REMOVAL_DELAY_S = 0.1


# ---- a pod: HTTP hello world on uvloop + httptools, keep-alive, pipelining-safe ----


class HelloConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport = cast(asyncio.Transport, None)
        self._response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
            % (len(HELLO), HELLO)
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._transport.close()

    def on_message_complete(self) -> None:
        self._transport.write(self._response)


async def serve_pod(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HelloConnection, host, port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()


# ---- the VIP process: VipListeners over a ServiceTable filled here; stdin changes endpoints ----


def endpoints_view(pods: list[str]) -> EndpointsView:
    addresses = tuple(EndpointAddressView(ip=ip) for ip in pods)
    subset = EndpointSubsetView(
        ready=addresses, not_ready=(), ports=(EndpointPortView(name="http", port=POD_PORT),)
    )
    return EndpointsView(namespace="default", name=SERVICE_NAME, subsets=(subset,))


async def serve_vip(pods: list[str], *, nat: bool) -> None:
    table = ServiceTable()
    port = ServicePortView(name="http", protocol="TCP", port=VIP_PORT, target_port=POD_PORT)
    service = ServiceView(
        namespace="default",
        name=SERVICE_NAME,
        type="ClusterIP",
        cluster_ip=VIP,
        ports=(port,),
        selector=None,
    )
    table.put_service(service)
    table.put_endpoints(endpoints_view(pods))
    kernel: NatTable | None = None
    if nat:
        with contextlib.suppress(Unavailable):
            kernel = await open_nat_table(PROCESS_CIDR, search_path=SEARCH_PATH)
    vips = VipListeners(table, kernel=kernel)
    vips.start()
    if kernel is not None:
        await kernel.settled()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)  # stdin's end stops: clean up first
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).decode().split():
        if line[0] == "remove":  # remove IP: that pod's endpoint goes
            pods = [ip for ip in pods if ip != line[1]]
            table.put_endpoints(endpoints_view(pods))
            if kernel is not None:
                await kernel.settled()
            print(f"removed; {vips.forwarded_connections} connections open", flush=True)
    await vips.close()
    if kernel is not None:
        await kernel.close()


# ---- running the parts ----


class Part:
    """A child process that prints ``ready`` when it serves."""

    def __init__(self, command: list[str], *, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.stop()
            raise RuntimeError(f"{command[:3]} did not start")

    def say(self, line: str) -> str:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def start_pod(kind: str, ip: str) -> Part:
    if kind == "node":
        return Part(["node", "-e", NODE_POD], env={"HOST": ip, "PORT": str(POD_PORT)})
    return Part([sys.executable, __file__, "--role=pod", f"--host={ip}"])


class Vip(Protocol):
    """A Service VIP in front of the pods."""

    address: tuple[str, int]
    pid: int  # the process that forwards (its CPU time is measured)
    service_cidr: str  # whose nftables table says whether the kernel serves the VIP

    def remove(self, pod_ip: str) -> None: ...

    def stop(self) -> None: ...


class StandaloneVip:
    """The VIP listeners alone, in a process of their own."""

    def __init__(self, pods: list[str], *, nat: str) -> None:
        command = [sys.executable, __file__, "--role=vip", f"--vip-nat={nat}"]
        self._part = Part([*command, *(f"--pod={ip}" for ip in pods)])
        self.address = (VIP, VIP_PORT)
        self.pid = self._part.process.pid
        self.service_cidr = PROCESS_CIDR

    def remove(self, pod_ip: str) -> None:
        self._part.say(f"remove {pod_ip}")

    def stop(self) -> None:
        self._part.stop()


class DaemonVip:
    """A Service with hand-written Endpoints in a real ``funcmesh up``."""

    def __init__(self, pods: list[str], scratch: Path, *, nat: str) -> None:
        self._pods = list(pods)
        self._daemon = h.Daemon(scratch, extra_env=daemon_env(nat))
        self.service_cidr = self._daemon.env["FUNCMESH_SERVICE_CIDR"]
        self._daemon.start()
        self._api = self._daemon.api()
        try:
            service = self._api.create(SERVICE, service_object())
            self._api.create(ENDPOINTS, endpoints_object(self._pods))
            self.address = (str(service["spec"]["clusterIP"]), VIP_PORT)
            self.pid = self._daemon.pid
            h.wait_for(self._answers, timeout_s=10, what="the VIP", interval_s=0.01)
        except BaseException:
            self.stop()
            raise

    def remove(self, pod_ip: str) -> None:
        self._pods.remove(pod_ip)
        patch = {"subsets": endpoints_object(self._pods)["subsets"]}
        self._api.merge_patch(ENDPOINTS, "default", SERVICE_NAME, patch)
        h.wait_for(
            lambda: pod_ip not in nat_rules(self.service_cidr),
            timeout_s=10,
            what="the endpoint to leave the kernel rule",
            interval_s=0.005,
        )

    def stop(self) -> None:
        self._api.close()
        self._daemon.stop()

    def _answers(self) -> bool:
        try:
            socket.create_connection(self.address, timeout=1).close()
        except OSError:
            return False
        return True


def service_object() -> RawObject:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE_NAME, "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": VIP_PORT, "targetPort": POD_PORT}]},
    }


def endpoints_object(pods: list[str]) -> RawObject:
    return {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": SERVICE_NAME, "namespace": "default"},
        "subsets": [
            {
                "addresses": [{"ip": ip} for ip in pods],
                "ports": [{"name": "http", "port": POD_PORT}],
            }
        ],
    }


@contextlib.contextmanager
def running(args: argparse.Namespace, pods: int) -> Iterator[tuple[list[Part], Vip]]:
    started: list[Part] = []
    vip: Vip | None = None
    try:
        with h.scratch_dir() as scratch:
            for ip in POD_IPS[:pods]:
                started.append(start_pod(args.pod_kind, ip))
            ips = list(POD_IPS[:pods])
            if args.vip_in == "daemon":
                vip = DaemonVip(ips, scratch, nat=args.vip_nat)
            else:
                vip = StandaloneVip(ips, nat=args.vip_nat)
            yield started, vip
    finally:
        if vip is not None:
            vip.stop()
        for part in started:
            part.stop()


def nat_rules(service_cidr: str) -> str:
    """The kernel NAT rules of the daemon with this service CIDR ("" when it has none)."""
    nft = shutil.which("nft", path=SEARCH_PATH)
    if nft is None:
        return ""
    command = [nft, "list", "table", "ip", table_name(service_cidr)]
    listed = subprocess.run(command, capture_output=True, text=True, check=False)
    return listed.stdout if listed.returncode == 0 else ""


def served_by(vip: Vip) -> str:
    """Which path forwards the VIP now: kernel NAT (an nftables rule names it) or a listener."""
    if f"ip daddr {vip.address[0]} tcp dport {vip.address[1]} " in nat_rules(vip.service_cidr):
        return "kernel NAT (nftables DNAT)"
    return "VIP listener in the daemon"


def established_to(ip: str, port: int) -> int:
    """TCP connections the pod at ``ip:port`` has now (/proc/net/tcp: its accepted sockets,
    whichever path brought them: the daemon's second hop or a kernel-translated client)."""
    wanted = f"{socket.inet_aton(ip)[::-1].hex().upper()}:{port:04X}"
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted and fields[3] == "01":  # the pod's side, ESTABLISHED
            count += 1
    return count


# ---- the measurements ----


def compare(args: argparse.Namespace) -> None:
    rows = []
    results: dict[tuple[str, int], list[h.LoadResult]] = {}
    with running(args, 1) as (_, vip):
        print(f"the VIP is served by: {served_by(vip)}", flush=True)
        urls = {
            "direct": f"http://{POD_IPS[0]}:{POD_PORT}/",
            "VIP": f"http://{vip.address[0]}:{vip.address[1]}/",
        }
        for connections, threads in ((50, 2), (1, 1)):
            for _ in range(args.rounds):
                for label, url in urls.items():
                    cpu_before_s = h.cpu_seconds(vip.pid)
                    result = h.run_wrk(
                        url, connections=connections, threads=threads, duration_s=args.duration_s
                    )
                    vip_cpu_s = h.cpu_seconds(vip.pid) - cpu_before_s
                    results.setdefault((label, connections), []).append(result)
                    cpu = vip_cpu(vip_cpu_s, result, args.duration_s) if label == "VIP" else "-"
                    rows.append(
                        (
                            label,
                            connections,
                            f"{result.requests_per_s:,.0f}",
                            f"{result.p50_ms:.3f}",
                            f"{result.p99_ms:.3f}",
                            result.errors,
                            cpu,
                        )
                    )
    header = ("path", "conns", "req/s", "p50 ms", "p99 ms", "errors", "VIP CPU % / us per req")
    h.print_table(header, rows)

    def median(label: str, connections: int, field: str) -> float:
        return statistics.median(getattr(r, field) for r in results[(label, connections)])

    ratio = median("VIP", 50, "requests_per_s") / median("direct", 50, "requests_per_s")
    added_ms = median("VIP", 1, "p50_ms") - median("direct", 1, "p50_ms")
    print(f"through the VIP: {ratio:.0%} of the direct requests/s at 50 connections")
    print(f"the VIP adds {added_ms * 1000:.0f} us at p50 at one connection\n", flush=True)


def vip_cpu(cpu_s: float, result: h.LoadResult, duration_s: float) -> str:
    """The forwarding process's CPU: percent of one core, and microseconds per request."""
    requests = max(result.requests_per_s * duration_s, 1.0)
    return f"{cpu_s / duration_s * 100:.0f} / {cpu_s / requests * 1e6:.1f}"


def pod_deleted_under_load(args: argparse.Namespace) -> None:
    with running(args, 2) as (pods, vip):
        killed_ip = POD_IPS[1]
        in_flight: list[int] = []

        def delete_pod() -> None:
            time.sleep(args.duration_s * KILL_AFTER_FRACTION)
            in_flight.append(established_to(killed_ip, POD_PORT))
            pods[1].kill()
            time.sleep(ENDPOINT_REMOVAL_DELAY_S)
            vip.remove(killed_ip)

        deleter = threading.Thread(target=delete_pod)
        deleter.start()
        url = f"http://{vip.address[0]}:{vip.address[1]}/"
        path = served_by(vip)
        result = h.run_wrk(url, connections=50, threads=2, duration_s=args.duration_s)
        deleter.join()
    print(
        f"pod deleted under load ({path}): {result.requests_per_s:,.0f} req/s over the run, "
        f"{result.errors} failed requests; {in_flight[0]} connections (each with a request in "
        "flight) were open on the killed pod\n",
        flush=True,
    )


DEPLOYMENT_NAME = "hello-deploy"


def deployment_object() -> RawObject:
    labels = {"app": DEPLOYMENT_NAME}
    container = {
        "name": "hello",
        "image": "node:20",
        "command": ["node", "-e", NODE_POD],
        "ports": [{"name": "http", "containerPort": POD_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT_NAME, "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
        },
    }


def ready_pods(api: ApiClient) -> dict[str, str]:
    """Pod IP -> pod name of the Deployment's Service's ready endpoints."""
    try:
        endpoints = api.get(ENDPOINTS, "default", DEPLOYMENT_NAME)
    except NotFound:
        return {}
    return {
        address["ip"]: address["targetRef"]["name"]
        for subset in endpoints.get("subsets") or []
        for address in subset.get("addresses") or []
    }


def deployment_pod_deleted_under_load(args: argparse.Namespace) -> None:
    env = daemon_env(args.vip_nat)
    with h.scratch_dir() as scratch, h.Daemon(scratch, extra_env=env) as daemon:
        api = daemon.api()
        try:
            api.create(DEPLOYMENT, deployment_object())
            service = service_object()
            service["metadata"]["name"] = DEPLOYMENT_NAME
            service["spec"]["selector"] = {"app": DEPLOYMENT_NAME}
            ip = api.create(SERVICE, service)["spec"]["clusterIP"]
            h.wait_for(lambda: len(ready_pods(api)) == 2, timeout_s=30, what="two ready pods")
            pods = ready_pods(api)
            killed_ip = sorted(pods)[1]
            in_flight: list[int] = []

            def delete_pod() -> None:
                time.sleep(args.duration_s * KILL_AFTER_FRACTION)
                in_flight.append(established_to(killed_ip, POD_PORT))
                daemon.cli("delete", "pod", pods[killed_ip])

            deleter = threading.Thread(target=delete_pod)
            deleter.start()
            url = f"http://{ip}:{VIP_PORT}/"
            rules = nat_rules(env["FUNCMESH_SERVICE_CIDR"])
            path = "kernel NAT" if f"ip daddr {ip} tcp" in rules else "VIP listener"
            result = h.run_wrk(url, connections=50, threads=2, duration_s=args.duration_s)
            deleter.join()
            after = ready_pods(api)
        finally:
            api.close()
    print(
        f"Deployment pod deleted under load (funcmesh delete pod, {path}): "
        f"{result.requests_per_s:,.0f} "
        f"req/s over the run, {result.errors} failed requests; {in_flight[0]} connections were "
        f"open on the deleted pod; ready pods after the run: {len(after)} "
        f"({'a new one' if killed_ip not in after else 'the deleted one still listed'})\n",
        flush=True,
    )


def daemon_env(nat: str) -> dict[str, str]:
    """A service CIDR and a DNS port of its own, so that the bench meets no other daemon."""
    return {
        "FUNCMESH_SERVICE_CIDR": f"127.{random.randint(97, 126)}.{random.randint(0, 255)}.0/24",
        "FUNCMESH_DNS_ADDR": f"127.0.0.1:{h.free_port()}",
        "FUNCMESH_VIP_NAT": nat,
    }


def main() -> None:
    parser = h.argument_parser(__doc__)
    parser.add_argument("--role", choices=["bench", "pod", "vip"], default="bench")
    parser.add_argument("--host", default=POD_IPS[0], help=argparse.SUPPRESS)
    parser.add_argument("--pod", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--pod-kind", choices=["node", "uvloop"], default="node")
    parser.add_argument("--vip-in", choices=["daemon", "process"], default="daemon")
    parser.add_argument("--vip-nat", choices=["on", "off"], default="on")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if args.role == "pod":
        uvloop.run(serve_pod(args.host, POD_PORT))
    elif args.role == "vip":
        uvloop.run(serve_vip(args.pod, nat=args.vip_nat == "on"))
    else:
        print(h.describe_machine())
        print(
            f"pods: {args.pod_kind} on {', '.join(POD_IPS)}:{POD_PORT}; VIP in {args.vip_in}, "
            f"kernel NAT {args.vip_nat}\n"
        )
        compare(args)
        pod_deleted_under_load(args)
        if args.vip_in == "daemon":
            deployment_pod_deleted_under_load(args)


if __name__ == "__main__":
    main()
