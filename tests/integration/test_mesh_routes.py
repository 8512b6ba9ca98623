"""Every VirtualService field the mesh serves, table-driven, against real sockets.

The gateway runs in the test's loop with a mesh table and a Service table, as the daemon wires
them; the upstreams are HTTP servers on their own loopback addresses (one port) that echo what
they received as JSON and fail or wait when the request asks them to (``x-fail: 503``,
``x-fail-once: 503`` for the first request with a given ``x-id``, ``x-delay-ms``). Requests
go through ``/function/hello`` (a Service with no function of that name: the mesh's route), with
a real HTTP client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import pytest
from prometheus_client import CollectorRegistry

from funcmesh.discovery.routes import HttpRoute, RouteTable
from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.gateway.server import Gateway
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.table import MeshTable
from funcmesh.mesh.telemetry import Telemetry
from funcmesh.model.istio_destinations import parse_destination_rule
from funcmesh.model.istio_networking import parse_virtual_service
from tests.integration.stub_leases import StubLease

PORT = 9000 + random.randrange(900)


@dataclass
class Upstream:
    name: str
    ip: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    failed_once: set[str] = field(default_factory=set)
    server: asyncio.Server | None = None
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, *lines = head.decode().split("\r\n")
                method, target, _ = line.split(" ", 2)
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (h.partition(":") for h in lines if h)
                )
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.append({"method": method, "target": target, "headers": headers})
                status = int(headers.get("x-fail", "200"))
                once = headers.get("x-fail-once")
                if once and headers.get("x-id") not in self.failed_once:
                    self.failed_once.add(headers.get("x-id", ""))
                    status = int(once)
                if delay := headers.get("x-delay-ms"):
                    await asyncio.sleep(int(delay) / 1000)
                answer = json.dumps(
                    {
                        "upstream": self.name,
                        "method": method,
                        "target": target,
                        "headers": headers,
                        "body": body.decode(),
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nX-Upstream: %s\r\n"
                    b"Content-Length: %d\r\n\r\n%s"
                    % (status, self.name.encode(), len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.handlers.discard(task)


@dataclass
class Mesh:
    gateway: Gateway
    table: MeshTable
    services: ServiceTable
    upstreams: dict[str, Upstream]

    @property
    def url(self) -> str:
        host, port = self.gateway.address
        return f"http://{host}:{port}/function"

    def route(self, *http: dict[str, Any], hosts: tuple[str, ...] = ("hello",)) -> None:
        self.table.put_virtual_service(
            parse_virtual_service(
                {
                    "apiVersion": "networking.istio.io/v1",
                    "kind": "VirtualService",
                    "metadata": {"name": "vs", "namespace": "default"},
                    "spec": {"hosts": list(hosts), "http": list(http)},
                }
            )
        )


def service(name: str, port: int = 8080) -> ServiceView:
    return ServiceView(
        namespace="default",
        name=name,
        type="ClusterIP",
        cluster_ip=None,
        ports=(ServicePortView(name="http", protocol="TCP", port=port, target_port=PORT),),
        selector=None,
    )


def endpoints(name: str, *upstreams: Upstream) -> EndpointsView:
    subset = EndpointSubsetView(
        ready=tuple(EndpointAddressView(ip=u.ip) for u in upstreams),
        not_ready=(),
        ports=(EndpointPortView(name="http", port=PORT),),
    )
    return EndpointsView(namespace="default", name=name, subsets=(subset,))


class NoFunctions:
    generation = 0

    def lookup(self, namespace: str, name: str) -> None:
        return None

    def select(self, namespace: str, selector: object) -> list[object]:
        return []


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    base = f"127.135.{random.randrange(256)}"
    upstreams = {
        name: Upstream(name, f"{base}.{index}")
        for index, name in enumerate(("hello", "canary", "shadow"), start=1)
    }
    for upstream in upstreams.values():
        upstream.server = await asyncio.start_server(upstream.handle, upstream.ip, PORT)
    services, table = ServiceTable(), MeshTable()
    for name, upstream in upstreams.items():
        services.put_service(service(name))
        services.put_endpoints(endpoints(name, upstream))
    gateway = Gateway(NoFunctions(), port=0, mesh=table, services=services)  # type: ignore[arg-type]
    await gateway.start()
    try:
        yield Mesh(gateway, table, services, upstreams)
    finally:
        await gateway.close(1.0)
        for upstream in upstreams.values():
            await upstream.close()


async def get(mesh: Mesh, path: str = "/hello", **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(kwargs.pop("method", "GET"), mesh.url + path, **kwargs)


def echoed(response: httpx.Response) -> dict[str, Any]:
    return cast(dict[str, Any], response.json())


# ---- matches: each row is a route that only some requests take ----

MATCHES = [
    ({"uri": {"exact": "/a"}}, "/hello/a", {}, True),
    ({"uri": {"exact": "/a"}}, "/hello/a/b", {}, False),
    ({"uri": {"prefix": "/api/"}}, "/hello/api/x?q=1", {}, True),
    ({"uri": {"prefix": "/api/"}}, "/hello/apix", {}, False),
    ({"uri": {"regex": "/items/[0-9]+"}}, "/hello/items/42", {}, True),
    ({"uri": {"regex": "/items/[0-9]+"}}, "/hello/items/42/x", {}, False),  # a full match
    ({"method": {"exact": "POST"}}, "/hello", {"method": "POST"}, True),
    ({"method": {"exact": "POST"}}, "/hello", {}, False),
    (
        {"headers": {"end-user": {"exact": "jason"}}},
        "/hello",
        {"headers": {"End-User": "jason"}},
        True,
    ),
    (
        {"headers": {"end-user": {"prefix": "ja"}}},
        "/hello",
        {"headers": {"end-user": "jane"}},
        True,
    ),
    (
        {"headers": {"end-user": {"exact": "jason"}}},
        "/hello",
        {"headers": {"end-user": "Jason"}},
        False,
    ),
    ({"headers": {"end-user": {"regex": ".*"}}}, "/hello", {}, False),  # absent: no match
    ({"queryParams": {"v": {"exact": "2"}}}, "/hello?v=2", {}, True),
    ({"queryParams": {"v": {"exact": "2"}}}, "/hello?v=3", {}, False),
    ({"queryParams": {"v": {"regex": "[0-9]"}}}, "/hello?x=1&v=7", {}, True),
]


@pytest.mark.parametrize(("match", "path", "options", "canary"), MATCHES)
async def test_a_match_sends_only_its_requests_to_its_route(
    mesh: Mesh, match: dict[str, Any], path: str, options: dict[str, Any], canary: bool
) -> None:
    mesh.route(
        {"match": [match], "route": [{"destination": {"host": "canary"}}]},
        {"route": [{"destination": {"host": "hello"}}]},
    )
    response = await get(mesh, path, **options)
    assert response.status_code == 200, response.text
    assert echoed(response)["upstream"] == ("canary" if canary else "hello")


async def test_a_port_match_holds_for_the_port_the_request_came_to(mesh: Mesh) -> None:
    mesh.route(
        {"match": [{"port": 8080}], "route": [{"destination": {"host": "canary"}}]},
        {"route": [{"destination": {"host": "hello"}}]},
    )
    # the gateway's /function path has no Service port: a port match does not hold there
    assert echoed(await get(mesh))["upstream"] == "hello"
    host, port = mesh.gateway.address
    entrance = mesh.gateway.function_entrance("default", "hello", 8080)
    server = await asyncio.get_running_loop().create_server(entrance, host, 0)
    try:
        vip_port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient(timeout=10) as client:
            through_vip = await client.get(f"http://{host}:{vip_port}/x")
        assert echoed(through_vip)["upstream"] == "canary"
    finally:
        server.close()


async def test_no_matching_route_is_404(mesh: Mesh) -> None:
    mesh.route(
        {"match": [{"uri": {"exact": "/only"}}], "route": [{"destination": {"host": "hello"}}]}
    )
    response = await get(mesh, "/hello/other")
    assert response.status_code == 404
    assert "no route" in response.text


# ---- what a route does ----


async def test_rewrite_uri_replaces_a_matched_prefix_and_keeps_the_query(mesh: Mesh) -> None:
    mesh.route(
        {
            "match": [{"uri": {"prefix": "/v1/"}}],
            "rewrite": {"uri": "/api/v2/"},
            "route": [{"destination": {"host": "hello"}}],
        },
        {
            "match": [{"uri": {"exact": "/old"}}],
            "rewrite": {"uri": "/new", "authority": "other.example"},
            "route": [{"destination": {"host": "hello"}}],
        },
    )
    assert echoed(await get(mesh, "/hello/v1/items?x=1"))["target"] == "/api/v2/items?x=1"
    exact = echoed(await get(mesh, "/hello/old?y=2"))
    assert exact["target"] == "/new?y=2"
    assert exact["headers"]["host"] == "other.example"


async def test_header_operations_on_the_request_and_the_response(mesh: Mesh) -> None:
    mesh.route(
        {
            "route": [{"destination": {"host": "hello"}}],
            "headers": {
                "request": {"set": {"x-a": "set"}, "add": {"x-b": "added"}, "remove": ["x-c"]},
                "response": {"set": {"x-upstream": "hidden"}, "add": {"x-d": "1"}},
            },
        }
    )
    response = await get(mesh, headers={"x-a": "client", "x-c": "secret"})
    seen = echoed(response)["headers"]
    assert seen["x-a"] == "set"
    assert seen["x-b"] == "added"
    assert "x-c" not in seen
    assert response.headers["x-upstream"] == "hidden"
    assert response.headers["x-d"] == "1"


async def test_weights_split_the_requests(mesh: Mesh) -> None:
    mesh.route(
        {
            "route": [
                {"destination": {"host": "hello"}, "weight": 70},
                {"destination": {"host": "canary"}, "weight": 30},
            ]
        }
    )
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [(await client.get(mesh.url + "/hello")).json()["upstream"] for _ in range(400)]
    # 30 % of 400 has a standard deviation of 2.3 %: 20-40 % is four of them
    assert 80 <= answers.count("canary") <= 160


async def test_an_abort_fault_answers_for_its_percentage(mesh: Mesh) -> None:
    mesh.route(
        {
            "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 50}}},
            "route": [{"destination": {"host": "hello"}}],
        }
    )
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [(await client.get(mesh.url + "/hello")).status_code for _ in range(200)]
    assert 60 <= statuses.count(503) <= 140
    assert set(statuses) == {200, 503}
    upstream = mesh.upstreams["hello"]
    assert len(upstream.seen) == statuses.count(200)  # an aborted request never reached it


async def test_a_delay_fault_waits_before_the_call(mesh: Mesh) -> None:
    mesh.route(
        {
            "fault": {"delay": {"fixedDelay": "0.3s", "percentage": {"value": 100}}},
            "route": [{"destination": {"host": "hello"}}],
        }
    )
    started = time.monotonic()
    response = await get(mesh)
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.3


async def test_a_route_timeout_answers_504_and_no_retry_follows(mesh: Mesh) -> None:
    mesh.route({"timeout": "0.2s", "route": [{"destination": {"host": "hello"}}]})
    started = time.monotonic()
    response = await get(mesh, headers={"x-delay-ms": "1000"})
    assert response.status_code == 504
    assert time.monotonic() - started < 0.9
    assert len(mesh.upstreams["hello"].seen) == 1


RETRIES = [
    # retryOn, what the first attempt answers (x-fail-once), retried?
    ("5xx", "500", True),
    ("5xx", "503", True),
    ("gateway-error", "503", True),
    ("gateway-error", "500", False),
    ("retriable-4xx", "409", True),
    ("retriable-4xx", "404", False),
    ("503", "503", True),  # a status code of its own
    ("503", "502", False),
    ("connect-failure", "500", False),
    ("reset", "500", False),
]


@pytest.mark.parametrize(("retry_on", "first", "retried"), RETRIES)
async def test_retry_on_conditions(mesh: Mesh, retry_on: str, first: str, retried: bool) -> None:
    mesh.route(
        {
            "retries": {"attempts": 2, "retryOn": retry_on},
            "route": [{"destination": {"host": "hello"}}],
        }
    )
    response = await get(mesh, headers={"x-fail-once": first, "x-id": retry_on + first})
    assert response.status_code == (200 if retried else int(first))
    assert len(mesh.upstreams["hello"].seen) == (2 if retried else 1)


async def test_a_per_try_timeout_is_retried_as_a_reset(mesh: Mesh) -> None:
    mesh.route(
        {
            "retries": {"attempts": 2, "perTryTimeout": "0.2s", "retryOn": "reset"},
            "route": [{"destination": {"host": "hello"}}],
        }
    )
    started = time.monotonic()
    response = await get(mesh, headers={"x-delay-ms": "1000"})
    assert response.status_code == 504
    assert len(mesh.upstreams["hello"].seen) == 3  # the first try and two retries
    assert time.monotonic() - started < 1.5


async def test_connect_failure_is_retried_on_another_endpoint(mesh: Mesh) -> None:
    dead = Upstream("dead", mesh.upstreams["shadow"].ip.rsplit(".", 1)[0] + ".9")
    live = mesh.upstreams["hello"]
    mesh.services.put_endpoints(endpoints("hello", dead, live))
    mesh.route(
        {
            "retries": {"attempts": 2, "retryOn": "connect-failure"},
            "route": [{"destination": {"host": "hello"}}],
        }
    )
    async with httpx.AsyncClient(timeout=10) as client:
        statuses = [(await client.get(mesh.url + "/hello")).status_code for _ in range(10)]
    assert statuses == [200] * 10


async def test_a_mirror_copies_its_percentage_and_drops_the_answers(mesh: Mesh) -> None:
    mesh.route(
        {
            "route": [{"destination": {"host": "hello"}}],
            "mirror": {"host": "shadow"},
            "mirrorPercentage": {"value": 50},
        }
    )
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(200):
            response = await client.get(mesh.url + "/hello", headers={"x-fail": "200"})
            assert response.json()["upstream"] == "hello"
    await asyncio.sleep(0.2)
    shadowed = mesh.upstreams["shadow"].seen
    assert 60 <= len(shadowed) <= 140
    assert all(seen["headers"]["host"].endswith("-shadow") for seen in shadowed)


def test_every_match_row_is_distinct() -> None:
    """The table itself: no duplicated row hides a missing case."""
    keys = [json.dumps(row, sort_keys=True) for row in MATCHES]
    assert len(keys) == len(set(keys))


def limit_to_one(mesh: Mesh) -> None:
    mesh.table.put_destination_rule(
        parse_destination_rule(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "hello", "namespace": "default"},
                "spec": {
                    "host": "hello",
                    "trafficPolicy": {
                        "connectionPool": {
                            "tcp": {"maxConnections": 1},
                            "http": {"http1MaxPendingRequests": 5},
                        }
                    },
                },
            }
        )
    )


async def test_a_call_waiting_for_a_connection_is_answered_when_the_endpoints_go(
    mesh: Mesh,
) -> None:
    limit_to_one(mesh)
    async with httpx.AsyncClient(timeout=10) as client:
        slow = asyncio.ensure_future(client.get(mesh.url + "/hello", headers={"x-delay-ms": "800"}))
        await asyncio.sleep(0.1)
        waiting = asyncio.ensure_future(client.get(mesh.url + "/hello"))
        await asyncio.sleep(0.1)
        mesh.services.put_endpoints(endpoints("hello"))  # the only endpoint leaves
        third = await client.get(mesh.url + "/hello")  # resolves again: the waiter learns it
        answered = await asyncio.wait_for(waiting, 2)
        assert (await slow).status_code == 200
    assert third.status_code == 503
    assert answered.status_code == 503
    assert "no healthy upstream" in answered.text


async def test_a_call_waiting_for_a_connection_is_answered_when_the_gateway_closes() -> None:
    upstream = Upstream("hello", f"127.135.{random.randrange(256)}.7")
    upstream.server = await asyncio.start_server(upstream.handle, upstream.ip, PORT)
    services, table = ServiceTable(), MeshTable()
    services.put_service(service("hello"))
    services.put_endpoints(endpoints("hello", upstream))
    gateway = Gateway(NoFunctions(), port=0, mesh=table, services=services)  # type: ignore[arg-type]
    await gateway.start()
    mesh = Mesh(gateway, table, services, {"hello": upstream})
    limit_to_one(mesh)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            slow = asyncio.ensure_future(
                client.get(mesh.url + "/hello", headers={"x-delay-ms": "3000"})
            )
            await asyncio.sleep(0.1)
            waiting = asyncio.ensure_future(client.get(mesh.url + "/hello"))
            await asyncio.sleep(0.1)
            await gateway.close(0.2)
            answered = await asyncio.wait_for(waiting, 2)
            assert answered.status_code == 503
            assert "closing" in answered.text
            with pytest.raises(httpx.HTTPError):
                await slow  # cut after the drain
    finally:
        await upstream.close()


class OneFunction:
    """A function ``fn`` whose instance (the upstream) always has room: the pool's fast path."""

    display_name = "default/fn"
    namespace = "default"
    generation = 0

    def __init__(self, address: tuple[str, int]) -> None:
        self.labels = {"function": "fn"}
        self._lease = StubLease(address)

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # never busy: nothing to queue for

    def try_acquire(self) -> StubLease:
        return self._lease

    async def acquire(self) -> StubLease:
        return self._lease

    def lookup(self, namespace: str, name: str) -> OneFunction | None:
        return self if name == "fn" else None

    def select(self, namespace: str, selector: dict[str, str]) -> list[OneFunction]:
        return [self] if all(self.labels.get(k) == v for k, v in selector.items()) else []


async def test_a_destination_rule_alone_applies_to_a_function(mesh: Mesh) -> None:
    """No VirtualService: a function's DestinationRule (here its connection limits) still
    acts on /function/fn."""
    upstream = mesh.upstreams["hello"]
    function = OneFunction((upstream.ip, PORT))
    services, table = ServiceTable(), MeshTable()
    fn_service = dataclasses.replace(service("fn"), selector=(("function", "fn"),), function="fn")
    services.put_service(fn_service)
    gateway = Gateway(function, port=0, mesh=table, services=services)  # type: ignore[arg-type]
    await gateway.start()
    try:
        url = f"http://{gateway.address[0]}:{gateway.address[1]}/function/fn"
        async with httpx.AsyncClient(timeout=10) as client:
            calls = [client.get(url, headers={"x-delay-ms": "400"}) for _ in range(3)]
            assert {r.status_code for r in await asyncio.gather(*calls)} == {200}  # no rule
            table.put_destination_rule(
                parse_destination_rule(
                    {
                        "apiVersion": "networking.istio.io/v1",
                        "kind": "DestinationRule",
                        "metadata": {"name": "fn", "namespace": "default"},
                        "spec": {
                            "host": "fn",
                            "trafficPolicy": {
                                "connectionPool": {
                                    "tcp": {"maxConnections": 1},
                                    "http": {"http1MaxPendingRequests": 1},
                                }
                            },
                        },
                    }
                )
            )
            calls = [client.get(url, headers={"x-delay-ms": "400"}) for _ in range(3)]
            statuses = sorted(r.status_code for r in await asyncio.gather(*calls))
        assert statuses == [200, 200, 503]
    finally:
        await gateway.close(1.0)


# ---- HTTPTriggers take the same routes as /function/NAME ----


class Function:
    """A function whose one instance (an upstream) always has room: the pool's fast path."""

    namespace = "default"

    def __init__(self, name: str, address: tuple[str, int]) -> None:
        self.display_name = f"default/{name}"
        self.labels = {"function": name}
        self._lease = StubLease(address)
        self._lease.instance_id = f"{name}-0"  # the key of its upstream connections

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # never busy: nothing to queue for

    def try_acquire(self) -> StubLease:
        return self._lease

    async def acquire(self) -> StubLease:
        return self._lease


class Functions:
    generation = 0

    def __init__(self, *functions: Function) -> None:
        self._functions = {f.display_name: f for f in functions}

    def lookup(self, namespace: str, name: str) -> Function | None:
        return self._functions.get(f"{namespace}/{name}")

    def select(self, namespace: str, selector: dict[str, str]) -> list[Function]:
        return [
            f
            for f in self._functions.values()
            if all(f.labels.get(k) == v for k, v in selector.items())
        ]


@pytest.fixture
async def triggered(mesh: Mesh) -> AsyncIterator[tuple[Gateway, MeshTable]]:
    """A gateway with two functions, ``fn`` (the upstream "hello") and ``fn-canary`` (the
    upstream "canary"), and an HTTPTrigger for host ``shop.test`` to ``fn``, with CORS."""
    hello, canary = mesh.upstreams["hello"], mesh.upstreams["canary"]
    functions = Functions(
        Function("fn", (hello.ip, PORT)), Function("fn-canary", (canary.ip, PORT))
    )
    services, table, triggers = ServiceTable(), MeshTable(), RouteTable()
    for name in ("fn", "fn-canary"):
        view = dataclasses.replace(service(name), selector=(("function", name),), function=name)
        services.put_service(view)
    triggers.replace(
        [
            HttpRoute(
                namespace="default",
                trigger="shop",
                function="fn",
                host="shop.test",
                path="/",
                cors_enable=True,
                realm="default/shop",
            )
        ]
    )
    gateway = Gateway(
        functions,  # type: ignore[arg-type]
        port=0,
        mesh=table,
        services=services,
        http_routes=triggers,
    )
    await gateway.start()
    try:
        yield gateway, table
    finally:
        await gateway.close(1.0)


def route_fn(table: MeshTable, *http: dict[str, Any]) -> None:
    table.put_virtual_service(
        parse_virtual_service(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "VirtualService",
                "metadata": {"name": "fn", "namespace": "default"},
                "spec": {"hosts": ["fn"], "http": list(http)},
            }
        )
    )


async def test_a_trigger_is_split_by_its_functions_virtual_service(
    triggered: tuple[Gateway, MeshTable],
) -> None:
    gateway, table = triggered
    url = f"http://{gateway.address[0]}:{gateway.address[1]}/cart?x=1"
    async with httpx.AsyncClient(timeout=10, headers={"Host": "shop.test"}) as client:
        plain = {(await client.get(url)).json()["upstream"] for _ in range(20)}
        assert plain == {"hello"}  # no rule: the function itself
        route_fn(
            table,
            {
                "route": [
                    {"destination": {"host": "fn"}, "weight": 70},
                    {"destination": {"host": "fn-canary"}, "weight": 30},
                ]
            },
        )
        answers = [await client.get(url) for _ in range(400)]
    upstreams = [answer.json()["upstream"] for answer in answers]
    # 30 % of 400 has a standard deviation of 2.3 %: 20-40 % is four of them
    assert 80 <= upstreams.count("canary") <= 160
    assert {answer.json()["target"] for answer in answers} == {"/cart?x=1"}  # as sent
    assert all(a.headers["access-control-allow-origin"] == "*" for a in answers)  # CORS kept


async def test_a_trigger_answers_a_virtual_service_fault_and_its_no_route(
    triggered: tuple[Gateway, MeshTable],
) -> None:
    gateway, table = triggered
    route_fn(
        table,
        {
            "match": [{"uri": {"prefix": "/broken"}}],
            "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
            "route": [{"destination": {"host": "fn"}}],
        },
        {"match": [{"uri": {"prefix": "/ok"}}], "route": [{"destination": {"host": "fn"}}]},
    )
    base = f"http://{gateway.address[0]}:{gateway.address[1]}"
    async with httpx.AsyncClient(timeout=10, headers={"Host": "shop.test"}) as client:
        aborted = await client.get(base + "/broken/x")
        routed = await client.get(base + "/ok")
        unrouted = await client.get(base + "/elsewhere")
    assert aborted.status_code == 418
    assert aborted.json() == {"error": "fault filter abort"}
    assert aborted.headers["access-control-allow-origin"] == "*"
    assert routed.json()["upstream"] == "hello"
    assert unrouted.status_code == 404
    assert "no route of fn.default.svc.cluster.local" in unrouted.text


async def test_a_trigger_whose_function_is_gone_says_which_trigger(mesh: Mesh) -> None:
    triggers = RouteTable()
    triggers.replace(
        [
            HttpRoute(
                namespace="default",
                trigger="t",
                function="gone",
                host="t.test",
                path="/",
                cors_enable=False,
                realm="default/t",
            )
        ]
    )
    gateway = Gateway(
        NoFunctions(),  # type: ignore[arg-type]
        port=0,
        mesh=MeshTable(),
        services=ServiceTable(),
        http_routes=triggers,
    )
    await gateway.start()
    try:
        url = f"http://{gateway.address[0]}:{gateway.address[1]}/"
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url, headers={"Host": "t.test"})
        assert response.status_code == 404
        assert "function default/gone of HTTP trigger default/t not found" in response.text
    finally:
        await gateway.close(1.0)


# ---- consistentHash httpCookie: the cookie is set when a ttl is given ----


def hash_by_cookie(mesh: Mesh, cookie: dict[str, str]) -> None:
    mesh.services.put_endpoints(
        endpoints("hello", mesh.upstreams["hello"], mesh.upstreams["canary"])
    )
    mesh.table.put_destination_rule(
        parse_destination_rule(
            {
                "apiVersion": "networking.istio.io/v1",
                "kind": "DestinationRule",
                "metadata": {"name": "hello", "namespace": "default"},
                "spec": {
                    "host": "hello",
                    "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": cookie}}},
                },
            }
        )
    )


async def test_a_cookie_with_a_ttl_is_set_and_keeps_the_client_on_one_member(mesh: Mesh) -> None:
    hash_by_cookie(mesh, {"name": "sticky", "ttl": "3600s"})
    members: set[str] = set()
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.get(mesh.url + "/hello")
        set_cookie = first.headers["set-cookie"]
        assert re.fullmatch(r'sticky="[0-9a-f]{16}"; Max-Age=3600; HttpOnly', set_cookie)
        for _ in range(10):  # the client's jar sends the cookie back
            response = await client.get(mesh.url + "/hello")
            assert "set-cookie" not in response.headers  # it has one
            members.add(response.json()["upstream"])
        assert members == {first.json()["upstream"]}
    # new clients get new cookies, spread over both members (all on one: p = 2^-23)
    async with httpx.AsyncClient(timeout=10) as fresh:
        cookies = []
        for _ in range(24):
            fresh.cookies.clear()
            response = await fresh.get(mesh.url + "/hello")
            cookies.append(response.headers["set-cookie"])
            members.add(response.json()["upstream"])
    assert len(set(cookies)) == 24
    assert members == {"hello", "canary"}


async def test_a_cookie_without_a_ttl_is_not_set(mesh: Mesh) -> None:
    hash_by_cookie(mesh, {"name": "sticky"})
    async with httpx.AsyncClient(timeout=10) as client:
        responses = [await client.get(mesh.url + "/hello") for _ in range(20)]
        with_cookie = [
            await client.get(mesh.url + "/hello", headers={"Cookie": "sticky=ann"})
            for _ in range(5)
        ]
    assert all("set-cookie" not in r.headers for r in responses)
    assert {r.json()["upstream"] for r in responses} == {"hello", "canary"}  # no key: random
    assert len({r.json()["upstream"] for r in with_cookie}) == 1


async def test_a_routed_call_logs_the_function_instance_that_answered(mesh: Mesh) -> None:
    """Envoy's %UPSTREAM_HOST% for a function member: the instance's address."""
    hello = mesh.upstreams["hello"]
    services, table = ServiceTable(), MeshTable()
    services.put_service(
        dataclasses.replace(service("fn"), selector=(("function", "fn"),), function="fn")
    )
    route_fn(table, {"route": [{"destination": {"host": "fn"}}]})
    access_log = AccessLog()
    gateway = Gateway(
        Functions(Function("fn", (hello.ip, PORT))),  # type: ignore[arg-type]
        port=0,
        mesh=table,
        services=services,
        telemetry=Telemetry(CollectorRegistry(), access_log),
    )
    await gateway.start()
    try:
        url = f"http://{gateway.address[0]}:{gateway.address[1]}/function/fn"
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(url)).json()["upstream"] == "hello"
    finally:
        await gateway.close(1.0)
    ((_, line),) = access_log.lines()
    assert f' "{hello.ip}:{PORT}" outbound|8080||fn.default.svc.cluster.local ' in line
