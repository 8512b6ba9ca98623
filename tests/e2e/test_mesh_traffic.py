"""DestinationRule policies, mirroring and Gateway hosts through a real ``funcmesh up``.

The upstreams are HTTP servers this test runs on pod-style loopback addresses (one port, several
addresses), behind a selector-less Service with hand-written Endpoints, as a user would put an
outside backend into the cluster; calls go through the gateway (``/function/NAME`` falls back to
the Service NAME through the mesh when no function has that name) with a real HTTP client.
"""

from __future__ import annotations

import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, api_client, start_daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"


class Upstream:
    """An HTTP server on its own loopback address: answers ``status`` after ``delay_s`` with
    its name, and remembers the Host header of every request."""

    def __init__(self, name: str, ip: str, port: int) -> None:
        self.name = name
        self.ip = ip
        self.status = 200
        self.delay_s = 0.0
        self.hosts: list[str] = []
        self.peer_ports: list[int] = []  # the gateway's side of each request's connection
        self.headers: list[dict[str, str]] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                upstream.hosts.append(self.headers.get("Host", ""))
                upstream.peer_ports.append(self.client_address[1])
                upstream.headers.append(dict(self.headers.items()))
                if upstream.delay_s:
                    time.sleep(upstream.delay_s)
                body = upstream.name.encode()
                self.send_response(upstream.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((ip, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_upstreams(count: int) -> list[Upstream]:
    """``count`` upstreams on one port, each on an address of its own."""
    base = f"127.134.{random.randint(0, 255)}"
    with socket.socket() as probe:
        probe.bind((f"{base}.1", 0))
        port = probe.getsockname()[1]
    return [Upstream(f"u{index}", f"{base}.{index}", port) for index in range(1, count + 1)]


def service_yaml(name: str, upstreams: list[Upstream]) -> str:
    port = upstreams[0].server.server_address[1]
    addresses = "".join(f"  - ip: {u.ip}\n" for u in upstreams)
    return f"""\
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  ports:
  - name: http
    port: 8080
    targetPort: {port}
---
apiVersion: v1
kind: Endpoints
metadata:
  name: {name}
subsets:
- addresses:
{addresses}  ports:
  - name: http
    port: {port}
"""


def apply(daemon: Daemon, tmp_path: Path, text: str) -> None:
    path = tmp_path / f"objects-{random.randrange(1 << 30)}.yaml"
    path.write_text(text)
    daemon.run("apply", "-f", str(path))


def apply_destination_rule(daemon: Daemon, tmp_path: Path, name: str, policy: str) -> None:
    """A DestinationRule for the Service ``name`` whose ``trafficPolicy`` is ``policy`` (YAML)."""
    indented = "".join(f"    {line}\n" for line in policy.splitlines())
    rule = f"""\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: {name}
spec:
  host: {name}
  trafficPolicy:
{indented}"""
    apply(daemon, tmp_path, rule)


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def upstreams(
    daemon: Daemon, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, list[Upstream]]]:
    """Three upstreams behind a Service named after the test."""
    name = "svc-" + request.node.name.removeprefix("test_").replace("_", "-")[:40].strip("-")
    started = start_upstreams(3)
    apply(daemon, tmp_path, service_yaml(name, started))
    yield name, started
    for kind in ("virtualservice", "destinationrule", "service", "endpoints"):
        daemon.run("delete", kind, name, check=False)
    for upstream in started:
        upstream.stop()


def answers(client: httpx.Client, url: str, count: int, **kwargs: object) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(count):
        response = client.get(url, **kwargs)  # type: ignore[arg-type]
        seen[f"{response.status_code} {response.text}"] += 1
    return seen


def test_a_service_without_rules_is_balanced_over_its_endpoints(
    daemon: Daemon, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, _ = upstreams
    with httpx.Client(timeout=10) as client:
        seen = answers(client, f"{daemon.gateway_url}/function/{name}", 60)
    assert set(seen) == {"200 u1", "200 u2", "200 u3"}, seen


def test_outlier_detection_ejects_a_failing_endpoint_then_reports_all_ejected(
    daemon: Daemon, tmp_path: Path, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, (u1, u2, u3) = upstreams
    apply_destination_rule(
        daemon,
        tmp_path,
        name,
        """\
loadBalancer: {simple: ROUND_ROBIN}
outlierDetection:
  consecutive5xxErrors: 2
  interval: 1s
  baseEjectionTime: 60s
  maxEjectionPercent: 100
""",
    )
    u1.status = 500
    url = f"{daemon.gateway_url}/function/{name}"
    with httpx.Client(timeout=10) as client:
        wait_for(lambda: answers(client, url, 9)["500 u1"] == 0, "u1 to be ejected")
        assert set(answers(client, url, 20)) == {"200 u2", "200 u3"}
        u2.status = u3.status = 503
        answers(client, url, 12)  # two failures each eject them
        response = client.get(url)
    assert response.status_code == 503
    assert "no healthy upstream" in response.text
    assert "ejected by outlier detection" in response.text


def test_a_full_connection_pool_answers_503_with_the_overflow_header(
    daemon: Daemon, tmp_path: Path, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, found = upstreams
    for upstream in found:
        upstream.delay_s = 1.0
    apply_destination_rule(
        daemon,
        tmp_path,
        name,
        """\
connectionPool:
  tcp: {maxConnections: 1}
  http: {http1MaxPendingRequests: 1}
""",
    )
    time.sleep(0.3)
    url = f"{daemon.gateway_url}/function/{name}"
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: httpx.get(url, timeout=10), range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 503, 503], statuses
    overflowed = [r for r in responses if r.status_code == 503]
    assert all(r.headers.get("x-funcmesh-overflow") == "true" for r in overflowed)
    assert "upstream overflow" in overflowed[0].text


def test_consistent_hash_keeps_a_user_on_one_endpoint(
    daemon: Daemon, tmp_path: Path, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, _ = upstreams
    apply_destination_rule(
        daemon,
        tmp_path,
        name,
        """\
loadBalancer:
  consistentHash: {httpHeaderName: x-user}
""",
    )
    time.sleep(0.3)
    url = f"{daemon.gateway_url}/function/{name}"
    with httpx.Client(timeout=10) as client:
        per_user = {
            user: answers(client, url, 10, headers={"x-user": user}) for user in map(str, range(12))
        }
    assert all(len(seen) == 1 for seen in per_user.values()), per_user
    assert len({next(iter(seen)) for seen in per_user.values()}) > 1  # users spread


def test_a_hash_cookie_with_a_ttl_is_set_and_keeps_the_client_on_one_replica(
    daemon: Daemon, tmp_path: Path
) -> None:
    replicas = start_upstreams(2)
    apply(daemon, tmp_path, service_yaml("sticky", replicas))
    try:
        apply_destination_rule(
            daemon,
            tmp_path,
            "sticky",
            """\
loadBalancer:
  consistentHash:
    httpCookie: {name: session, ttl: 3600s}
""",
        )
        url = f"{daemon.gateway_url}/function/sticky"
        with httpx.Client(timeout=10) as client:
            wait_for(lambda: "set-cookie" in client.get(url).headers, "the rule to apply")
            client.cookies.clear()
            first = client.get(url)  # no cookie: it gets one
            set_cookie = first.headers["set-cookie"]
            assert set_cookie.startswith('session="'), set_cookie
            assert set_cookie.endswith("; Max-Age=3600; HttpOnly"), set_cookie
            later = answers(client, url, 10)  # the client sends it back
        assert later == {f"200 {first.text}": 10}, later
    finally:
        for kind in ("destinationrule", "service", "endpoints"):
            daemon.run("delete", kind, "sticky", check=False)
        for replica in replicas:
            replica.stop()


def test_a_mirror_gets_a_copy_whose_answer_is_dropped(
    daemon: Daemon, tmp_path: Path, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, _ = upstreams
    shadow = start_upstreams(1)[0]
    shadow.status = 500  # its answer must not reach the client
    apply(daemon, tmp_path, service_yaml(f"{name}-m", [shadow]))
    try:
        apply(
            daemon,
            tmp_path,
            f"""\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts: [{name}]
  http:
  - route:
    - destination: {{host: {name}}}
    mirror: {{host: {name}-m}}
    mirrorPercentage: {{value: 100.0}}
""",
        )
        time.sleep(0.3)
        with httpx.Client(timeout=10) as client:
            seen = answers(
                client, f"{daemon.gateway_url}/function/{name}", 5, headers={"Host": "shop"}
            )
        assert all(answer.startswith("200 u") for answer in seen), seen
        wait_for(lambda: len(shadow.hosts) == 5, "five mirrored requests")
        assert set(shadow.hosts) == {"shop-shadow"}
    finally:
        daemon.run("delete", "service", f"{name}-m", check=False)
        daemon.run("delete", "endpoints", f"{name}-m", check=False)
        shadow.stop()


def test_a_gateway_host_routes_external_traffic(
    daemon: Daemon, tmp_path: Path, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, _ = upstreams
    apply(
        daemon,
        tmp_path,
        f"""\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: shop-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["shop.example.com"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
spec:
  hosts: ["shop.example.com"]
  gateways: [shop-gateway]
  http:
  - match:
    - uri: {{prefix: /api/}}
    route:
    - destination: {{host: {name}}}
""",
    )
    try:
        time.sleep(0.3)
        with httpx.Client(timeout=10) as client:
            routed = client.get(
                f"{daemon.gateway_url}/api/items", headers={"Host": "shop.example.com"}
            )
            other_host = client.get(f"{daemon.gateway_url}/api/items", headers={"Host": "x.test"})
            other_path = client.get(
                f"{daemon.gateway_url}/web", headers={"Host": "shop.example.com"}
            )
        assert routed.status_code == 200, routed.text
        assert routed.text.startswith("u")
        assert other_host.status_code == 404
        assert other_path.status_code == 404
    finally:
        daemon.run("delete", "gateway", "shop-gateway", check=False)


def test_calls_are_counted_in_istio_metrics_and_logged(
    daemon: Daemon, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, _ = upstreams
    with httpx.Client(timeout=10) as client:
        answers(client, f"{daemon.gateway_url}/function/{name}", 3)
    host = f"{name}.default.svc.cluster.local"
    seen = [headers for upstream in upstreams[1] for headers in upstream.headers]
    assert all("traceparent" in {k.lower() for k in headers} for headers in seen)  # a span each
    with api_client(daemon) as api:
        metrics = api.get("/metrics").text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("istio_requests_total{") and f'destination_service="{host}"' in line
    ]
    assert counted, metrics[-2000:]
    assert any('response_code="200"' in line and line.endswith(" 3.0") for line in counted)
    log = daemon.run("mesh", "logs", "--tail", "50").stdout
    lines = [line for line in log.splitlines() if f"|{host}" in line]
    assert len(lines) >= 3, log
    line = lines[-1]
    assert line.startswith("[" + time.strftime("%Y-%m-%dT", time.gmtime())), line
    assert '"GET /function/' in line
    assert " 200 - via_upstream " in line  # code, flags, details
    assert any(f'"{u.ip}:' in line for u in upstreams[1]), line  # UPSTREAM_HOST


def test_max_requests_per_connection_opens_a_connection_per_request(
    daemon: Daemon, tmp_path: Path, upstreams: tuple[str, list[Upstream]]
) -> None:
    name, found = upstreams
    url = f"{daemon.gateway_url}/function/{name}"
    with httpx.Client(timeout=10) as client:
        answers(client, url, 12)
        reused = sum(len(u.peer_ports) - len(set(u.peer_ports)) for u in found)
        assert reused > 0  # keep-alive by default
        policy = "connectionPool:\n  http: {maxRequestsPerConnection: 1}\n"
        apply_destination_rule(daemon, tmp_path, name, policy)
        time.sleep(0.3)
        for upstream in found:
            upstream.peer_ports.clear()
        answers(client, url, 12)
    ports = [port for u in found for port in u.peer_ports]
    assert len(ports) == 12
    assert len(set(ports)) == 12, ports


def test_access_log_and_tracing_can_be_turned_off(tmp_path: Path) -> None:
    quiet = start_daemon(
        tmp_path / "home",
        log_path=tmp_path / "daemon.log",
        extra_env={"FUNCMESH_ACCESS_LOG": "off", "FUNCMESH_TRACING": "off"},
    )
    [upstream] = start_upstreams(1)
    try:
        apply(quiet, tmp_path, service_yaml("plain", [upstream]))
        wait_for(
            lambda: httpx.get(f"{quiet.gateway_url}/function/plain", timeout=10).status_code == 200,
            "the Service to answer",
        )
        assert "traceparent" not in {k.lower() for k in upstream.headers[-1]}
        logs = quiet.run("mesh", "logs", check=False)
        assert logs.returncode != 0
        assert "not enabled" in logs.stderr
        with api_client(quiet) as api:
            metrics = api.get("/metrics").text
        assert 'destination_service="plain.default.svc.cluster.local"' in metrics  # still counted
    finally:
        upstream.stop()
        assert quiet.stop() == 0, quiet.log_tail()
