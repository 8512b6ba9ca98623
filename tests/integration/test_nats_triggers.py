"""The NATS trigger controller against a real nats-server, a real SQLite store and the real
Invoker, which calls a recording HTTP server standing in for the gateway (so a test decides
what each function answers). The whole daemon with real functions: tests/e2e/test_nats_triggers.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from funcmesh.controllers.deliveries import DeliveryPolicy
from funcmesh.controllers.invoker import Invoker
from funcmesh.controllers.nats import NatsTriggerController
from funcmesh.model.conditions import find_condition
from funcmesh.model.kinds import EVENT, FUNCTION, NATS_TRIGGER
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store
from tests.natsserver import NatsServer, free_port, nats_server_binary

DEADLINE_S = 4.0
FAST = DeliveryPolicy(concurrency=4, queue_size=16, max_retries=3, first_backoff_s=0.01)


@dataclass
class Call:
    function: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeGateway:
    """Answers ``/function/NAME.NS/`` with the statuses a test scripts (then 200); records calls."""

    calls: list[Call] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/function/{target}/", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        name = request.match_info["target"].rsplit(".", 1)[0]
        self.calls.append(Call(name, dict(request.headers), await request.read()))
        script = self.scripts[name]
        return web.Response(status=script.pop(0) if script else 200, text="answer")

    def bodies(self, function: str) -> list[bytes]:
        return [call.body for call in self.calls if call.function == function]


@dataclass
class Rig:
    store: Store
    gateway: FakeGateway
    registry: CollectorRegistry
    invoker: Invoker

    @contextlib.asynccontextmanager
    async def controller(self, nats_url: str | None) -> AsyncIterator[NatsTriggerController]:
        """A controller, as one daemon start has it (with a fresh metrics registry)."""
        self.registry = CollectorRegistry()
        controller = NatsTriggerController(
            store=self.store,
            invoker=self.invoker,
            nats_url=nats_url,
            registry=self.registry,
            policy=FAST,
            status_interval_s=0.05,
        )
        await controller.start()
        try:
            yield controller
        finally:
            await controller.close()

    async def function(self, name: str, /, **labels: str) -> None:
        await self.store.create(FUNCTION, {"metadata": {"name": name, "labels": labels}})

    async def trigger(self, name: str, subject: str, /, **match_labels: str) -> None:
        spec = {"topic": subject, "functionSelector": {"matchLabels": match_labels}}
        await self.store.create(NATS_TRIGGER, {"metadata": {"name": name}, "spec": spec})

    async def status(self, name: str) -> dict[str, Any]:
        obj: RawObject = await self.store.get(NATS_TRIGGER, "default", name)
        return dict(obj.get("status") or {})

    async def wait_ready(self, name: str, reason: str) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            status = await self.status(name)
            ready = find_condition(status, "Ready")
            return status if ready and ready["reason"] == reason else None

        return await eventually(reached, what=f"trigger {name} Ready reason {reason}")


async def eventually(check: Callable[[], Any], *, what: str) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def publish(url: str, subject: str, *payloads: bytes) -> None:
    client = await nats.connect(url)
    try:
        for payload in payloads:
            await client.publish(subject, payload)
        await client.flush()
    finally:
        await client.close()


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(nats_server_binary(), log_path=tmp_path_factory.mktemp("nats") / "log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await Store.open(tmp_path / "state.db")
    gateway = FakeGateway()
    await gateway.start()
    invoker = Invoker(gateway.url)
    try:
        yield Rig(store=store, gateway=gateway, registry=CollectorRegistry(), invoker=invoker)
    finally:
        await invoker.close()
        await gateway.close()
        await store.close()


async def test_a_message_reaches_every_selected_function_and_no_other(
    rig: Rig, nats_server: NatsServer
) -> None:
    await rig.function("a", topic="orders")
    await rig.function("b", topic="orders", extra="yes")
    await rig.function("other", topic="invoices")
    await rig.trigger("orders", "orders.created", topic="orders")
    async with rig.controller(nats_server.url):
        status = await rig.wait_ready("orders", "Subscribed")
        assert status["functions"] == ["a", "b"]

        await publish(nats_server.url, "orders.created", b'{"id": 7}')

        await eventually(lambda: len(rig.gateway.calls) == 2, what="two calls")
        assert sorted(call.function for call in rig.gateway.calls) == ["a", "b"]
        assert {call.body for call in rig.gateway.calls} == {b'{"id": 7}'}
        ids = {call.headers["event-id"] for call in rig.gateway.calls}
        assert len(ids) == 1, "one message has one event id, whichever function gets it"
        status = await eventually(
            lambda: _counted(rig, "orders", delivered=2), what="2 deliveries counted"
        )
        assert (status["retried"], status["failed"]) == (0, 0)


async def test_the_selection_follows_functions_as_they_come_and_change_labels(
    rig: Rig, nats_server: NatsServer
) -> None:
    await rig.trigger("orders", "orders", topic="orders")
    async with rig.controller(nats_server.url):
        status = await rig.wait_ready("orders", "NoFunctions")
        ready = find_condition(status, "Ready")
        assert ready is not None
        assert (
            'no function in namespace "default" matches the selector topic=orders'
            in (ready["message"])
        )

        await rig.function("late", topic="orders")
        await rig.wait_ready("orders", "Subscribed")
        await publish(nats_server.url, "orders", b"first")
        await eventually(lambda: rig.gateway.bodies("late") == [b"first"], what="first call")

        obj = await rig.store.get(FUNCTION, "default", "late")
        obj["metadata"]["labels"] = {"topic": "elsewhere"}
        await rig.store.update(FUNCTION, obj)
        await rig.wait_ready("orders", "NoFunctions")
        await rig.function("new", topic="orders")
        await rig.wait_ready("orders", "Subscribed")
        await publish(nats_server.url, "orders", b"second")
        await eventually(lambda: rig.gateway.bodies("new") == [b"second"], what="second call")
        assert rig.gateway.bodies("late") == [b"first"]


async def test_a_failing_function_is_retried_until_it_succeeds(
    rig: Rig, nats_server: NatsServer
) -> None:
    await rig.function("flaky", topic="jobs")
    await rig.trigger("jobs", "jobs", topic="jobs")
    rig.gateway.scripts["flaky"] = [500, 503]
    async with rig.controller(nats_server.url):
        await rig.wait_ready("jobs", "Subscribed")
        await publish(nats_server.url, "jobs", b"work")

        status = await eventually(lambda: _counted(rig, "jobs", delivered=1), what="delivery")
        assert (status["retried"], status["failed"]) == (2, 0)
        assert rig.gateway.bodies("flaky") == [b"work"] * 3
        assert len({call.headers["event-id"] for call in rig.gateway.calls}) == 1
        assert _metric(rig, "delivered", "flaky") == 1
        assert _metric(rig, "retried", "flaky") == 2


async def test_a_delivery_is_dropped_after_the_last_retry_with_a_warning_event(
    rig: Rig, nats_server: NatsServer
) -> None:
    await rig.function("broken", topic="jobs")
    await rig.trigger("jobs", "jobs", topic="jobs")
    rig.gateway.scripts["broken"] = [500] * 10
    async with rig.controller(nats_server.url):
        await rig.wait_ready("jobs", "Subscribed")
        await publish(nats_server.url, "jobs", b"doomed")

        status = await eventually(lambda: _counted(rig, "jobs", failed=1), what="given up")
        assert status["retried"] == FAST.max_retries
        assert len(rig.gateway.bodies("broken")) == FAST.max_retries + 1

        async def warning() -> list[RawObject]:
            events, _ = await rig.store.list_objects(EVENT, "default")
            return [e for e in events if e["reason"] == "DeliveryFailed"]

        [event] = await eventually(warning, what="a DeliveryFailed event")
        assert event["type"] == "Warning"
        assert event["involvedObject"]["name"] == "jobs"
        assert event["message"] == (
            "dropped 1 message(s) for function broken: "
            "function answered 500 Internal Server Error (4 attempts)"
        )


async def test_a_changed_topic_moves_the_subscription(rig: Rig, nats_server: NatsServer) -> None:
    await rig.function("fn", topic="t")
    await rig.trigger("moving", "before", topic="t")
    async with rig.controller(nats_server.url):
        await rig.wait_ready("moving", "Subscribed")
        obj = await rig.store.get(NATS_TRIGGER, "default", "moving")
        obj["spec"]["topic"] = "after"
        await rig.store.update(NATS_TRIGGER, obj)
        await eventually(lambda: _observed(rig, "moving", generation=2), what="generation 2")

        await publish(nats_server.url, "before", b"old topic")
        await publish(nats_server.url, "after", b"new topic")
        await eventually(lambda: rig.gateway.bodies("fn") == [b"new topic"], what="new topic")


async def test_triggers_share_messages_across_daemons_through_the_queue_group(
    rig: Rig, nats_server: NatsServer, tmp_path: Path
) -> None:
    second_store = await Store.open(tmp_path / "second.db")
    second = Rig(
        store=second_store, gateway=rig.gateway, registry=CollectorRegistry(), invoker=rig.invoker
    )
    try:
        for each in (rig, second):
            await each.function("fn", topic="q")
            await each.trigger("shared", "shared", topic="q")
        async with rig.controller(nats_server.url), second.controller(nats_server.url):
            await rig.wait_ready("shared", "Subscribed")
            await second.wait_ready("shared", "Subscribed")
            await publish(nats_server.url, "shared", *(b"%d" % n for n in range(20)))

            await eventually(lambda: len(rig.gateway.calls) >= 20, what="20 calls")
            assert sorted(rig.gateway.bodies("fn")) == sorted(b"%d" % n for n in range(20))
    finally:
        await second_store.close()


async def test_without_a_nats_url_triggers_say_how_to_configure_one(rig: Rig) -> None:
    await rig.trigger("orphan", "anything", app="x")
    async with rig.controller(None):
        status = await rig.wait_ready("orphan", "NoNATSServer")
    ready = find_condition(status, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert "--nats-url nats://HOST:4222" in ready["message"]


async def test_a_server_that_is_down_shows_not_ready_then_recovers_by_itself(
    rig: Rig, tmp_path: Path
) -> None:
    server = NatsServer(nats_server_binary(), log_path=tmp_path / "nats.log")
    await rig.function("fn", topic="t")
    await rig.trigger("waiting", "t", topic="t")
    async with rig.controller(server.url):
        status = await rig.wait_ready("waiting", "NATSDisconnected")
        ready = find_condition(status, "Ready")
        assert ready is not None
        assert f"not connected to the NATS server at {server.url}" in ready["message"]

        await asyncio.to_thread(server.start)
        try:
            await rig.wait_ready("waiting", "Subscribed")
            await publish(server.url, "t", b"hello")
            await eventually(lambda: rig.gateway.bodies("fn") == [b"hello"], what="delivery")
        finally:
            await asyncio.to_thread(server.stop)


async def test_delivery_resumes_after_the_server_restarts(rig: Rig, tmp_path: Path) -> None:
    server = NatsServer(nats_server_binary(), log_path=tmp_path / "nats.log").start()
    try:
        await rig.function("fn", topic="t")
        await rig.trigger("steady", "t", topic="t")
        async with rig.controller(server.url):
            await rig.wait_ready("steady", "Subscribed")
            await publish(server.url, "t", b"before")
            await eventually(lambda: rig.gateway.bodies("fn") == [b"before"], what="first")

            await asyncio.to_thread(server.stop)
            await rig.wait_ready("steady", "NATSDisconnected")
            await asyncio.to_thread(server.start)
            await rig.wait_ready("steady", "Subscribed")

            await publish(server.url, "t", b"after")
            await eventually(
                lambda: rig.gateway.bodies("fn") == [b"before", b"after"], what="second"
            )
    finally:
        await asyncio.to_thread(server.stop)


async def test_counts_survive_a_restart_of_the_controller(
    rig: Rig, nats_server: NatsServer
) -> None:
    await rig.function("fn", topic="t")
    await rig.trigger("counted", "counted", topic="t")
    async with rig.controller(nats_server.url):
        await rig.wait_ready("counted", "Subscribed")
        await publish(nats_server.url, "counted", b"1", b"2")
        await eventually(lambda: _counted(rig, "counted", delivered=2), what="2 counted")
    async with rig.controller(nats_server.url):
        await rig.wait_ready("counted", "Subscribed")
        await publish(nats_server.url, "counted", b"3")
        await eventually(lambda: _counted(rig, "counted", delivered=3), what="3 counted")


async def _counted(rig: Rig, name: str, **counts: int) -> dict[str, Any] | None:
    status = await rig.status(name)
    return status if all(status.get(key) == value for key, value in counts.items()) else None


async def _observed(rig: Rig, name: str, *, generation: int) -> bool:
    status = await rig.status(name)
    return bool(status.get("observedGeneration") == generation)


def _metric(rig: Rig, outcome: str, function: str) -> float | None:
    return rig.registry.get_sample_value(
        "funcmesh_nats_deliveries_total",
        {"namespace": "default", "trigger": "jobs", "function": function, "outcome": outcome},
    )


async def test_closing_while_the_server_is_down_leaves_nothing_behind(rig: Rig) -> None:
    await rig.trigger("waiting", "t", topic="t")
    async with rig.controller(f"nats://127.0.0.1:{free_port()}"):
        await rig.wait_ready("waiting", "NATSDisconnected")
    # the task guard (tests/conftest.py) fails the test if a reconnect loop outlives it


async def test_a_deleted_trigger_stops_delivering_and_leaves_no_metrics(
    rig: Rig, nats_server: NatsServer
) -> None:
    await rig.function("gone", topic="a")
    await rig.function("kept", topic="b")
    await rig.trigger("deleted", "news", topic="a")
    await rig.trigger("sentinel", "news", topic="b")
    async with rig.controller(nats_server.url):
        await rig.wait_ready("deleted", "Subscribed")
        await rig.wait_ready("sentinel", "Subscribed")
        await publish(nats_server.url, "news", b"1")
        await eventually(lambda: len(rig.gateway.calls) == 2, what="both triggers deliver")

        await rig.store.delete(NATS_TRIGGER, "default", "deleted")
        await eventually(
            lambda: rig.registry.get_sample_value(
                "funcmesh_nats_messages_total", {"namespace": "default", "trigger": "deleted"}
            )
            is None,
            what="the deleted trigger's metrics to go",
        )
        await publish(nats_server.url, "news", b"2")
        await eventually(lambda: rig.gateway.bodies("kept") == [b"1", b"2"], what="sentinel")
        assert rig.gateway.bodies("gone") == [b"1"]
