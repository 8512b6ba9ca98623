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
