"""The cron controller in real time: a real SQLite store, the real Invoker and the system clock,
calling a recording HTTP server that stands in for the gateway. Stopping the controller and
starting a new one on the same store is a daemon restart as far as scheduling goes.
The whole daemon with a real function and the CLI: tests/e2e/test_cron_triggers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from funcmesh.controllers.cron import CronTriggerController
from funcmesh.controllers.invoker import Invoker
from funcmesh.model.kinds import CRONJOB_TRIGGER, EVENT, FUNCTION
from funcmesh.store.sqlite import Store

DEADLINE_S = 4.0


@dataclass
class Arrival:
    target: str
    method: str
    headers: dict[str, str]
    body: bytes
    at_s: float

    @property
    def scheduled_s(self) -> float:
        return datetime.fromisoformat(self.headers["Event-Time"]).timestamp()


@dataclass
class RecordingGateway:
    """Answers every call with 200 and records it with the time it arrived."""

    arrivals: list[Arrival] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/function/{target}/", self._answer)
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
        arrival = Arrival(
            target=request.match_info["target"],
            method=request.method,
            headers=dict(request.headers),
            body=await request.read(),
            at_s=time.time(),
        )
        self.arrivals.append(arrival)
        return web.Response(text="ok")

    def scheduled(self) -> list[float]:
        return [arrival.scheduled_s for arrival in self.arrivals]


@dataclass
class Rig:
    store: Store
    gateway: RecordingGateway
    invoker: Invoker
    controller: CronTriggerController | None = None

    async def start(self) -> None:
        self.controller = CronTriggerController(store=self.store, caller=self.invoker)
        await self.controller.start()

    async def stop(self) -> None:
        """A crash as far as runs go: recorded runs that have not fired are cut off."""
        assert self.controller is not None
        await self.controller.close(drain_s=0)
        self.controller = None

    async def status(self) -> dict[str, Any]:
        status: dict[str, Any] = (await self.store.get(CRONJOB_TRIGGER, "default", "tick")).get(
            "status"
        ) or {}
        return status


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await Store.open(tmp_path / "state.db")
    gateway = RecordingGateway()
    await gateway.start()
    invoker = Invoker(gateway.url, timeout_s=5)
    setup = Rig(store=store, gateway=gateway, invoker=invoker)
    await store.create(FUNCTION, {"metadata": {"name": "hello", "namespace": "default"}})
    await store.create(
        CRONJOB_TRIGGER,
        {
            "metadata": {"name": "tick", "namespace": "default"},
            "spec": {"function-name": "hello", "schedule": "@every 1s", "payload": {"n": 1}},
        },
    )
    try:
        yield setup
    finally:
        if setup.controller is not None:
            await setup.controller.close(drain_s=0)
        await invoker.close()
        await gateway.close()
        await store.close()


async def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


async def until_time(moment_s: float) -> None:
    await eventually(lambda: time.time() >= moment_s, f"the clock passes {moment_s}")


async def test_every_second_a_run_arrives_with_kubeless_headers(rig: Rig) -> None:
    await rig.start()
    await eventually(lambda: len(rig.gateway.arrivals) >= 3, "three runs arrived")

    first, second, third = rig.gateway.arrivals[:3]
    assert [second.scheduled_s - first.scheduled_s, third.scheduled_s - second.scheduled_s] == [
        1.0,
        1.0,
    ]
    for arrival in (first, second, third):
        assert arrival.target == "hello.default"
        assert (arrival.method, arrival.body) == ("POST", b'{"n":1}')
        assert arrival.headers["Event-Namespace"] == "cronjobtrigger.kubeless.io"
        assert arrival.headers["Event-Type"] == "application/json"
        assert arrival.headers["Content-Type"] == "application/json"
        assert arrival.headers["Event-Time"].endswith("+00:00")
        assert arrival.scheduled_s <= arrival.at_s < arrival.scheduled_s + 1
    assert len({arrival.headers["Event-Id"] for arrival in (first, second, third)}) == 3
    events, _ = await rig.store.list_objects(EVENT, "default")
    assert {event["reason"] for event in events} == {"Succeeded"}


async def test_a_restart_never_fires_a_recorded_run_twice(rig: Rig) -> None:
    await rig.start()
    await eventually(lambda: len(rig.gateway.arrivals) >= 1, "a run arrived")

    deadline = time.monotonic() + DEADLINE_S
    while (pending_s := recorded_ahead(await rig.status())) is None:
        assert time.monotonic() < deadline, "never saw a run recorded ahead of its time"
    await rig.stop()  # between recording that run and firing it

    await rig.start()
    await eventually(lambda: max(rig.gateway.scheduled()) >= pending_s + 1, "the next run")

    assert pending_s not in rig.gateway.scheduled()
    assert len(rig.gateway.scheduled()) == len(set(rig.gateway.scheduled()))
    runs = (await rig.status())["lastRuns"]
    [interrupted] = [run for run in runs if run["outcome"] == "Unknown"]
    assert datetime.fromisoformat(interrupted["scheduleTime"]).timestamp() == pending_s


def recorded_ahead(status: dict[str, Any]) -> float | None:
    """The time of a run recorded but not due yet, if the newest record is one."""
    runs = status.get("lastRuns") or []
    if not runs or runs[0]["outcome"] != "Running":
        return None
    scheduled_s = datetime.fromisoformat(runs[0]["scheduleTime"]).timestamp()
    return scheduled_s if scheduled_s > time.time() + 0.05 else None


async def test_a_run_missed_by_less_than_a_period_fires_once_on_start(rig: Rig) -> None:
    await rig.start()
    await eventually(lambda: len(rig.gateway.arrivals) >= 1, "a run arrived")
    await rig.stop()
    last_s = max(rig.gateway.scheduled())

    await until_time(last_s + 1.3)  # the run of last + 1 came due while stopped
    await rig.start()
    await eventually(lambda: last_s + 1 in rig.gateway.scheduled(), "the missed run arrived")

    late = next(a for a in rig.gateway.arrivals if a.scheduled_s == last_s + 1)
    assert late.at_s >= last_s + 1.3
    assert rig.gateway.scheduled().count(last_s + 1) == 1
    assert "Missed" not in [run["outcome"] for run in (await rig.status())["lastRuns"]]


async def test_runs_missed_by_more_than_a_period_are_recorded_missed(rig: Rig) -> None:
    await rig.start()
    await eventually(lambda: len(rig.gateway.arrivals) >= 1, "a run arrived")
    await rig.stop()
    last_s = max(rig.gateway.scheduled())

    await until_time(last_s + 3.3)  # last + 1 and + 2 are more than a period late, + 3 is not
    await rig.start()
    await eventually(lambda: last_s + 3 in rig.gateway.scheduled(), "the late run arrived")

    scheduled = rig.gateway.scheduled()
    assert last_s + 1 not in scheduled
    assert last_s + 2 not in scheduled
    missed = [run for run in (await rig.status())["lastRuns"] if run["outcome"] == "Missed"]
    assert [(run["missedRuns"], run["message"]) for run in missed] == [
        (2, "2 runs came due while nothing could fire them")
    ]
    events, _ = await rig.store.list_objects(EVENT, "default")
    assert [event["type"] for event in events if event["reason"] == "Missed"] == ["Warning"]
