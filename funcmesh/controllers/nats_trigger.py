"""One NATSTrigger at run time, and the Kubeless event each of its messages becomes.

A TriggerState knows which Functions the trigger selects now, owns the trigger's delivery lane,
turns each message into one delivery per selected Function (with Kubeless's NATS event headers)
and keeps the counts its status and the metrics show. It does no I/O of its own: the controller
(controllers.nats) subscribes it, feeds it Functions and writes its status.
"""

from __future__ import annotations

import contextlib
import copy
import json
import secrets
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from funcmesh.controllers.deliveries import Delivery, DeliveryLane, Outcome
from funcmesh.controllers.nats_client import NatsSubscription
from funcmesh.errors import Invalid
from funcmesh.model.conditions import find_condition
from funcmesh.model.objects import RawObject, metadata_of, name_of, namespace_of
from funcmesh.model.triggers import NatsTriggerSpec, parse_nats_trigger

EVENT_NAMESPACE = "natstriggers.kubeless.io"
EVENT_ID_BYTES = 11  # 15 url-safe characters, like Kubeless's event ids
EVENT_INTERVAL_S = 10.0  # at most one Warning Event about dropped messages per trigger per this


def nats_event_headers(payload: bytes, *, event_id: str, unix_ns: int) -> dict[str, str]:
    """Kubeless's NATS event headers: JSON content type only for a JSON object payload."""
    media_type = "application/json" if _is_json_object(payload) else "text/plain"
    return {
        "event-id": event_id,
        "event-time": go_time_string(unix_ns),
        "event-type": media_type,
        "event-namespace": EVENT_NAMESPACE,
        "Content-Type": media_type,
    }


def go_time_string(unix_ns: int) -> str:
    """A UTC time as Go's ``time.String()`` writes it: ``2009-11-10 23:00:00.5 +0000 UTC``."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    fraction = f".{nanos:09d}".rstrip("0") if nanos else ""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(seconds))}{fraction} +0000 UTC"


def _is_json_object(payload: bytes) -> bool:
    if not payload.lstrip().startswith(b"{"):
        return False
    try:
        return isinstance(json.loads(payload), dict)
    except ValueError:  # also UnicodeDecodeError
        return False


class NatsMetrics:
    """Prometheus metrics of NATS triggers, in the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "funcmesh_nats_messages",
            "Messages NATS triggers received",
            ("namespace", "trigger"),
            registry=registry,
        )
        self.deliveries = Counter(
            "funcmesh_nats_deliveries",
            "Attempts to deliver NATS messages to functions: delivered, retried or failed",
            ("namespace", "trigger", "function", "outcome"),
            registry=registry,
        )
        self.dropped = Counter(
            "funcmesh_nats_slow_consumer_drops",
            "Messages lost because a trigger's buffer was full",
            ("namespace", "trigger"),
            registry=registry,
        )
        self.connected = Gauge(
            "funcmesh_nats_connected", "1 while connected to the NATS server", registry=registry
        )


class TriggerState:
    """One NATSTrigger as the controller runs it; the observer of its delivery lane."""

    def __init__(self, obj: RawObject, *, metrics: NatsMetrics, on_change: Callable[[], None]):
        self.obj = obj
        self.uid = str(metadata_of(obj).get("uid") or "")
        self.namespace, self.name = namespace_of(obj), name_of(obj)
        self.spec: NatsTriggerSpec | None = None
        self.problem = ""  # why the object cannot be run (Invalid)
        self.targets: tuple[str, ...] = ()
        self.lane: DeliveryLane | None = None
        self.subscription: NatsSubscription | None = None
        self.subscribe_problem = ""
        self.status: dict[str, object] = copy.deepcopy(obj.get("status") or {})
        self.counts = {o: _count(self.status.get(o.value)) for o in Outcome}
        self.failures: dict[str, tuple[int, str]] = {}  # dropped since the last Event
        self.last_event_s = -EVENT_INTERVAL_S
        # The Ready reason last told in an Event: a restart passing through Connecting does
        # not repeat "Subscribed".
        self.reported = (find_condition(self.status, "Ready") or {}).get("reason")
        self.generation: object = None  # the metadata.generation the spec was parsed from
        self.dirty = True
        self._metrics = metrics
        self._on_change = on_change
        self._messages = metrics.messages.labels(self.namespace, self.name)
        self._functions_counted: set[str] = set()  # functions with delivery metric series

    def accept(self, obj: RawObject) -> bool:
        """Take a new version of the object; True when what it asks for changed."""
        generation = metadata_of(obj).get("generation")
        changed = generation != self.generation
        self.obj, self.generation = obj, generation
        if changed:
            try:
                self.spec, self.problem = parse_nats_trigger(obj), ""
            except Invalid as exc:
                self.spec, self.problem = None, str(exc)
            self.mark_dirty()
        return changed

    def retarget(self, functions: Mapping[str, Mapping[str, str]]) -> None:
        """Select among the namespace's Functions (name -> labels) those that match now."""
        selector = self.spec.selector if self.spec else None
        matching = [
            name for name, labels in functions.items() if selector and selector.matches(labels)
        ]
        targets = tuple(sorted(matching))
        if targets != self.targets:
            self.targets = targets
            self.mark_dirty()

    async def take(self, payload: bytes) -> None:
        """A message from the subscription: one delivery per selected function."""
        self._messages.inc()
        if not self.targets or self.lane is None:
            return
        headers = nats_event_headers(
            payload, event_id=secrets.token_urlsafe(EVENT_ID_BYTES), unix_ns=time.time_ns()
        )
        for function in self.targets:
            await self.lane.put(Delivery(function=function, body=payload, headers=headers))

    def record(self, function: str, outcome: Outcome, detail: str) -> None:
        self.counts[outcome] += 1
        self._functions_counted.add(function)
        self._metrics.deliveries.labels(self.namespace, self.name, function, outcome.value).inc()
        if outcome is Outcome.FAILED:
            count, _ = self.failures.get(function, (0, ""))
            self.failures[function] = (count + 1, detail)
        self.mark_dirty()

    def selects(self, function: str) -> bool:
        return function in self.targets

    def dropped(self) -> None:
        self._metrics.dropped.labels(self.namespace, self.name).inc()

    def mark_dirty(self) -> None:
        self.dirty = True
        self._on_change()

    def forget_metrics(self) -> None:
        """Remove this trigger's series from the metrics: it is deleted."""
        series: list[tuple[Counter, tuple[str, ...]]] = [
            (self._metrics.messages, (self.namespace, self.name)),
            (self._metrics.dropped, (self.namespace, self.name)),
        ]
        series += [
            (self._metrics.deliveries, (self.namespace, self.name, function, outcome.value))
            for function in self._functions_counted
            for outcome in Outcome
        ]
        for metric, labels in series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
