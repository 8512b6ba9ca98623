"""HTTPTriggers go with their Function, also when it went while the daemon was down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from funcmesh.controllers.cascade import TriggerCascade
from funcmesh.model.kinds import FUNCTION, HTTP_TRIGGER
from funcmesh.store.sqlite import Store


def function(name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"handler": "h.f", "runtime": "python3.11"}}


def trigger(name: str, function_name: str) -> dict[str, object]:
    return {"metadata": {"name": name}, "spec": {"function-name": function_name, "path": "x"}}


async def names(store: Store) -> set[str]:
    triggers, _ = await store.list_objects(HTTP_TRIGGER, "default")
    return {t["metadata"]["name"] for t in triggers}


async def test_triggers_are_deleted_with_their_function(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db")
    cascade = TriggerCascade(store)
    try:
        await store.create(FUNCTION, function("kept"))
        await store.create(HTTP_TRIGGER, trigger("orphan", "gone-while-down"))
        await store.create(HTTP_TRIGGER, trigger("stays", "kept"))
        await store.create(FUNCTION, function("doomed"))
        await store.create(HTTP_TRIGGER, trigger("goes", "doomed"))
        await cascade.start()
        assert await names(store) == {"stays", "goes"}  # the orphan went at start
        await store.delete(FUNCTION, "default", "doomed")
        deadline = time.monotonic() + 5
        while await names(store) != {"stays"}:
            assert time.monotonic() < deadline, await names(store)
            await asyncio.sleep(0.01)
    finally:
        await cascade.close()
        await store.close()
