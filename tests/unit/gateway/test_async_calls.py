"""The gateway's async-call acceptor: routes, what it stores, and its 202/503 answers."""

from __future__ import annotations

from collections.abc import Sequence

from funcmesh.errors import Unavailable
from funcmesh.gateway.async_calls import Acceptor, route_async
from funcmesh.gateway.messages import Request
from funcmesh.gateway.routing import FunctionRoute


def test_async_targets_route_like_function_targets() -> None:
    assert route_async(b"/async-function/hello.ns/a?x=1") == FunctionRoute(
        namespace="ns", name="hello", target=b"/a?x=1"
    )
    assert route_async(b"/async-function/hello") == FunctionRoute(
        namespace="default", name="hello", target=b"/"
    )
    assert route_async(b"/function/hello") is None
    assert route_async(b"/async-function/") is None


class FakeCalls:
    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.submitted: list[dict[str, object]] = []

    async def submit(
        self,
        *,
        namespace: str,
        name: str,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        callback_url: str | None,
    ) -> str:
        if self.fail:
            raise Unavailable("the store is closed")
        self.submitted.append(
            {
                "function": f"{namespace}/{name}",
                "method": method,
                "path": path,
                "headers": list(headers),
                "body": body,
                "callback_url": callback_url,
            }
        )
        return "abc"


class FakeResponder:
    def __init__(self) -> None:
        self.answers: list[tuple[int, object, list[tuple[bytes, bytes]]]] = []
        self.ended = False

    def send_json(
        self, status: int, document: object, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.answers.append((status, document, list(headers)))

    def send_error(self, status: int, message: str, *, function: str | None = None) -> None:
        self.answers.append((status, {"error": message, "function": function}, []))

    def end_call(self) -> None:
        self.ended = True


def request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(
        method=b"PUT",
        target=b"/async-function/hello/p?q=1",
        headers=headers,
        body=b"data",
        keep_alive=True,
        http11=True,
        client_ip=b"127.0.0.1",
    )


ROUTE = FunctionRoute(namespace="default", name="hello", target=b"/p?q=1")


async def test_a_stored_call_is_answered_202_with_its_id() -> None:
    calls, responder = FakeCalls(), FakeResponder()
    acceptor = Acceptor(calls)
    headers = [
        (b"Host", b"gw"),
        (b"X-Callback-Url", b"http://127.0.0.1:9/cb"),
        (b"Connection", b"keep-alive"),
        (b"X-Trace", b"1"),
    ]
    acceptor.accept(ROUTE, request(headers), responder)
    await acceptor.close()

    assert responder.answers == [
        (202, {"id": "abc", "function": "default/hello"}, [(b"X-Call-Id", b"abc")])
    ]
    assert responder.ended
    assert calls.submitted == [
        {
            "function": "default/hello",
            "method": "PUT",
            "path": "/p?q=1",
            "headers": [("X-Trace", "1")],
            "body": b"data",
            "callback_url": "http://127.0.0.1:9/cb",
        }
    ]


async def test_a_call_that_cannot_be_stored_is_answered_503_saying_why() -> None:
    responder = FakeResponder()
    acceptor = Acceptor(FakeCalls(fail=True))
    acceptor.accept(ROUTE, request([]), responder)
    await acceptor.close()
    assert responder.answers == [
        (
            503,
            {"error": "async call not accepted: the store is closed", "function": "default/hello"},
            [],
        )
    ]
    assert responder.ended
