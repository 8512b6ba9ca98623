"""Kubernetes ``Event`` objects about functions, as ``kubectl get events`` shows them.

Events are best effort: failing to record one is logged and never fails the work it describes.
The store keeps the newest events only (older ones are pruned per namespace).
"""

from __future__ import annotations

import contextlib
import logging
import secrets

from funcmesh.errors import FuncmeshError, NotFound
from funcmesh.model.kinds import EVENT, FUNCTION
from funcmesh.model.objects import RawObject, metadata_of, rfc3339
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_NAMESPACE = 500


class EventRecorder:
    """Writes Events, keeping the newest ``MAX_EVENTS_PER_NAMESPACE`` of each namespace."""

    def __init__(self, store: Store, *, component: str = "funcmesh") -> None:
        self._store = store
        self._component = component
        self._counts: dict[str, int] = {}  # events per namespace, learnt on the first prune
        self._pruning: set[str] = set()

    async def record(self, about: RawObject, *, warning: bool, reason: str, message: str) -> None:
        meta = metadata_of(about)
        namespace = str(meta.get("namespace") or "default")
        now = rfc3339()
        event = {
            "metadata": {
                "name": f"{meta.get('name')}.{secrets.token_hex(8)}",
                "namespace": namespace,
            },
            "involvedObject": {
                "apiVersion": FUNCTION.api_version,
                "kind": about.get("kind", FUNCTION.kind),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._store.create(EVENT, event)
            await self._prune(namespace)
        except FuncmeshError as exc:
            logger.warning("could not record event %s for %s: %s", reason, meta.get("name"), exc)

    async def _prune(self, namespace: str) -> None:
        """Delete the oldest events once a namespace holds a tenth more than it may, so the
        list is read once per ``MAX_EVENTS_PER_NAMESPACE // 10`` events, not per event.
        One prune per namespace at a time: events recorded meanwhile only count."""
        limit = MAX_EVENTS_PER_NAMESPACE * 11 // 10
        count = self._counts.get(namespace, limit) + 1
        self._counts[namespace] = count
        if count <= limit or namespace in self._pruning:
            return
        self._pruning.add(namespace)
        try:
            events, _ = await self._store.list_objects(EVENT, namespace)
            events.sort(key=lambda e: int(metadata_of(e)["resourceVersion"]))
            excess = events[: max(0, len(events) - MAX_EVENTS_PER_NAMESPACE)]
            self._counts[namespace] = len(events) - len(excess)
            del events
            for old in excess:
                with contextlib.suppress(NotFound):
                    await self._store.delete(EVENT, namespace, str(metadata_of(old)["name"]))
        finally:
            self._pruning.discard(namespace)
