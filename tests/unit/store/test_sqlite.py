from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from funcmesh.errors import AlreadyExists, Conflict, NotFound
from funcmesh.model.kinds import FUNCTION, NAMESPACE
from funcmesh.model.selectors import parse_selector
from funcmesh.store.sqlite import Gone, Store


def fn(name: str, namespace: str = "default", **labels: str) -> dict[str, object]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"handler": "h.f", "runtime": "python3.11", "function": "x"},
    }


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    opened = await Store.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def test_create_fills_server_metadata(store: Store) -> None:
    created = await store.create(FUNCTION, fn("hello"))
    meta = created["metadata"]
    assert created["apiVersion"] == "kubeless.io/v1beta1"
    assert created["kind"] == "Function"
    assert meta["uid"]
    assert meta["creationTimestamp"].endswith("Z")
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) == store.resource_version
    assert (await store.get(FUNCTION, "default", "hello")) == created


async def test_duplicates_and_missing_namespaces_are_refused(store: Store) -> None:
    await store.create(FUNCTION, fn("hello"))
    with pytest.raises(AlreadyExists, match="hello"):
        await store.create(FUNCTION, fn("hello"))
    with pytest.raises(NotFound, match='namespaces "nope" not found'):
        await store.create(FUNCTION, fn("hello", "nope"))


async def test_stale_update_conflicts(store: Store) -> None:
    created = await store.create(FUNCTION, fn("hello"))
    changed = {**created, "spec": {**created["spec"], "timeout": "5"}}
    updated = await store.update(FUNCTION, changed)
    assert updated["metadata"]["generation"] == 2
    with pytest.raises(Conflict, match="has been modified"):
        await store.update(FUNCTION, changed)  # still carries the old resourceVersion


async def test_status_updates_do_not_touch_spec_and_spec_updates_keep_status(store: Store) -> None:
    created = await store.create(FUNCTION, fn("hello"))
    with_status = await store.update(
        FUNCTION, {**created, "spec": {"ignored": True}, "status": {"ready": 1}}, status_only=True
    )
    assert with_status["spec"] == created["spec"]
    assert with_status["metadata"]["generation"] == 1
    respec = await store.update(FUNCTION, {**with_status, "status": {"ready": 0}})
    assert respec["status"] == {"ready": 1}


async def test_list_filters_by_namespace_and_labels(store: Store) -> None:
    await store.create(NAMESPACE, {"metadata": {"name": "other"}})
    await store.create(FUNCTION, fn("a", app="x"))
    await store.create(FUNCTION, fn("b", app="y"))
    await store.create(FUNCTION, fn("c", "other", app="x"))
    names = lambda objs: [o["metadata"]["name"] for o in objs]  # noqa: E731
    assert names((await store.list_objects(FUNCTION, "default"))[0]) == ["a", "b"]
    assert names((await store.list_objects(FUNCTION, None, parse_selector("app=x")))[0]) == [
        "a",
        "c",
    ]


async def test_everything_survives_reopening(tmp_path: Path) -> None:
    first = await Store.open(tmp_path / "s.db")
    await first.create(FUNCTION, fn("kept"))
    rv = first.resource_version
    await first.close()
    second = await Store.open(tmp_path / "s.db")
    try:
        assert (await second.get(FUNCTION, "default", "kept"))["metadata"]["name"] == "kept"
        assert second.resource_version == rv
    finally:
        await second.close()


async def test_watch_replays_then_follows(store: Store) -> None:
    start = store.resource_version
    await store.create(FUNCTION, fn("a"))
    seen: list[tuple[str, str]] = []

    async def collect() -> None:
        async for change in store.watch(FUNCTION, "default", start):
            seen.append((change.type, change.object["metadata"]["name"]))
            if len(seen) == 3:
                return

    task = asyncio.create_task(collect())
    await asyncio.sleep(0)
    b = await store.create(FUNCTION, fn("b"))
    await store.delete(FUNCTION, "default", "a")
    await asyncio.wait_for(task, 5)
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]
    assert b["metadata"]["name"] == "b"


async def test_watch_from_a_pruned_version_is_gone(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "s.db", keep_changes=5)
    try:
        for index in range(1000):
            await store.create(NAMESPACE, {"metadata": {"name": f"n{index}"}})
        changes = store.watch(NAMESPACE, None, 1)
        with pytest.raises(Gone):
            await anext(changes)
    finally:
        await store.close()
