"""DeliveryLane with a fake caller: retries, giving up, backpressure and bounded concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import pytest

from funcmesh.controllers.deliveries import (
    Delivery,
    DeliveryLane,
    DeliveryPolicy,
    Outcome,
)
from funcmesh.controllers.invoker import Answer
from funcmesh.errors import Unavailable

FAST = DeliveryPolicy(concurrency=2, queue_size=2, max_retries=3, first_backoff_s=0.001)


@dataclass
class FakeCaller:
    """Answers each call from a script (a status, or Unavailable), then 200."""

    script: list[int | Exception] = field(default_factory=list)
    calls: list[tuple[str, str, bytes, dict[str, str]]] = field(default_factory=list)
    gate: asyncio.Event | None = None  # when set, calls wait for it
    in_flight: int = 0
    most_in_flight: int = 0

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
        self.calls.append((namespace, name, body, dict(headers or {})))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            step = self.script.pop(0) if self.script else 200
        finally:
            self.in_flight -= 1
        if isinstance(step, Exception):
            raise step
        return Answer(status=step, body=b"", headers={})


@dataclass
class Recorder:
    """The lane's observer: keeps every outcome; ``wanted`` decides what is still selected."""

    outcomes: list[tuple[str, Outcome, str]] = field(default_factory=list)
    wanted: set[str] = field(default_factory=lambda: {"fn", "other"})

    def record(self, function: str, outcome: Outcome, detail: str) -> None:
        self.outcomes.append((function, outcome, detail))

    def selects(self, function: str) -> bool:
        return function in self.wanted


@pytest.fixture
async def parts() -> AsyncIterator[tuple[FakeCaller, Recorder, list[DeliveryLane]]]:
    lanes: list[DeliveryLane] = []
    yield FakeCaller(), Recorder(), lanes
    for lane in lanes:
        await lane.close()


def lane_for(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]], policy: DeliveryPolicy = FAST
) -> DeliveryLane:
    caller, recorder, lanes = parts
    lane = DeliveryLane(
        namespace="ns", trigger="t", caller=caller, observer=recorder, policy=policy
    )
    lanes.append(lane)
    return lane


def delivery(function: str = "fn", body: bytes = b"m") -> Delivery:
    return Delivery(function=function, body=body, headers={"event-id": "e1"})


async def test_a_delivery_calls_the_function_once(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]],
) -> None:
    caller, recorder, _ = parts
    lane = lane_for(parts)
    await lane.put(delivery())
    await lane.join()

    assert caller.calls == [("ns", "fn", b"m", {"event-id": "e1"})]
    assert recorder.outcomes == [("fn", Outcome.DELIVERED, "")]


async def test_error_answers_and_an_unreachable_gateway_are_retried(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]],
) -> None:
    caller, recorder, _ = parts
    caller.script = [500, Unavailable("calling function ns/fn failed: refused")]
    lane = lane_for(parts)
    await lane.put(delivery())
    await lane.join()

    assert len(caller.calls) == 3
    assert recorder.outcomes == [
        ("fn", Outcome.RETRIED, "function answered 500 Internal Server Error"),
        ("fn", Outcome.RETRIED, "calling function ns/fn failed: refused"),
        ("fn", Outcome.DELIVERED, ""),
    ]


async def test_a_delivery_is_given_up_after_the_last_retry(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]],
) -> None:
    caller, recorder, _ = parts
    caller.script = [503] * 10
    lane = lane_for(parts)
    await lane.put(delivery())
    await lane.join()

    assert len(caller.calls) == FAST.max_retries + 1
    assert [outcome for _, outcome, _ in recorder.outcomes] == [Outcome.RETRIED] * 3 + [
        Outcome.FAILED
    ]
    assert recorder.outcomes[-1][2] == "function answered 503 Service Unavailable (4 attempts)"


async def test_retries_stop_when_the_function_is_no_longer_selected(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]],
) -> None:
    caller, recorder, _ = parts
    caller.script = [500] * 10
    recorder.wanted = set()
    lane = lane_for(parts)
    await lane.put(delivery())
    await lane.join()

    assert len(caller.calls) == 1
    assert [outcome for _, outcome, _ in recorder.outcomes] == [Outcome.RETRIED]


async def test_put_waits_while_the_queue_is_full_and_calls_stay_bounded(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]],
) -> None:
    caller, recorder, _ = parts
    caller.gate = asyncio.Event()
    lane = lane_for(parts)
    for n in range(FAST.concurrency + FAST.queue_size):  # two in flight, two queued
        await lane.put(delivery(body=b"%d" % n))
    blocked = asyncio.create_task(lane.put(delivery(body=b"last")))
    for _ in range(20):  # let every task run a few times: the put must still wait
        await asyncio.sleep(0)
    assert not blocked.done(), "a full queue must hold the producer back"
    assert caller.most_in_flight == FAST.concurrency

    caller.gate.set()
    await blocked
    await lane.join()
    assert caller.most_in_flight == FAST.concurrency
    assert len(recorder.outcomes) == FAST.concurrency + FAST.queue_size + 1


async def test_one_failing_delivery_does_not_hold_up_the_others(
    parts: tuple[FakeCaller, Recorder, list[DeliveryLane]],
) -> None:
    caller, recorder, _ = parts
    caller.script = [500]
    lane = lane_for(parts, DeliveryPolicy(concurrency=2, max_retries=1, first_backoff_s=0.05))
    await lane.put(delivery("fn"))
    await lane.put(delivery("other"))
    await lane.join()

    delivered = [f for f, outcome, _ in recorder.outcomes if outcome is Outcome.DELIVERED]
    assert delivered == ["other", "fn"]


@pytest.mark.parametrize(
    ("retry", "ceiling_s"), [(1, 0.1), (2, 0.2), (3, 0.4), (7, 5.0), (30, 5.0)]
)
def test_backoff_doubles_up_to_the_ceiling_with_jitter(retry: int, ceiling_s: float) -> None:
    policy = DeliveryPolicy(first_backoff_s=0.1, max_backoff_s=5.0)
    waits = [policy.backoff_s(retry) for _ in range(50)]

    assert all(ceiling_s / 2 <= wait <= ceiling_s for wait in waits)
    assert len(set(waits)) > 1
