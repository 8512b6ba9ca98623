"""The endpoints controller against a real store, fed by a pod source written here (the input,
as the function pools and the workloads give it): Endpoints follow readiness, named ports,
deletes; user Endpoints of selector-less Services are left alone; a new pod's changes of a
moment make one write, a pod that goes is taken out at once."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.endpoints import EndpointsController
from funcmesh.controllers.service_ips import ClusterIPs
from funcmesh.errors import NotFound
from funcmesh.model.kinds import ENDPOINTS, SERVICE
from funcmesh.model.objects import RawObject, name_of
from funcmesh.store.sqlite import Store


class Pods:
    """Pods in a dict; every change is told to every watcher, as a PodSource does."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self._watchers: set[asyncio.Queue[tuple[str, dict[str, Any]]]] = set()

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(p)
            for p in self.pods.values()
            if namespace is None or p["metadata"]["namespace"] == namespace
            if selector is None
            or all(p["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())
        ]

    async def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._watchers.discard(queue)

    def put(self, pod: dict[str, Any]) -> None:
        kind = "MODIFIED" if pod["metadata"]["name"] in self.pods else "ADDED"
        self.pods[pod["metadata"]["name"]] = pod
        self._tell(kind, pod)

    def remove(self, name: str) -> None:
        self._tell("DELETED", self.pods.pop(name))

    def _tell(self, kind: str, pod: dict[str, Any]) -> None:
        for queue in self._watchers:
            queue.put_nowait((kind, copy.deepcopy(pod)))


def pod(
    name: str, ip: str, *, ready: bool = True, app: str = "web", port: dict[str, Any] | None = None
) -> dict[str, Any]:
    ports = [port] if port else []
    return {
        "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "main", "ports": ports}]},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def service(name: str, **spec: Any) -> RawObject:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.005)


class World:
    def __init__(self, store: Store, pods: Pods, ips: ClusterIPs) -> None:
        self.store, self.pods, self.ips = store, pods, ips

    async def create_service(self, obj: RawObject) -> None:
        await self.store.create(SERVICE, self.ips.admit(obj, None))

    async def endpoints(self, name: str) -> RawObject | None:
        try:
            return await self.store.get(ENDPOINTS, "default", name)
        except NotFound:
            return None

    async def ips_of(self, name: str, field: str = "addresses") -> list[str] | None:
        found = await self.endpoints(name)
        return None if found is None else ips_in(found, field)

    async def wait_ips(self, name: str, wanted: list[str], field: str = "addresses") -> float:
        started = time.monotonic()

        async def check() -> bool:
            return await self.ips_of(name, field) == wanted

        await eventually(check, f"Endpoints {name} {field} are {wanted}")
        return time.monotonic() - started


def ips_in(endpoints: RawObject, field: str = "addresses") -> list[str]:
    return [a["ip"] for s in endpoints.get("subsets") or () for a in s.get(field) or ()]


@contextlib.asynccontextmanager
async def started_world(tmp_path: Path, **settings: float) -> AsyncIterator[World]:
    store = await Store.open(tmp_path / "state.db")
    pods = Pods()
    controller = EndpointsController(store=store, pods=pods, **settings)
    await controller.start()
    try:
        yield World(store, pods, ClusterIPs("127.99.8.0/24"))
    finally:
        await controller.close()
        await store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with started_world(tmp_path) as started:
        yield started


async def writes_until(store: Store, name: str, since: int, ips: list[str]) -> list[RawObject]:
    """The Endpoints ``name`` as written after resourceVersion ``since``, up to the first
    write that lists ``ips`` as ready."""
    written: list[RawObject] = []
    async with asyncio.timeout(5), contextlib.aclosing(store.watch(ENDPOINTS, None, since)) as feed:
        async for change in feed:
            if name_of(change.object) == name:
                written.append(change.object)
                if ips_in(change.object) == ips:
                    return written
    raise AssertionError("the watch ended")


async def test_endpoints_follow_pod_readiness(world: World) -> None:
    await world.create_service(service("web", selector={"app": "web"}, ports=[{"port": 80}]))
    await world.wait_ips("web", [])  # no pod yet: an Endpoints object without subsets
    world.pods.put(pod("a", "127.128.9.1"))
    world.pods.put(pod("b", "127.128.9.2", ready=False))
    world.pods.put(pod("other", "127.128.9.3", app="db"))
    await world.wait_ips("web", ["127.128.9.1"])
    await world.wait_ips("web", ["127.128.9.2"], field="notReadyAddresses")

    world.pods.put(pod("b", "127.128.9.2"))  # becomes ready
    elapsed = await world.wait_ips("web", ["127.128.9.1", "127.128.9.2"])
    print(f"readiness change reached the Endpoints after {elapsed * 1000:.1f} ms")
    world.pods.remove("a")
    await world.wait_ips("web", ["127.128.9.2"])
    world.pods.put(pod("b", "127.128.9.2", ready=False))
    await world.wait_ips("web", [])
    endpoints = await world.endpoints("web")
    assert endpoints is not None
    assert endpoints["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]


async def test_a_named_target_port_leaves_out_pods_without_it(world: World) -> None:
    world.pods.put(pod("named", "127.128.9.4", port={"name": "http", "containerPort": 8000}))
    world.pods.put(pod("unnamed", "127.128.9.5", port={"containerPort": 8000}))
    await world.create_service(
        service("named", selector={"app": "web"}, ports=[{"port": 80, "targetPort": "http"}])
    )
    await world.wait_ips("named", ["127.128.9.4"])
    endpoints = await world.endpoints("named")
    assert endpoints is not None
    assert endpoints["subsets"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert endpoints["subsets"][0]["addresses"][0]["targetRef"]["name"] == "named"


async def test_a_selector_matching_nothing_gives_empty_endpoints(world: World) -> None:
    world.pods.put(pod("a", "127.128.9.6"))
    await world.create_service(service("lonely", selector={"app": "none"}, ports=[{"port": 80}]))
    await world.wait_ips("lonely", [])


async def test_user_endpoints_of_a_service_without_selector_are_left_alone(world: World) -> None:
    await world.create_service(service("db", ports=[{"port": 5432}]))
    user = {
        "metadata": {"name": "db", "namespace": "default"},
        "subsets": [{"addresses": [{"ip": "127.0.0.1"}], "ports": [{"port": 5432}]}],
    }
    await world.store.create(ENDPOINTS, user)
    world.pods.put(pod("a", "127.128.9.7"))
    await world.create_service(service("web", selector={"app": "web"}, ports=[{"port": 80}]))
    await world.wait_ips("web", ["127.128.9.7"])  # the controller has been at work meanwhile
    assert await world.ips_of("db") == ["127.0.0.1"]


async def test_managed_endpoints_are_put_right_and_go_with_their_service(world: World) -> None:
    world.pods.put(pod("a", "127.128.9.8"))
    await world.create_service(service("web", selector={"app": "web"}, ports=[{"port": 80}]))
    await world.wait_ips("web", ["127.128.9.8"])
    tampered = await world.endpoints("web")
    assert tampered is not None
    tampered["subsets"][0]["addresses"] = [{"ip": "127.0.0.9"}]
    await world.store.update(ENDPOINTS, tampered)
    await world.wait_ips("web", ["127.128.9.8"])
    await world.store.delete(ENDPOINTS, "default", "web")
    await world.wait_ips("web", ["127.128.9.8"])

    await world.store.delete(SERVICE, "default", "web")

    async def gone() -> bool:
        return await world.endpoints("web") is None

    await eventually(gone, "the Endpoints go with their Service")


async def test_orphan_endpoints_are_deleted_at_start(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db")
    orphan = {"metadata": {"name": "gone"}, "subsets": [{"addresses": [{"ip": "127.0.0.1"}]}]}
    await store.create(ENDPOINTS, orphan)
    controller = EndpointsController(store=store, pods=Pods())
    try:
        await controller.start()
        assert not await store.exists(ENDPOINTS, "default", "gone")
    finally:
        await controller.close()
        await store.close()


async def test_a_new_pod_and_its_readiness_a_moment_later_make_one_write(tmp_path: Path) -> None:
    """A cold start: the pod is created, then ready; its Service's Endpoints change once."""
    async with started_world(tmp_path, batch_period_s=0.3) as world:
        await world.create_service(service("web", selector={"app": "web"}, ports=[{"port": 80}]))
        await world.wait_ips("web", [])
        _, since = await world.store.list_objects(ENDPOINTS)
        world.pods.put(pod("a", "127.128.9.1", ready=False))
        await asyncio.sleep(0.05)  # the instance loads meanwhile
        world.pods.put(pod("a", "127.128.9.1"))
        written = await writes_until(world.store, "web", since, ["127.128.9.1"])
        assert len(written) == 1
        assert ips_in(written[0], "notReadyAddresses") == []


async def test_a_pod_that_goes_leaves_its_endpoints_without_waiting(tmp_path: Path) -> None:
    batch_period_s = 1.5
    async with started_world(tmp_path, batch_period_s=batch_period_s) as world:
        world.pods.put(pod("a", "127.128.9.1"))
        world.pods.put(pod("b", "127.128.9.2"))
        await world.create_service(service("web", selector={"app": "web"}, ports=[{"port": 80}]))
        await world.wait_ips("web", ["127.128.9.1", "127.128.9.2"])

        world.pods.remove("a")
        assert await world.wait_ips("web", ["127.128.9.2"]) < batch_period_s / 2
        world.pods.put(pod("b", "127.128.9.2", ready=False))
        assert await world.wait_ips("web", []) < batch_period_s / 2
        assert await world.ips_of("web", "notReadyAddresses") == ["127.128.9.2"]
