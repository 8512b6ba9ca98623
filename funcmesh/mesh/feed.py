"""Keeps a MeshTable (mesh.table) equal to the stored Istio objects.

At start every VirtualService, DestinationRule, Gateway, AuthorizationPolicy and
PeerAuthentication is parsed and put into the table; then each committed change is applied as
it comes, so the data plane routes by a new rule within one pass of the event loop. A watch
that ends early (it fell behind) or fails is followed by a fresh list of that kind, and
whatever the table holds that the store no longer has is removed. Objects that do not parse
(an older schema) are left out of the table with a warning. An AuthorizationPolicy whose
sources name a namespace that does not exist is kept (as Istio does: that part matches
nothing) and warned about in the log, once per policy and namespace. It never answers
requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Invalid
from funcmesh.mesh.table import MeshTable
from funcmesh.model.istio_destinations import parse_destination_rule, parse_gateway
from funcmesh.model.istio_networking import parse_virtual_service
from funcmesh.model.istio_security import (
    AuthorizationPolicySpec,
    parse_authorization_policy,
    parse_peer_authentication,
)
from funcmesh.model.kinds import (
    AUTHORIZATION_POLICY,
    DESTINATION_RULE,
    GATEWAY,
    NAMESPACE,
    PEER_AUTHENTICATION,
    VIRTUAL_SERVICE,
    ResourceType,
)
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]
RETRY_PAUSE_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Kind:
    """How one kind of object reaches the table."""

    rt: ResourceType
    parse: Callable[[Mapping[str, Any]], Any]
    put: Callable[[Any], None]
    remove: Callable[[str, str], None]


class MeshFeed:
    """Follows the store's Istio objects into a MeshTable."""

    def __init__(self, store: Store, table: MeshTable) -> None:
        self._store = store
        self.table = table
        self._kinds = (
            _Kind(
                rt=VIRTUAL_SERVICE,
                parse=parse_virtual_service,
                put=table.put_virtual_service,
                remove=table.remove_virtual_service,
            ),
            _Kind(
                rt=DESTINATION_RULE,
                parse=parse_destination_rule,
                put=table.put_destination_rule,
                remove=table.remove_destination_rule,
            ),
            _Kind(
                rt=GATEWAY, parse=parse_gateway, put=table.put_gateway, remove=table.remove_gateway
            ),
            _Kind(
                rt=AUTHORIZATION_POLICY,
                parse=parse_authorization_policy,
                put=table.put_authorization_policy,
                remove=table.remove_authorization_policy,
            ),
            _Kind(
                rt=PEER_AUTHENTICATION,
                parse=parse_peer_authentication,
                put=table.put_peer_authentication,
                remove=table.remove_peer_authentication,
            ),
        )
        self._held: dict[str, set[Key]] = {kind.rt.key: set() for kind in self._kinds}
        self._unchecked: list[AuthorizationPolicySpec] = []  # namespaces not looked at yet
        self._warned: set[tuple[str, str, str]] = set()  # (namespace, name, missing one)
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        versions = [await self._load(kind) for kind in self._kinds]
        self._watchers = [
            asyncio.create_task(self._follow(kind, since), name=f"mesh-feed-{kind.rt.plural}")
            for kind, since in zip(self._kinds, versions, strict=True)
        ]

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []

    async def _follow(self, kind: _Kind, since: int) -> None:
        stale = False
        while True:
            try:
                if stale:
                    since = await self._load(kind)
                async for change in self._store.watch(kind.rt, None, since):
                    since = change.resource_version
                    self._apply(kind, change)
                    await self._warn_unknown_namespaces()
                logger.warning("the watch of %s ended early; listing them again", kind.rt.plural)
            except Exception:  # the task's boundary: keep the table following the store
                logger.exception("following %s for the mesh table failed", kind.rt.plural)
                await asyncio.sleep(RETRY_PAUSE_S)
            stale = True

    def _apply(self, kind: _Kind, change: Change) -> None:
        obj = change.object
        if change.type == "DELETED":
            self._remove(kind, (namespace_of(obj) or "default", name_of(obj)))
        else:
            self._put(kind, obj)

    async def _load(self, kind: _Kind) -> int:
        objects, since = await self._store.list_objects(kind.rt)
        held = self._held[kind.rt.key]
        old = set(held)
        held.clear()
        for obj in objects:
            self._put(kind, obj)
        for key in old - held:
            kind.remove(*key)
        await self._warn_unknown_namespaces()
        return since

    def _put(self, kind: _Kind, obj: RawObject) -> None:
        key = (namespace_of(obj) or "default", name_of(obj))
        try:
            spec = kind.parse(obj)
        except Invalid as exc:  # admitted objects parse; an older schema may not
            logger.warning("%s %s/%s is ignored: %s", kind.rt.kind, *key, exc)
            self._remove(kind, key)
            return
        self._held[kind.rt.key].add(key)
        kind.put(spec)
        if isinstance(spec, AuthorizationPolicySpec):
            self._unchecked.append(spec)

    async def _warn_unknown_namespaces(self) -> None:
        specs, self._unchecked = self._unchecked, []
        for spec in specs:
            for namespace in sorted(source_namespaces(spec)):
                warning = (spec.namespace, spec.name, namespace)
                if warning in self._warned or await self._store.exists(NAMESPACE, "", namespace):
                    continue
                self._warned.add(warning)
                logger.warning(
                    "AuthorizationPolicy %s/%s names the namespace %s, which does not exist: "
                    "that part of the policy matches nothing",
                    spec.namespace,
                    spec.name,
                    namespace,
                )

    def _remove(self, kind: _Kind, key: Key) -> None:
        self._held[kind.rt.key].discard(key)
        kind.remove(*key)


def source_namespaces(spec: AuthorizationPolicySpec) -> set[str]:
    """The namespaces a policy's sources and ``source.namespace`` conditions name exactly
    (patterns with ``*`` left out)."""
    names: set[str] = set()
    for rule in spec.rules:
        for source in rule.sources:
            names.update(source.namespaces.values, source.namespaces.not_values)
        for condition in rule.conditions:
            if condition.key == "source.namespace":
                names.update(condition.values.values, condition.values.not_values)
    return {name for name in names if "*" not in name}
