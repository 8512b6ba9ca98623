"""The mesh feed against a real SQLite store: the table holds what is stored, follows creates,
updates and deletes, and leaves out objects that do not parse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from funcmesh.mesh.feed import MeshFeed
from funcmesh.mesh.table import MeshTable
from funcmesh.model.kinds import (
    AUTHORIZATION_POLICY,
    DESTINATION_RULE,
    GATEWAY,
    PEER_AUTHENTICATION,
    VIRTUAL_SERVICE,
)
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store

REVIEWS = "reviews.default.svc.cluster.local"


def obj(name: str, spec: dict[str, Any]) -> RawObject:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": spec}


def virtual_service(name: str, hosts: list[str], subset: str = "v1") -> RawObject:
    route = {"name": name, "route": [{"destination": {"host": "reviews", "subset": subset}}]}
    return obj(name, {"hosts": hosts, "http": [route]})


def route_names(table: MeshTable, fqdn: str) -> list[str]:
    routes = table.mesh_routes(fqdn)
    return [] if routes is None else [route.name for route in routes.routes]


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = 5) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state.db")
    yield opened
    await opened.close()


@pytest.fixture
async def feed(store: Store) -> AsyncIterator[MeshFeed]:
    await store.create(VIRTUAL_SERVICE, virtual_service("before", ["reviews"]))
    await store.create(DESTINATION_RULE, obj("reviews", {"host": "reviews"}))
    gateway = {"servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"]}]}
    await store.create(GATEWAY, obj("public", gateway))
    broken = virtual_service("broken", ["ratings"])
    broken["spec"]["corsPolicy"] = {}  # a field funcmesh refuses: admission would have
    await store.create(VIRTUAL_SERVICE, broken)
    started = MeshFeed(store, MeshTable())
    await started.start()
    yield started
    await started.close()


async def test_the_table_starts_with_what_is_stored(
    feed: MeshFeed, caplog: pytest.LogCaptureFixture
) -> None:
    table = feed.table
    assert route_names(table, REVIEWS) == ["before"]
    rule = table.destination_rule(REVIEWS)
    assert rule is not None
    assert rule.name == "reviews"
    assert [g.name for g in table.gateways()] == ["public"]
    assert table.mesh_routes("ratings.default.svc.cluster.local") is None
    warnings = [record.getMessage() for record in caplog.get_records("setup")]
    assert any("VirtualService default/broken is ignored" in w for w in warnings)


async def test_the_table_follows_creates_updates_and_deletes(store: Store, feed: MeshFeed) -> None:
    table = feed.table
    await store.create(VIRTUAL_SERVICE, virtual_service("canary", ["reviews"], subset="v2"))
    await eventually(lambda: route_names(table, REVIEWS) == ["before", "canary"], "a create")

    current = await store.get(VIRTUAL_SERVICE, "default", "canary")
    current["spec"]["hosts"] = ["ratings"]
    await store.update(VIRTUAL_SERVICE, current)
    await eventually(lambda: route_names(table, REVIEWS) == ["before"], "an update")
    assert route_names(table, "ratings.default.svc.cluster.local") == ["canary"]

    await store.delete(VIRTUAL_SERVICE, "default", "before")
    await store.delete(DESTINATION_RULE, "default", "reviews")
    await store.delete(GATEWAY, "default", "public")
    await eventually(
        lambda: table.mesh_routes(REVIEWS) is None
        and table.destination_rule(REVIEWS) is None
        and not list(table.gateways()),
        "deletes",
    )


async def test_an_object_that_stops_parsing_leaves_the_table(store: Store, feed: MeshFeed) -> None:
    current = await store.get(VIRTUAL_SERVICE, "default", "before")
    current["spec"]["http"][0]["corsPolicy"] = {}
    await store.update(VIRTUAL_SERVICE, current)
    await eventually(lambda: feed.table.mesh_routes(REVIEWS) is None, "the bad update")


async def test_security_policies_are_kept(store: Store, feed: MeshFeed) -> None:
    table = feed.table
    await store.create(AUTHORIZATION_POLICY, obj("deny-all", {"action": "DENY", "rules": [{}]}))
    await store.create(PEER_AUTHENTICATION, obj("strict", {"mtls": {"mode": "STRICT"}}))
    await eventually(
        lambda: bool(table.authorization_policies("default"))
        and bool(table.peer_authentications("default")),
        "the policies arrive",
    )
    assert table.authorization_policies("default")[0].action == "DENY"
    assert table.peer_authentications("default")[0].mode == "STRICT"
    await store.delete(AUTHORIZATION_POLICY, "default", "deny-all")
    await eventually(lambda: not table.authorization_policies("default"), "the policy goes")


async def test_a_restarted_feed_lists_again(store: Store, feed: MeshFeed) -> None:
    await feed.close()
    await store.delete(VIRTUAL_SERVICE, "default", "before")
    await store.create(VIRTUAL_SERVICE, virtual_service("after", ["reviews"]))
    await feed.start()
    assert route_names(feed.table, REVIEWS) == ["after"]


async def test_a_policy_naming_a_namespace_that_does_not_exist_is_kept_and_warned_once(
    store: Store, feed: MeshFeed, caplog: pytest.LogCaptureFixture
) -> None:
    rules = [
        {"from": [{"source": {"namespaces": ["default", "ghost", "prod-*"]}}]},
        {"when": [{"key": "source.namespace", "notValues": ["phantom"]}]},
    ]
    await store.create(AUTHORIZATION_POLICY, obj("from-ghost", {"rules": rules}))
    await eventually(lambda: bool(feed.table.authorization_policies("default")), "the policy")
    current = await store.get(AUTHORIZATION_POLICY, "default", "from-ghost")
    current["metadata"]["labels"] = {"changed": "yes"}
    await store.update(AUTHORIZATION_POLICY, current)
    await eventually(
        lambda: len([r for r in caplog.records if "does not exist" in r.getMessage()]) >= 2,
        "the warnings",
    )
    await asyncio.sleep(0.05)  # the update is seen too: it must not warn again
    warnings = sorted(r.getMessage() for r in caplog.records if "does not exist" in r.getMessage())
    assert warnings == [
        "AuthorizationPolicy default/from-ghost names the namespace ghost, which does not exist: "
        "that part of the policy matches nothing",
        "AuthorizationPolicy default/from-ghost names the namespace phantom, which does not "
        "exist: that part of the policy matches nothing",
    ]
