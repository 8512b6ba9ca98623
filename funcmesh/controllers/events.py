"""Kubernetes ``Event`` objects about functions, as ``kubectl get events`` shows them.

Events are best effort: failing to record one is logged and never fails the work it describes.
The store keeps the newest events only (older ones are pruned per namespace).

Repeats are merged as Kubernetes' event correlator does: an Event with the same object, type
and reason as one recorded less than ``AGGREGATION_WINDOW_S`` ago updates that Event (``count``
up, ``lastTimestamp`` and ``message`` the newest) instead of adding one, so a trigger that runs
every second shows one line "x300 over 5m" in ``kubectl get events`` and does not push every
other Event out of the window.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

from funcmesh.errors import FuncmeshError, NotFound
from funcmesh.model.kinds import EVENT, FUNCTION
from funcmesh.model.objects import RawObject, metadata_of, rfc3339
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

MAX_EVENTS_PER_NAMESPACE = 500
AGGREGATION_WINDOW_S = 600.0  # Kubernetes' correlator merges repeats within 10 minutes
MAX_TRACKED_SERIES = 4096  # (object, type, reason) series remembered for merging

SeriesKey = tuple[str, str, str, str, str]  # namespace, kind, name, type, reason


@dataclass(slots=True)
class _Series:
    """The stored Event that repeats of one (object, type, reason) update."""

    event: RawObject  # as created; repeats change count, lastTimestamp and message
    last_s: float  # monotonic time of the newest repeat


class EventRecorder:
    """Writes Events, keeping the newest ``MAX_EVENTS_PER_NAMESPACE`` of each namespace."""

    def __init__(self, store: Store, *, component: str = "funcmesh") -> None:
        self._store = store
        self._component = component
        self._counts: dict[str, int] = {}  # events per namespace, learnt on the first prune
        self._pruning: set[str] = set()
        self._series: dict[SeriesKey, _Series] = {}

    async def record(self, about: RawObject, *, warning: bool, reason: str, message: str) -> None:
        meta = metadata_of(about)
        namespace = str(meta.get("namespace") or "default")
        kind = str(about.get("kind", FUNCTION.kind))
        event_type = "Warning" if warning else "Normal"
        key = (namespace, kind, str(meta.get("name")), event_type, reason)
        now, now_s = rfc3339(), time.monotonic()
        series = self._series.get(key)
        if series is not None and now_s - series.last_s < AGGREGATION_WINDOW_S:
            series.last_s = now_s
            if await self._repeat(series, now=now, message=message):
                return
        name = f"{meta.get('name')}.{secrets.token_hex(8)}"
        event = {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": FUNCTION.api_version,
                "kind": kind,
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self._store.create(EVENT, event)
        except FuncmeshError as exc:
            logger.warning("could not record event %s for %s: %s", reason, meta.get("name"), exc)
            return
        self._remember(key, _Series(event=event, last_s=now_s))
        try:
            await self._prune(namespace)
        except FuncmeshError as exc:
            logger.warning("could not prune the events of %s: %s", namespace, exc)

    async def _repeat(self, series: _Series, *, now: str, message: str) -> bool:
        """Update the series' Event; False when it is gone (pruned or deleted)."""
        event = series.event
        event["count"] = int(event["count"]) + 1
        event["lastTimestamp"], event["message"] = now, message[:1024]
        event["metadata"]["resourceVersion"] = None  # unconditional: the daemon owns Events
        try:
            await self._store.update(EVENT, event)
        except NotFound:
            return False
        except FuncmeshError as exc:
            logger.warning("could not update event %s: %s", event["metadata"]["name"], exc)
        return True

    def _remember(self, key: SeriesKey, series: _Series) -> None:
        if len(self._series) >= MAX_TRACKED_SERIES:  # forget the stalest half
            stalest = sorted(self._series, key=lambda k: self._series[k].last_s)
            for old in stalest[: MAX_TRACKED_SERIES // 2]:
                del self._series[old]
        self._series[key] = series

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
