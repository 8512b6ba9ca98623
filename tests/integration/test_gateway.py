"""The gateway over real sockets, on both event loops.

A real ``Gateway`` listens on 127.0.0.1:0; a fake ``Backends`` (the runtime seam) leases real
instance servers started here on 127.128.0.x, each with a behaviour: echo the request, hang,
break mid-response, stream chunks, and so on. Clients are httpx or raw sockets.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import httpx
import pytest
import uvloop
from prometheus_client import CollectorRegistry

from funcmesh.errors import FuncmeshError, QueueFull, Unavailable
from funcmesh.gateway.backends import Lease
from funcmesh.gateway.server import Gateway
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.telemetry import CONNECTION_FAILURE_DETAILS, VIA_UPSTREAM, Telemetry

WAIT_S = 5.0


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    if request.param == "uvloop":
        return cast(asyncio.AbstractEventLoopPolicy, uvloop.EventLoopPolicy())
    return asyncio.DefaultEventLoopPolicy()


# ---- instances: real HTTP/1.1 servers with a behaviour per request ----


@dataclass
class Seen:
    """A request as the instance received it."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes


class InstanceConnection(asyncio.Protocol):
    def __init__(self, instance: Instance) -> None:
        self.instance = instance
        self.parser = httptools.HttpRequestParser(self)
        self.requests_here = 0
        self.transport = cast(asyncio.Transport, None)
        self._reset()

    def _reset(self) -> None:
        self._target = b""
        self._headers: dict[str, str] = {}
        self._body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.instance.connections += 1
        self.instance.transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.instance.transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self._target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.requests_here += 1
        method = self.parser.get_method().decode()
        seen = Seen(method, self._target.decode(), self._headers, self._body)
        self._reset()
        self.instance.seen.append(seen)
        self.instance.got_request.set()
        self.instance.behaviour(self, seen)

    def reply(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        head_only: bool = False,
    ) -> None:
        lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *map(": ".join, headers)]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.transport.write(head if head_only else head + body)


Behaviour = Callable[[InstanceConnection, Seen], None]


class Instance:
    def __init__(self, host: str, behaviour: Behaviour) -> None:
        self.host = host
        self.behaviour = behaviour
        self.connections = 0
        self.seen: list[Seen] = []
        self.got_request = asyncio.Event()
        self.transports: set[asyncio.Transport] = set()
        self.deferred: list[InstanceConnection] = []
        self._server: asyncio.Server | None = None
        self._timers: list[asyncio.TimerHandle] = []

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self.host, int(self._server.sockets[0].getsockname()[1])

    def later(self, delay_s: float, action: Callable[[], None]) -> None:
        self._timers.append(asyncio.get_running_loop().call_later(delay_s, action))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: InstanceConnection(self), self.host, 0)

    async def close(self) -> None:
        assert self._server is not None
        for timer in self._timers:
            timer.cancel()
        self._server.close()
        for transport in list(self.transports):
            transport.abort()
        await self._server.wait_closed()


def echo(connection: InstanceConnection, seen: Seen) -> None:
    document = {
        "method": seen.method,
        "target": seen.target,
        "headers": seen.headers,
        "body": seen.body.decode(),
    }
    body = json.dumps(document).encode()
    content_type = [("Content-Type", "application/json")]
    connection.reply(200, body, content_type, head_only=seen.method == "HEAD")


def hang(connection: InstanceConnection, seen: Seen) -> None:
    pass


def defer(connection: InstanceConnection, seen: Seen) -> None:
    connection.instance.deferred.append(connection)


def break_mid_response(connection: InstanceConnection, seen: Seen) -> None:
    connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Le")
    connection.transport.close()


def break_mid_body(connection: InstanceConnection, seen: Seen) -> None:
    connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")
    connection.instance.later(0.01, connection.transport.close)


def continue_then_answer(connection: InstanceConnection, seen: Seen) -> None:
    connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    connection.reply(201, b"created")


def fail_with_500(connection: InstanceConnection, seen: Seen) -> None:
    connection.reply(500, b"handler raised ValueError")


def stream_chunks(connection: InstanceConnection, seen: Seen) -> None:
    connection.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    connection.transport.write(b"5\r\nhello\r\n1\r\n \r\n")
    connection.instance.later(0.01, lambda: connection.transport.write(b"5\r\nworld\r\n0\r\n\r\n"))


def answer_until_close(connection: InstanceConnection, seen: Seen) -> None:
    connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
    connection.transport.write(b"close")
    connection.transport.close()


def one_request_per_connection(connection: InstanceConnection, seen: Seen) -> None:
    """Keep-alive advertised, but the next request on the connection finds it closing."""
    if connection.requests_here == 1:
        echo(connection, seen)
    else:
        connection.transport.close()


def big_body(connection: InstanceConnection, seen: Seen) -> None:
    connection.reply(200, bytes(range(256)) * 8192)  # 2 MiB


def slow_first_path(connection: InstanceConnection, seen: Seen) -> None:
    if seen.target == "/slow":
        connection.instance.later(0.05, lambda: echo(connection, seen))
    else:
        echo(connection, seen)


# ---- the runtime seam, faked ----


@dataclass
class FakeLease:
    address: tuple[str, int]
    instance_id: str
    timeout_s: float
    exit: str | None = None
    releases: list[tuple[bool, int]] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        assert duration_s >= 0
        self.releases.append((ok, status))
        self.released.set()

    def kill(self, reason: str) -> None:
        self.kills.append(reason)

    async def exit_reason(self, wait_s: float) -> str | None:
        return self.exit


class FakeBackend:
    def __init__(
        self,
        display_name: str,
        *,
        address: tuple[str, int] = ("127.128.0.1", 9),
        error: FuncmeshError | None = None,
        timeout_s: float = WAIT_S,
        exit: str | None = None,
        must_wait: bool = False,
        admitted: asyncio.Event | None = None,
        bug: Exception | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self._display_name = display_name
        self.labels: Mapping[str, str] = labels or {}  # its pods' labels
        self._must_wait = must_wait  # try_acquire gives nothing: calls wait in acquire
        self._admitted = admitted  # acquire waits for it
        self._bug = bug  # try_acquire raises it, as a bug in the runtime would
        self._address = address
        self._error = error
        self._timeout_s = timeout_s
        self._exit = exit
        self.leases: list[FakeLease] = []

    @property
    def display_name(self) -> str:
        return self._display_name

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # waits, if at all, in acquire()

    def try_acquire(self) -> Lease | None:
        if self._bug is not None:
            raise self._bug
        if self._error is not None or self._must_wait or self._admitted is not None:
            return None
        return self._lease()

    async def acquire(self) -> Lease:
        if self._error is not None:
            raise self._error
        if self._admitted is not None:
            await self._admitted.wait()
        await asyncio.sleep(0)  # a real wait, as in a queue
        return self._lease()

    def _lease(self) -> FakeLease:
        instance_id = self._display_name.rpartition("/")[2] + "-0"
        lease = FakeLease(self._address, instance_id, self._timeout_s, self._exit)
        self.leases.append(lease)
        return lease

    @property
    def releases(self) -> list[tuple[bool, int]]:
        return [release for lease in self.leases for release in lease.releases]


class FakeBackends:
    def __init__(self, backends: Iterable[FakeBackend]) -> None:
        self._backends = {tuple(b.display_name.split("/")): b for b in backends}

    def lookup(self, namespace: str, name: str) -> FakeBackend | None:
        return self._backends.get((namespace, name))


# ---- fixtures and client helpers ----

StartInstance = Callable[..., Awaitable[Instance]]
StartGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def start_instance() -> AsyncIterator[StartInstance]:
    instances: list[Instance] = []

    async def start(behaviour: Behaviour, host: str = "127.128.0.7") -> Instance:
        instance = Instance(host, behaviour)
        await instance.start()
        instances.append(instance)
        return instance

    yield start
    for instance in instances:
        await instance.close()


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    gateways: list[Gateway] = []

    async def start(*backends: FakeBackend, **options: Any) -> Gateway:
        gateway = Gateway(FakeBackends(backends), port=0, **options)
        await gateway.start()
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        await gateway.close(drain_s=0)


def client(gateway: Gateway) -> httpx.AsyncClient:
    host, port = gateway.address
    return httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=WAIT_S)


async def call(gateway: Gateway, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async with client(gateway) as http:
        return await http.request(method, path, **kwargs)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class ResponseReader:
    """Reads HTTP/1.1 responses from a raw connection, in the order they come."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body = b""
        self.responses: list[RawResponse] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        self.responses.append(RawResponse(status, self._headers, self._body))
        self._headers, self._body = {}, b""

    async def read(self, count: int) -> list[RawResponse]:
        async with asyncio.timeout(WAIT_S):
            while len(self.responses) < count:
                data = await self._reader.read(65536)
                assert data, f"connection closed after {len(self.responses)} responses"
                self._parser.feed_data(data)
        return self.responses[:count]


async def open_raw(gateway: Gateway) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*gateway.address)


async def close_raw(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    async with asyncio.timeout(WAIT_S):
        return await reader.read()


async def wait_for(condition: Callable[[], bool]) -> None:
    """Poll, with a deadline, state that offers no event to wait on."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


async def wait_event(event: asyncio.Event) -> None:
    async with asyncio.timeout(WAIT_S):
        await event.wait()


def error_of(response: httpx.Response | RawResponse) -> dict[str, str]:
    body = response.content if isinstance(response, httpx.Response) else response.body
    return cast(dict[str, str], json.loads(body))


# ---- relaying ----


async def test_get_relays_path_query_and_response(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    hello = FakeBackend("default/hello", address=instance.address)
    gateway = await start_gateway(hello)

    response = await call(gateway, "GET", "/function/hello/a/b?x=1")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    document = response.json()
    assert (document["method"], document["target"]) == ("GET", "/a/b?x=1")
    assert hello.releases == [(True, 200)]


async def test_call_that_waits_for_an_instance_is_relayed_when_one_is_free(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    admitted = asyncio.Event()
    hello = FakeBackend("default/hello", address=instance.address, admitted=admitted)
    gateway = await start_gateway(hello)

    waiting = asyncio.create_task(call(gateway, "POST", "/function/hello/q", content=b"hi"))
    await wait_for(lambda: gateway.open_connections == 1)
    assert not waiting.done()
    admitted.set()
    response = await waiting

    assert (response.status_code, response.json()["body"]) == (200, "hi")
    assert hello.releases == [(True, 200)]


async def test_namespaced_route_and_bare_function_path(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("team-a/hello", address=instance.address))

    bare = await call(gateway, "GET", "/function/hello.team-a")
    slash = await call(gateway, "GET", "/function/hello.team-a/")

    assert bare.json()["target"] == slash.json()["target"] == "/"


async def test_post_relays_body_with_content_length(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))

    response = await call(gateway, "POST", "/function/hello", content=b'{"it-s": "alive"}')

    assert response.json()["body"] == '{"it-s": "alive"}'
    assert instance.seen[0].headers["content-length"] == "17"


async def test_chunked_request_body_reaches_the_instance_de_chunked(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))

    async def pieces() -> AsyncIterator[bytes]:
        for piece in (b"it ", b"is ", b"chunked"):
            yield piece

    response = await call(gateway, "PUT", "/function/hello", content=pieces())

    assert response.json()["body"] == "it is chunked"
    assert instance.seen[0].headers["content-length"] == "13"
    assert "transfer-encoding" not in instance.seen[0].headers


async def test_event_and_forwarded_headers_are_added(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))

    response = await call(
        gateway, "POST", "/function/hello", json={"a": 1}, headers={"Connection": "keep-alive"}
    )

    headers = response.json()["headers"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{15}", headers["event-id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", headers["event-time"])
    assert headers["event-type"] == "application/json"
    assert headers["event-namespace"] == "gateway.funcmesh.io"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-host"] == "{}:{}".format(*gateway.address)
    assert headers["x-forwarded-proto"] == "http"
    assert "connection" not in headers


async def test_event_headers_sent_by_the_client_are_kept(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    mine = {
        "event-id": "my-event",
        "event-time": "2009-11-10 23:00:00 +0000 UTC",
        "event-type": "text/plain",
        "event-namespace": "cronjobtrigger.kubeless.io",
    }

    response = await call(gateway, "GET", "/function/hello", headers=mine)

    headers = response.json()["headers"]
    assert {name: headers[name] for name in mine} == mine


async def test_chunked_response_is_relayed_chunked(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(stream_chunks)
    gateway = await start_gateway(FakeBackend("default/stream", address=instance.address))

    response = await call(gateway, "GET", "/function/stream")

    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.content == b"hello world"


async def test_response_ended_by_close_is_rechunked_and_client_stays_connected(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(answer_until_close)
    gateway = await start_gateway(FakeBackend("default/old", address=instance.address))

    async with client(gateway) as http:
        first = await http.get("/function/old")
        second = await http.get("/function/old")

    assert first.content == second.content == b"until close"
    assert first.headers["transfer-encoding"] == "chunked"


async def test_http10_client_gets_a_body_ended_by_close(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(answer_until_close)
    gateway = await start_gateway(FakeBackend("default/old", address=instance.address))
    reader, writer = await open_raw(gateway)

    writer.write(b"GET /function/old HTTP/1.0\r\n\r\n")
    response = await read_until_closed(reader)
    await close_raw(writer)

    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding" not in head
    assert b"Connection: close" in head
    assert body == b"until close"


async def test_upgrade_request_is_answered_as_a_plain_one(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    reader, writer = await open_raw(gateway)

    writer.write(
        b"GET /function/hello/ws HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\nGET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
    )
    plain, health = await ResponseReader(reader).read(2)
    await close_raw(writer)

    assert plain.status == 200
    assert "upgrade" not in json.loads(plain.body)["headers"]
    assert health.body == b"OK"


async def test_large_response_is_relayed_intact(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(big_body)
    gateway = await start_gateway(FakeBackend("default/big", address=instance.address))

    async with client(gateway) as http, http.stream("GET", "/function/big") as response:
        body = b"".join([chunk async for chunk in response.aiter_raw(4096)])

    assert body == bytes(range(256)) * 8192


async def test_head_has_no_body_and_the_connections_stay_usable(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    reader, writer = await open_raw(gateway)

    writer.write(b"HEAD /function/hello HTTP/1.1\r\nHost: gw\r\n\r\n")
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.write(b"GET /function/hello/after HTTP/1.1\r\nHost: gw\r\n\r\n")
    [after] = await ResponseReader(reader).read(1)  # a body after the HEAD answer would break it
    await close_raw(writer)

    assert head.startswith(b"HTTP/1.1 200 ")
    assert re.search(rb"\r\nContent-Length: [1-9]", head)
    assert json.loads(after.body)["target"] == "/after"
    assert instance.connections == 1


async def test_pipelined_head_then_get_reuse_the_instance_connection(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    reader, writer = await open_raw(gateway)

    writer.write(
        b"HEAD /function/hello/h HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /function/hello/g HTTP/1.1\r\nHost: gw\r\n\r\n"
    )
    async with asyncio.timeout(WAIT_S):
        head = await reader.readuntil(b"\r\n\r\n")
    [after] = await ResponseReader(reader).read(1)
    await close_raw(writer)

    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(after.body)["target"] == "/g"
    assert instance.connections == 1


async def test_interim_responses_of_the_instance_are_not_relayed(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(continue_then_answer)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))

    response = await call(gateway, "POST", "/function/hello", content=b"new")

    assert (response.status_code, response.content) == (201, b"created")


async def test_client_asking_to_close_gets_its_answer_then_the_close(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    reader, writer = await open_raw(gateway)

    writer.write(b"GET /function/hello/bye HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
    [response] = await ResponseReader(reader).read(1)
    rest = await read_until_closed(reader)
    await close_raw(writer)

    assert json.loads(response.body)["target"] == "/bye"
    assert response.headers["connection"] == "close"
    assert rest == b""


async def test_function_5xx_is_relayed_and_released_as_failure(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(fail_with_500)
    broken = FakeBackend("default/broken", address=instance.address)
    gateway = await start_gateway(broken)

    response = await call(gateway, "GET", "/function/broken")

    assert response.status_code == 500
    assert response.content == b"handler raised ValueError"
    assert broken.releases == [(False, 500)]


# ---- connections ----


async def test_sequential_calls_reuse_one_instance_connection(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))

    async with client(gateway) as http:
        statuses = [(await http.get(f"/function/hello/{n}")).status_code for n in range(10)]
    for n in range(5):  # new client connections, same instance connection
        statuses.append((await call(gateway, "GET", f"/function/hello/{n}")).status_code)

    assert statuses == [200] * 15
    assert instance.connections == 1


async def test_stale_keep_alive_connection_is_retried_on_a_fresh_one(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(one_request_per_connection)
    hello = FakeBackend("default/hello", address=instance.address)
    gateway = await start_gateway(hello)

    responses = [await call(gateway, "POST", "/function/hello", content=b"x") for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert instance.connections == 3
    assert len(instance.seen) == 5  # two requests met a closing connection and were sent again
    assert hello.releases == [(True, 200)] * 3


@pytest.mark.parametrize("must_wait", [False, True], ids=["instance-free", "instance-waited-for"])
async def test_pipelined_requests_are_answered_in_order(
    start_instance: StartInstance, start_gateway: StartGateway, must_wait: bool
) -> None:
    instance = await start_instance(slow_first_path)
    backend = FakeBackend("default/hello", address=instance.address, must_wait=must_wait)
    gateway = await start_gateway(backend)
    reader, writer = await open_raw(gateway)

    writer.write(
        b"GET /function/hello/slow HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
        b"POST /function/hello/fast HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi"
    )
    slow, health, fast = await ResponseReader(reader).read(3)
    await close_raw(writer)

    assert json.loads(slow.body)["target"] == "/slow"
    assert (health.status, health.body) == (200, b"OK")
    assert json.loads(fast.body)["body"] == "hi"


async def test_idle_instance_connections_cover_the_calls_it_served_at_once(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(defer)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    at_once = 40  # more than a small fixed cap of idle connections would keep

    async with httpx.AsyncClient(
        base_url="http://{}:{}".format(*gateway.address),
        timeout=WAIT_S,
        limits=httpx.Limits(max_connections=at_once),
    ) as http:

        async def burst() -> list[int]:
            before = len(instance.deferred)
            calls = [asyncio.create_task(http.get("/function/hello")) for _ in range(at_once)]
            await wait_for(lambda: len(instance.deferred) == before + at_once)
            waiting = zip(instance.deferred[before:], instance.seen[before:], strict=True)
            for connection, seen in waiting:
                echo(connection, seen)
            return [response.status_code for response in await asyncio.gather(*calls)]

        assert await burst() == [200] * at_once
        assert await burst() == [200] * at_once

    assert instance.connections == at_once  # the second burst reused every connection


async def test_expect_100_continue_is_answered_by_the_gateway(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(FakeBackend("default/hello", address=instance.address))
    reader, writer = await open_raw(gateway)

    writer.write(
        b"POST /function/hello HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(WAIT_S):
        interim = await reader.readuntil(b"\r\n\r\n")
    writer.write(b"hello")
    [response] = await ResponseReader(reader).read(1)
    await close_raw(writer)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert json.loads(response.body)["body"] == "hello"
    assert "expect" not in instance.seen[0].headers


# ---- answers of the gateway itself ----


async def test_healthz(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()

    response = await call(gateway, "GET", "/healthz")

    assert (response.status_code, response.text) == (200, "OK")


async def test_unknown_function_is_404(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()

    response = await call(gateway, "GET", "/function/nope")

    assert response.status_code == 404
    assert error_of(response)["error"] == "function default/nope not found"


async def test_other_paths_are_404_with_a_hint(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()

    response = await call(gateway, "GET", "/functions/hello?x=1")

    assert response.status_code == 404
    assert "no route for /functions/hello" in error_of(response)["error"]
    assert "/function/NAME" in error_of(response)["error"]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (QueueFull("function default/busy: 100 calls are waiting; retry later"), 429),
        (Unavailable("function default/busy cannot start: the build failed"), 503),
        (FuncmeshError("function default/busy: the zygote is gone"), 503),
    ],
)
async def test_acquire_failures(
    start_gateway: StartGateway, error: FuncmeshError, status: int
) -> None:
    gateway = await start_gateway(FakeBackend("default/busy", error=error))

    response = await call(gateway, "GET", "/function/busy")

    assert response.status_code == status
    assert error_of(response) == {"error": str(error), "function": "default/busy"}


async def test_body_over_the_limit_is_413_before_it_is_sent(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(
        FakeBackend("default/hello", address=instance.address), max_body_bytes=1024
    )
    reader, writer = await open_raw(gateway)

    writer.write(b"POST /function/hello HTTP/1.1\r\nHost: gw\r\nContent-Length: 1025\r\n\r\n")
    [response] = await ResponseReader(reader).read(1)
    await close_raw(writer)

    assert response.status == 413
    assert "1024 bytes" in error_of(response)["error"]
    assert response.headers["connection"] == "close"
    assert instance.seen == []


async def test_chunked_body_over_the_limit_is_413(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    gateway = await start_gateway(
        FakeBackend("default/hello", address=instance.address), max_body_bytes=1024
    )
    reader, writer = await open_raw(gateway)

    writer.write(b"POST /function/hello HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"400\r\n" + b"x" * 1024 + b"\r\n1\r\nx\r\n")
    [response] = await ResponseReader(reader).read(1)
    rest = await read_until_closed(reader)
    await close_raw(writer)

    assert response.status == 413
    assert rest == b""
    assert instance.seen == []


# ---- failures of the instance ----


async def test_hanging_instance_is_killed_and_answered_504(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(hang)
    slow = FakeBackend("default/x", address=instance.address, timeout_s=0.2)
    gateway = await start_gateway(slow)

    response = await call(gateway, "GET", "/function/x")

    assert response.status_code == 504
    assert error_of(response)["error"] == (
        "Request timeout exceeded: function default/x did not answer within 0.2s"
    )
    assert slow.leases[0].kills == ["killed after the 0.2s timeout"]
    assert slow.releases == [(False, 504)]


async def test_instance_exiting_mid_response_is_502_with_the_exit_reason(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(break_mid_response)
    hello = FakeBackend("default/hello", address=instance.address, exit="killed by signal 9")
    gateway = await start_gateway(hello)

    response = await call(gateway, "GET", "/function/hello")

    assert response.status_code == 502
    assert error_of(response) == {
        "error": "instance hello-0 exited during the call: killed by signal 9",
        "function": "default/hello",
    }
    assert hello.releases == [(False, 502)]


async def test_instance_exiting_mid_body_cuts_the_client_connection(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(break_mid_body)
    hello = FakeBackend("default/hello", address=instance.address, exit="exited with code 1")
    gateway = await start_gateway(hello)

    with pytest.raises(httpx.RemoteProtocolError):
        await call(gateway, "GET", "/function/hello")
    await wait_event(hello.leases[0].released)

    assert hello.releases == [(False, 502)]


async def test_refused_connection_to_a_live_instance_is_502(start_gateway: StartGateway) -> None:
    with socket.socket() as probe:
        probe.bind(("127.128.0.9", 0))
        address = probe.getsockname()
    hello = FakeBackend("default/hello", address=address)
    gateway = await start_gateway(hello)

    response = await call(gateway, "GET", "/function/hello")

    assert response.status_code == 502
    message = error_of(response)["error"]
    assert message.startswith(f"connection to instance hello-0 at 127.128.0.9:{address[1]} failed")
    assert "connection refused" in message
    assert hello.releases == [(False, 502)]


async def test_client_leaving_mid_call_releases_the_lease(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(defer)
    hello = FakeBackend("default/hello", address=instance.address)
    gateway = await start_gateway(hello)
    reader, writer = await open_raw(gateway)

    writer.write(b"GET /function/hello HTTP/1.1\r\nHost: gw\r\n\r\n")
    await wait_event(instance.got_request)
    await close_raw(writer)
    await wait_for(lambda: gateway.open_connections == 0)
    echo(instance.deferred[0], instance.seen[0])
    await wait_event(hello.leases[0].released)

    assert hello.releases == [(True, 499)]


async def test_unexpected_error_in_a_call_is_500_and_the_gateway_goes_on(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(echo)
    buggy = FakeBackend("default/buggy", bug=RuntimeError("bug in the runtime"))
    hello = FakeBackend("default/hello", address=instance.address)
    gateway = await start_gateway(buggy, hello)

    async with client(gateway) as http:
        failed = await http.get("/function/buggy")
        after = await http.get("/function/hello")  # the same client connection

    assert failed.status_code == 500
    assert error_of(failed)["error"] == "internal error in the gateway; see the daemon log"
    assert after.status_code == 200


# ---- protecting the gateway from clients ----


async def test_garbage_is_400_and_others_are_unaffected(start_gateway: StartGateway) -> None:
    gateway = await start_gateway()
    reader, writer = await open_raw(gateway)

    writer.write(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    [response] = await ResponseReader(reader).read(1)
    await close_raw(writer)
    health = await call(gateway, "GET", "/healthz")

    assert response.status == 400
    assert error_of(response)["error"].startswith("malformed HTTP request")
    assert health.status_code == 200


@pytest.mark.parametrize("complete", [True, False], ids=["whole-head", "unfinished-head"])
async def test_giant_head_is_431(start_gateway: StartGateway, complete: bool) -> None:
    gateway = await start_gateway()
    reader, writer = await open_raw(gateway)

    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
    for n in range(80):
        writer.write(b"X-Filler-%d: %s\r\n" % (n, b"y" * 1024))
        await writer.drain()
    if complete:
        writer.write(b"\r\n")
    [response] = await ResponseReader(reader).read(1)
    await close_raw(writer)

    assert response.status == 431
    assert "64 KiB" in error_of(response)["error"]


async def test_slow_head_is_408_and_others_are_unaffected(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(header_timeout_s=0.2, sweep_interval_s=0.02)
    reader, writer = await open_raw(gateway)

    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
    health = await call(gateway, "GET", "/healthz")
    [response] = await ResponseReader(reader).read(1)
    rest = await read_until_closed(reader)
    await close_raw(writer)

    assert health.status_code == 200
    assert response.status == 408
    assert rest == b""


async def test_idle_client_connection_is_closed(start_gateway: StartGateway) -> None:
    gateway = await start_gateway(idle_timeout_s=0.1, sweep_interval_s=0.02)
    reader, writer = await open_raw(gateway)

    rest = await read_until_closed(reader)
    await close_raw(writer)

    assert rest == b""


# ---- draining ----


async def test_close_waits_for_a_call_in_flight(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(defer)
    hello = FakeBackend("default/hello", address=instance.address)
    gateway = await start_gateway(hello)
    address = gateway.address
    in_flight = asyncio.create_task(call(gateway, "GET", "/function/hello"))
    await wait_event(instance.got_request)

    closing = asyncio.create_task(gateway.close(drain_s=WAIT_S))
    await wait_for(lambda: not accepts_connections(address))
    assert not closing.done()
    echo(instance.deferred[0], instance.seen[0])
    response = await in_flight
    await closing

    assert response.status_code == 200
    assert response.headers["connection"] == "close"
    assert hello.releases == [(True, 200)]


async def test_close_cuts_calls_that_outlast_the_drain(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    instance = await start_instance(hang)
    hello = FakeBackend("default/hello", address=instance.address)
    gateway = await start_gateway(hello)
    in_flight = asyncio.create_task(call(gateway, "GET", "/function/hello"))
    await wait_event(instance.got_request)

    await gateway.close(drain_s=0.05)

    with pytest.raises(httpx.RemoteProtocolError):
        await in_flight
    assert hello.releases == [(False, 503)]


async def test_close_cuts_calls_still_waiting_for_an_instance(
    start_gateway: StartGateway,
) -> None:
    never = FakeBackend("default/hello", admitted=asyncio.Event())
    gateway = await start_gateway(never)
    waiting = asyncio.create_task(call(gateway, "GET", "/function/hello"))
    await wait_for(lambda: gateway.open_connections == 1)

    await gateway.close(drain_s=0.05)

    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # cut: EOF or reset
        await waiting
    assert never.leases == []


async def test_each_call_is_logged_with_what_its_client_got(
    start_instance: StartInstance, start_gateway: StartGateway
) -> None:
    answering = await start_instance(echo)
    failing = await start_instance(fail_with_500, host="127.128.0.8")
    breaking = await start_instance(break_mid_body, host="127.128.0.10")
    with socket.socket() as probe:
        probe.bind(("127.128.0.9", 0))
        refusing = probe.getsockname()
    access_log = AccessLog()
    gateway = await start_gateway(
        FakeBackend("default/hello", address=answering.address),
        FakeBackend("default/failing", address=failing.address),
        FakeBackend("default/breaking", address=breaking.address),
        FakeBackend("default/refusing", address=refusing),
        telemetry=Telemetry(CollectorRegistry(), access_log),
    )

    answered = await call(gateway, "GET", "/function/hello")
    assert (await call(gateway, "GET", "/function/failing")).status_code == 500
    with pytest.raises(httpx.RemoteProtocolError):
        await call(gateway, "GET", "/function/breaking")
    assert (await call(gateway, "GET", "/function/refusing")).status_code == 502
    await wait_for(lambda: access_log.last_seq == 4)

    lines = [line for _, line in access_log.lines()]
    # code, flags, details, then bytes received and sent: the bodies relayed (a failure's own
    # answer is not counted); a response cut after its head keeps its status and no flag
    assert f' 200 - {VIA_UPSTREAM} - "-" 0 {len(answered.content)} ' in lines[0]
    assert f' 500 - {VIA_UPSTREAM} - "-" 0 25 ' in lines[1]
    assert f' 200 - {VIA_UPSTREAM} - "-" 0 10 ' in lines[2]
    assert f' 502 UF {CONNECTION_FAILURE_DETAILS} - "-" 0 0 ' in lines[3]
    assert all(" outbound|8080||" in line for line in lines)
    # %UPSTREAM_HOST%: the instance that answered; none for a connection that failed
    for line, instance in zip(lines, (answering, failing, breaking), strict=False):
        host, port = instance.address
        assert f' "{host}:{port}" outbound|8080||' in line
    assert ' "-" outbound|8080||' in lines[3]


def accepts_connections(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True
