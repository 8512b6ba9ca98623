from __future__ import annotations

from pathlib import Path

from funcmesh.controllers import events as events_module
from funcmesh.controllers.events import EventRecorder
from funcmesh.model.kinds import EVENT, FUNCTION
from funcmesh.store.sqlite import Store


async def test_events_are_recorded_and_the_oldest_pruned(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(events_module, "MAX_EVENTS_PER_NAMESPACE", 20)
    store = await Store.open(tmp_path / "s.db")
    try:
        fn = await store.create(
            FUNCTION, {"metadata": {"name": "hello"}, "spec": {"handler": "a.b"}}
        )
        recorder = EventRecorder(store)
        for index in range(60):
            await recorder.record(fn, warning=index % 2 == 0, reason=f"R{index}", message="m")
        stored, _ = await store.list_objects(EVENT, "default")
        assert 20 <= len(stored) <= 22
        reasons = {event["reason"] for event in stored}
        assert "R59" in reasons  # the newest survive
        assert "R0" not in reasons
        newest = max(stored, key=lambda e: int(e["metadata"]["resourceVersion"]))
        assert newest["involvedObject"]["name"] == "hello"
        assert newest["type"] == "Normal"
    finally:
        await store.close()


async def test_repeats_of_one_reason_merge_into_one_event(tmp_path: Path) -> None:
    """As Kubernetes' correlator: one Event per (object, type, reason), count going up."""
    store = await Store.open(tmp_path / "s.db")
    try:
        fn = await store.create(
            FUNCTION, {"metadata": {"name": "tick"}, "spec": {"handler": "a.b"}}
        )
        recorder = EventRecorder(store)
        for run in range(5):
            await recorder.record(fn, warning=False, reason="Succeeded", message=f"run {run}")
        await recorder.record(fn, warning=True, reason="Failed", message="run 5 failed")
        await recorder.record(fn, warning=False, reason="Succeeded", message="run 6")

        stored, _ = await store.list_objects(EVENT, "default")
        by_reason = {event["reason"]: event for event in stored}
        assert len(stored) == 2
        assert by_reason["Succeeded"]["count"] == 6
        assert by_reason["Succeeded"]["message"] == "run 6"
        assert by_reason["Succeeded"]["lastTimestamp"] >= by_reason["Succeeded"]["firstTimestamp"]
        assert by_reason["Failed"]["count"] == 1
    finally:
        await store.close()


async def test_a_repeat_of_a_deleted_event_starts_a_new_one(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = await Store.open(tmp_path / "s.db")
    try:
        fn = await store.create(
            FUNCTION, {"metadata": {"name": "tick"}, "spec": {"handler": "a.b"}}
        )
        recorder = EventRecorder(store)
        await recorder.record(fn, warning=False, reason="Succeeded", message="first")
        [first] = (await store.list_objects(EVENT, "default"))[0]
        await store.delete(EVENT, "default", first["metadata"]["name"])
        await recorder.record(fn, warning=False, reason="Succeeded", message="second")
        [second] = (await store.list_objects(EVENT, "default"))[0]
        assert (second["message"], second["count"]) == ("second", 1)

        monkeypatch.setattr(events_module, "AGGREGATION_WINDOW_S", 0.0)
        await recorder.record(fn, warning=False, reason="Succeeded", message="third")
        stored, _ = await store.list_objects(EVENT, "default")
        assert len(stored) == 2  # outside the window: a new Event
    finally:
        await store.close()
