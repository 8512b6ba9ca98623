"""The Invoker against a real HTTP server standing in for the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
import uvloop

from funcmesh.controllers.invoker import Invoker
from funcmesh.errors import Unavailable


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """The daemon runs on uvloop, whose transports differ from asyncio's: test both."""
    if request.param == "uvloop":
        return cast(asyncio.AbstractEventLoopPolicy, uvloop.EventLoopPolicy())
    return asyncio.DefaultEventLoopPolicy()


class Gateway:
    """Answers each request with its request line; can drop idle connections."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                answer = head.split(b"\r\n")[0] + b"|" + body
                writer.write(
                    b"HTTP/1.1 201 Created\r\nX-Seen: yes\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()


@pytest.fixture
async def gateway() -> AsyncIterator[tuple[Gateway, str]]:
    fake = Gateway()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield fake, f"http://127.0.0.1:{port}"
    server.close()
    fake.drop_connections()
    await server.wait_closed()


async def test_calls_reuse_one_connection(gateway: tuple[Gateway, str]) -> None:
    fake, url = gateway
    invoker = Invoker(url)
    try:
        first = await invoker.call("default", "hello", body=b"one", headers={"Event-Id": "7"})
        second = await invoker.call("ns", "other", method="GET", path="/x?y=1")
    finally:
        await invoker.close()
    assert first.status == 201
    assert first.ok
    assert first.body == b"POST /function/hello.default/ HTTP/1.1|one"
    assert first.headers["x-seen"] == "yes"
    assert second.body == b"GET /function/other.ns/x?y=1 HTTP/1.1|"
    assert b"Event-Id: 7\r\n" in fake.requests[0]
    assert fake.connections == 1


async def test_a_connection_the_gateway_closed_is_replaced(gateway: tuple[Gateway, str]) -> None:
    fake, url = gateway
    invoker = Invoker(url)
    try:
        await invoker.call("default", "hello")
        fake.drop_connections()  # closed while idle: the next call must not fail for it
        answer = await invoker.call("default", "hello")
    finally:
        await invoker.close()
    assert answer.status == 201
    assert fake.connections == 2


async def test_header_values_cannot_smuggle_headers(gateway: tuple[Gateway, str]) -> None:
    fake, url = gateway
    invoker = Invoker(url)
    try:
        await invoker.call("default", "hello", headers={"X-Bad": "a\r\nInjected: 1", "X-Ok": "b"})
    finally:
        await invoker.close()
    assert b"Injected" not in fake.requests[0]
    assert b"X-Ok: b" in fake.requests[0]


async def test_an_unreachable_gateway_is_unavailable() -> None:
    invoker = Invoker("http://127.0.0.1:1")
    with pytest.raises(Unavailable, match="default/hello"):
        await invoker.call("default", "hello")
    await invoker.close()
