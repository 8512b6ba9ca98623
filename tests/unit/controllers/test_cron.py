"""The cron controller on a fake clock, with a real SQLite store and a fake function caller.

The fake clock makes every run's time exact and lets a test stop "the daemon" between the
moment a run is recorded and the moment it fires. In real time:
tests/integration/test_cron_triggers.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.cron import CronTriggerController
from funcmesh.controllers.cron_clock import SystemClock
from funcmesh.controllers.invoker import Answer
from funcmesh.errors import NotFound, Unavailable
from funcmesh.model.kinds import CRONJOB_TRIGGER, EVENT, FUNCTION
from funcmesh.model.objects import RawObject, parse_rfc3339
from funcmesh.store.sqlite import Store

WAIT_S = 3.0


class FakeClock:
    """Time stands still until a test moves it; sleepers wake when it passes their moment."""

    def __init__(self, now_s: float) -> None:
        self.now = now_s
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now_s(self) -> float:
        return self.now

    async def sleep_until(self, moment_s: float) -> None:
        if moment_s <= self.now:
            await asyncio.sleep(0)
            return
        waker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (moment_s, waker)
        self._sleepers.append(entry)
        try:
            await waker
        finally:
            self._sleepers.remove(entry)

    def move_to(self, moment_s: float) -> None:
        self.now = moment_s
        for due_s, waker in list(self._sleepers):
            if due_s <= moment_s and not waker.done():
                waker.set_result(None)


@dataclass
class Call:
    name: str
    method: str
    body: bytes
    headers: dict[str, str]
    status_then: dict[str, Any]  # the trigger's stored status when the call arrived


@dataclass
class FakeCaller:
    """Records calls with the trigger's status at that moment; answers from a script."""

    store: Store
    trigger: str = "tick"
    calls: list[Call] = field(default_factory=list)
    answers: list[Answer | Exception] = field(default_factory=list)

    async def call(
        self,
        namespace: str,
        name: str,
        *,
        method: str = "POST",
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        path: str = "/",
    ) -> Answer:
        stored = await self.store.get(CRONJOB_TRIGGER, namespace, self.trigger)
        self.calls.append(Call(name, method, body, dict(headers or {}), stored.get("status", {})))
        answer = self.answers.pop(0) if self.answers else Answer(status=200, body=b"", headers={})
        if isinstance(answer, Exception):
            raise answer
        return answer


@dataclass
class Rig:
    store: Store
    clock: FakeClock
    caller: FakeCaller
    created_s: float = 0.0
    controllers: list[CronTriggerController] = field(default_factory=list)

    async def start(self) -> CronTriggerController:
        controller = CronTriggerController(store=self.store, caller=self.caller, clock=self.clock)
        await controller.start()
        self.controllers.append(controller)
        return controller

    async def stop(self, controller: CronTriggerController) -> None:
        """Stop as a crash would: recorded runs that have not fired are cut off."""
        await controller.close(drain_s=0)
        self.controllers.remove(controller)

    async def status(self, name: str = "tick") -> dict[str, Any]:
        obj = await self.store.get(CRONJOB_TRIGGER, "default", name)
        status: dict[str, Any] = obj.get("status") or {}
        return status

    async def create_trigger(self, schedule: str, **spec: Any) -> RawObject:
        obj = await self.store.create(
            CRONJOB_TRIGGER,
            {
                "metadata": {"name": spec.pop("name", "tick"), "namespace": "default"},
                "spec": {"function-name": "hello", "schedule": schedule, **spec},
            },
        )
        self.created_s = parse_rfc3339(obj["metadata"]["creationTimestamp"])
        self.clock.move_to(self.created_s)
        return obj


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = await Store.open(tmp_path / "state.db")
    await store.create(FUNCTION, {"metadata": {"name": "hello", "namespace": "default"}})
    setup = Rig(store=store, clock=FakeClock(time.time()), caller=FakeCaller(store))
    try:
        yield setup
    finally:
        for controller in setup.controllers:
            await controller.close(drain_s=0)
        await store.close()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.005)


async def recorded(rig: Rig, moment_s: float) -> None:
    async def check() -> bool:
        runs = (await rig.status()).get("lastRuns") or []
        return any(parse_rfc3339(run["scheduleTime"]) == moment_s for run in runs)

    await eventually(check, f"the run of {moment_s} is recorded")


async def finished(rig: Rig, moment_s: float, name: str = "tick") -> dict[str, Any]:
    async def check() -> bool:
        return any(
            parse_rfc3339(run["scheduleTime"]) == moment_s and run["outcome"] != "Running"
            for run in (await rig.status(name)).get("lastRuns") or []
        )

    await eventually(check, f"the run of {moment_s} has a result")
    runs = (await rig.status(name))["lastRuns"]
    run: dict[str, Any] = next(r for r in runs if parse_rfc3339(r["scheduleTime"]) == moment_s)
    return run


def event_times(rig: Rig) -> list[float]:
    return [
        parse_rfc3339(call.headers["Event-Time"].replace(" ", "T").replace("+00:00", "Z"))
        for call in rig.caller.calls
    ]


async def events(rig: Rig) -> list[tuple[str, str, str]]:
    items, _ = await rig.store.list_objects(EVENT, "default")
    return [(e["type"], e["reason"], e["message"]) for e in items]


async def test_a_run_is_recorded_before_it_fires_then_fires_at_its_second(rig: Rig) -> None:
    await rig.create_trigger("@every 10s", payload={"n": 1})
    await rig.start()
    first = rig.created_s + 10

    rig.clock.move_to(first - 0.25)  # the record lead
    await recorded(rig, first)
    assert rig.caller.calls == []

    rig.clock.move_to(first)
    run = await finished(rig, first)

    [call] = rig.caller.calls
    assert call.status_then["lastScheduleTime"] == call.status_then["lastRuns"][0]["scheduleTime"]
    assert parse_rfc3339(call.status_then["lastScheduleTime"]) == first
    assert (call.name, call.method, call.body) == ("hello", "POST", b'{"n":1}')
    assert call.headers["Event-Namespace"] == "cronjobtrigger.kubeless.io"
    assert event_times(rig) == [first]
    assert run["outcome"] == "Succeeded"
    assert run["httpStatus"] == 200
    status = await rig.status()
    assert parse_rfc3339(status["nextScheduleTime"]) == first + 10
    assert status["observedGeneration"] == 1
    assert ("Normal", "Succeeded") in [(kind, reason) for kind, reason, _ in await events(rig)]


async def test_a_recorded_run_never_fires_again_after_a_restart(rig: Rig) -> None:
    await rig.create_trigger("@every 10s")
    first = rig.created_s + 10
    controller = await rig.start()
    rig.clock.move_to(first - 0.1)
    await recorded(rig, first)
    await rig.stop(controller)  # "crashed" after recording, before firing

    rig.clock.move_to(first + 1)
    await rig.start()
    run = await finished(rig, first)
    assert run["outcome"] == "Unknown"

    rig.clock.move_to(first + 10)
    await finished(rig, first + 10)
    assert event_times(rig) == [first + 10]
    assert [call.method for call in rig.caller.calls] == ["GET"]  # no payload: a GET


async def test_a_run_missed_by_less_than_a_period_fires_once_on_start(rig: Rig) -> None:
    await rig.create_trigger("@every 10s")
    first = rig.created_s + 10
    controller = await rig.start()
    rig.clock.move_to(first)
    await finished(rig, first)
    await rig.stop(controller)

    rig.clock.move_to(first + 14)  # the run of first + 10 came due while stopped
    await rig.start()
    late = await finished(rig, first + 10)

    assert late["outcome"] == "Succeeded"
    assert parse_rfc3339(late["firedTime"]) == first + 14
    assert event_times(rig) == [first, first + 10]
    assert "Missed" not in [run["outcome"] for run in (await rig.status())["lastRuns"]]


async def test_runs_missed_by_more_than_a_period_are_recorded_missed(rig: Rig) -> None:
    await rig.create_trigger("@every 10s")
    first = rig.created_s + 10
    controller = await rig.start()
    rig.clock.move_to(first)
    await finished(rig, first)
    await rig.stop(controller)

    rig.clock.move_to(first + 35)  # +10 and +20 are more than a period late, +30 is not
    await rig.start()
    await finished(rig, first + 30)

    assert event_times(rig) == [first, first + 30]
    runs = (await rig.status())["lastRuns"]
    assert [run["outcome"] for run in runs] == ["Succeeded", "Missed", "Succeeded"]
    assert runs[1]["missedRuns"] == 2
    assert parse_rfc3339(runs[1]["scheduleTime"]) == first + 10
    assert parse_rfc3339(runs[1]["lastMissedTime"]) == first + 20
    warnings = [message for kind, reason, message in await events(rig) if reason == "Missed"]
    assert len(warnings) == 1
    assert warnings[0].startswith("2 runs of schedule '@every 10s' from ")


async def test_a_new_schedule_applies_from_now_without_catching_up(rig: Rig) -> None:
    obj = await rig.create_trigger("@every 10s")
    await rig.start()
    rig.clock.move_to(rig.created_s + 10)
    await finished(rig, rig.created_s + 10)

    rig.clock.move_to(rig.created_s + 14)
    obj["spec"]["schedule"] = "@every 3s"  # due at +3, +6, ... +12, +15 after the creation
    obj["metadata"]["resourceVersion"] = None
    await rig.store.update(CRONJOB_TRIGGER, obj)

    async def replanned() -> bool:
        status = await rig.status()
        return bool(status.get("observedGeneration") == 2)

    await eventually(replanned, "the new generation is planned")
    assert parse_rfc3339((await rig.status())["nextScheduleTime"]) == rig.created_s + 15
    rig.clock.move_to(rig.created_s + 15)
    await finished(rig, rig.created_s + 15)
    assert event_times(rig) == [rig.created_s + 10, rig.created_s + 15]


async def test_failures_are_recorded_with_their_reason(rig: Rig) -> None:
    rig.caller.answers = [
        Unavailable("calling function default/hello.default failed: connection refused"),
        Answer(
            status=504,
            body=b'{"error": "function default/hello timed out after 1s"}',
            headers={"content-type": "application/json"},
        ),
    ]
    await rig.create_trigger("@every 10s")
    await rig.start()
    rig.clock.move_to(rig.created_s + 10)
    unreachable = await finished(rig, rig.created_s + 10)
    rig.clock.move_to(rig.created_s + 20)
    timed_out = await finished(rig, rig.created_s + 20)

    assert unreachable["outcome"] == "Failed"
    assert "httpStatus" not in unreachable
    assert "connection refused" in unreachable["message"]
    assert (timed_out["outcome"], timed_out["httpStatus"]) == ("Failed", 504)
    assert timed_out["message"] == "function default/hello timed out after 1s"
    assert "lastSuccessfulTime" not in await rig.status()
    items, _ = await rig.store.list_objects(EVENT, "default")
    [failed] = [event for event in items if event["type"] == "Warning"]  # repeats merge
    assert (failed["reason"], failed["count"]) == ("Failed", 2)
    assert "HTTP 504" in failed["message"]  # the newest run's outcome


async def test_deleting_the_function_deletes_its_triggers_only(rig: Rig) -> None:
    await rig.store.create(FUNCTION, {"metadata": {"name": "other", "namespace": "default"}})
    await rig.create_trigger("@every 10s")
    await rig.create_trigger("@every 10s", name="tock")
    await rig.create_trigger("@every 10s", name="elsewhere", **{"function-name": "other"})
    await rig.start()

    await rig.store.delete(FUNCTION, "default", "hello")

    async def gone() -> bool:
        triggers, _ = await rig.store.list_objects(CRONJOB_TRIGGER)
        return [obj["metadata"]["name"] for obj in triggers] == ["elsewhere"]

    await eventually(gone, "the triggers of hello are deleted")
    rig.caller.trigger = "elsewhere"
    rig.clock.move_to(rig.created_s + 10)
    run = await finished(rig, rig.created_s + 10, "elsewhere")
    assert run["outcome"] == "Succeeded"
    assert [call.name for call in rig.caller.calls] == ["other"]


async def test_a_trigger_left_without_its_function_is_deleted_on_start(rig: Rig) -> None:
    await rig.create_trigger("@every 10s")
    await rig.store.delete(FUNCTION, "default", "hello")  # while "the daemon" was down

    await rig.start()

    with pytest.raises(NotFound):
        await rig.status()


async def test_a_deleted_trigger_does_not_fire_its_recorded_run(rig: Rig) -> None:
    await rig.store.create(FUNCTION, {"metadata": {"name": "other", "namespace": "default"}})
    await rig.create_trigger("@every 10s")
    await rig.start()
    first = rig.created_s + 10
    rig.clock.move_to(first - 0.2)
    await recorded(rig, first)

    await rig.store.delete(CRONJOB_TRIGGER, "default", "tick")
    # A witness created after the deletion: once it runs, the deletion was seen (one watch).
    await rig.store.create(
        CRONJOB_TRIGGER,
        {
            "metadata": {"name": "witness", "namespace": "default"},
            "spec": {"function-name": "other", "schedule": "@every 1s"},
        },
    )
    rig.caller.trigger = "witness"  # its first runs are long due: it fires at once
    await eventually(lambda: _called(rig, 1), "the witness fires")
    rig.clock.move_to(first + 1)  # the deleted trigger's recorded run wakes up with this
    await eventually(lambda: _called(rig, 2), "the witness fires again")

    assert {call.name for call in rig.caller.calls} == {"other"}


async def _called(rig: Rig, times: int) -> bool:
    await asyncio.sleep(0)
    return len(rig.caller.calls) >= times


async def test_the_system_clock_never_wakes_early() -> None:
    moment_s = time.time() + 0.03
    await SystemClock().sleep_until(moment_s)
    assert time.time() >= moment_s


async def test_a_watch_that_ends_early_is_taken_up_again(rig: Rig) -> None:
    await rig.start()
    rig.store.feed.close_all()  # as when a watcher falls too far behind the store

    await rig.create_trigger("@every 10s")  # made after the watch ended
    rig.clock.move_to(rig.created_s + 10)

    run = await finished(rig, rig.created_s + 10)
    assert run["outcome"] == "Succeeded"


async def test_a_bug_below_the_controller_fails_the_run_instead_of_leaving_it_running(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.caller.answers = [RuntimeError("the invoker broke")]
    await rig.create_trigger("@every 10s")
    await rig.start()
    rig.clock.move_to(rig.created_s + 10)

    run = await finished(rig, rig.created_s + 10)

    assert (run["outcome"], run["message"]) == ("Failed", "internal error: RuntimeError")
    assert "the invoker broke" in caplog.text  # the traceback is in the daemon's log
