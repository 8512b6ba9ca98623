"""The NATSTrigger controller: each message on a trigger's subject reaches every selected Function.

One NATS connection for the daemon (controllers.nats_client). Each trigger subscribes to its
``topic`` in the queue group ``<namespace>_<trigger>``, so several daemons sharing a server
take each message once. A message is POSTed, through the gateway (the Invoker), to every
Function of the trigger's namespace whose labels match ``functionSelector``, with Kubeless's
NATS event headers; the selection follows Functions as they come, go and change labels.
Delivery (controllers.deliveries) never blocks the subscription for long: a bounded queue and a
few workers per trigger, retries with backoff, then a Warning Event.

Status, written at most once per ``status_interval_s``: the ``Ready`` condition (reasons
Subscribed; NoNATSServer, Connecting, NATSDisconnected, Subscribing, NoFunctions, Invalid), the
selected ``functions`` and the ``delivered``/``retried``/``failed`` counts. Events tell changes
of the Ready reason and, at most every EVENT_INTERVAL_S, the deliveries that were given up.
Delivery is at most once, as NATS core is: messages published while disconnected, or queued
when the daemon stops, are lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from funcmesh.controllers.deliveries import DeliveryLane, DeliveryPolicy
from funcmesh.controllers.events import EventRecorder
from funcmesh.controllers.invoker import FunctionCaller
from funcmesh.controllers.nats_client import ConnectionState, NatsConnection
from funcmesh.controllers.nats_trigger import EVENT_INTERVAL_S, NatsMetrics, TriggerState
from funcmesh.errors import FuncmeshError, NotFound, Unavailable
from funcmesh.model.conditions import set_condition
from funcmesh.model.kinds import FUNCTION, NATS_TRIGGER, ResourceType
from funcmesh.model.objects import RawObject, labels_of, metadata_of, name_of, namespace_of
from funcmesh.model.triggers import selector_text
from funcmesh.store.sqlite import Gone, Store

logger = logging.getLogger(__name__)

TRANSIENT_REASONS = ("Connecting", "Subscribing")  # Ready reasons too short-lived for an Event
NO_SERVER_MESSAGE = (
    "funcmesh up runs without a NATS server: start it with --nats-url nats://HOST:4222 "
    "(or FUNCMESH_NATS_URL) to deliver this trigger's messages"
)
RESTART_DELAY_S = 1.0  # before a loop that failed unexpectedly starts again
Key = tuple[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Readiness:
    """A trigger's ``Ready`` condition."""

    ok: bool
    reason: str
    message: str


class NatsTriggerController:
    """Runs every NATSTrigger of every namespace."""

    def __init__(
        self,
        *,
        store: Store,
        invoker: FunctionCaller,
        nats_url: str | None,
        registry: CollectorRegistry,
        policy: DeliveryPolicy | None = None,
        reconnect_wait_s: int = 1,
        status_interval_s: float = 1.0,
    ) -> None:
        self._store = store
        self._invoker = invoker
        self._policy = policy or DeliveryPolicy()
        self._status_interval_s = status_interval_s
        self._metrics = NatsMetrics(registry)
        self._events = EventRecorder(store, component="nats-trigger-controller")
        self._connection = (
            NatsConnection(
                nats_url, on_state=self._on_connection, reconnect_wait_s=reconnect_wait_s
            )
            if nats_url
            else None
        )
        self._triggers: dict[Key, TriggerState] = {}
        self._retired: list[TriggerState] = []
        self._functions: dict[str, dict[str, Mapping[str, str]]] = {}
        self._resubscribe = asyncio.Event()
        self._status_due = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load Functions and triggers, then follow their changes and connect to NATS."""
        functions_since = await self._load(FUNCTION, self._replace_functions)
        triggers_since = await self._load(NATS_TRIGGER, self._replace_triggers)
        for trigger in self._triggers.values():  # no stale "Subscribed" from the last run
            await self._write_status(trigger)
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "functions-watch": lambda: self._follow(
                FUNCTION, functions_since, self._replace_functions, self._on_function
            ),
            "triggers-watch": lambda: self._follow(
                NATS_TRIGGER, triggers_since, self._replace_triggers, self._on_trigger
            ),
            "subscriptions": self._keep_subscribed,
            "status": self._write_statuses,
        }
        self._tasks = [
            asyncio.create_task(_supervised(what, loop), name=f"nats-triggers-{what}")
            for what, loop in loops.items()
        ]
        if self._connection is not None:
            self._connection.start()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
        for trigger in [*self._triggers.values(), *self._retired]:
            if trigger.lane is not None:
                await trigger.lane.close()
        for trigger in self._triggers.values():  # the counts survive a restart
            if trigger.dirty:
                await self._write_status(trigger)

    # -- desired state: triggers and functions, from the store ---------------------------

    async def _load(self, rt: ResourceType, replace: Callable[[list[RawObject]], None]) -> int:
        objects, resource_version = await self._store.list_objects(rt)
        replace(objects)
        return resource_version

    async def _follow(
        self,
        rt: ResourceType,
        since: int,
        replace: Callable[[list[RawObject]], None],
        apply: Callable[[str, RawObject], None],
    ) -> None:
        """Watch ``rt``; list everything again whenever the watch ends or falls behind."""
        while True:
            try:
                async for change in self._store.watch(rt, None, since):
                    since = change.resource_version
                    apply(change.type, change.object)
            except Gone:
                pass
            since = await self._load(rt, replace)

    def _replace_functions(self, objects: list[RawObject]) -> None:
        self._functions = {}
        for obj in objects:
            self._functions.setdefault(namespace_of(obj), {})[name_of(obj)] = labels_of(obj)
        for trigger in self._triggers.values():
            trigger.retarget(self._functions.get(trigger.namespace, {}))

    def _on_function(self, change: str, obj: RawObject) -> None:
        namespace, name = namespace_of(obj), name_of(obj)
        functions = self._functions.setdefault(namespace, {})
        if change == "DELETED":
            functions.pop(name, None)
        elif functions.get(name) != labels_of(obj):
            functions[name] = labels_of(obj)
        else:
            return  # a status write: the selection cannot change
        for trigger in self._triggers.values():
            if trigger.namespace == namespace:
                trigger.retarget(functions)

    def _replace_triggers(self, objects: list[RawObject]) -> None:
        present = {(namespace_of(obj), name_of(obj)) for obj in objects}
        for key in [key for key in self._triggers if key not in present]:
            self._retire(key)
        for obj in objects:
            self._on_trigger("ADDED", obj)

    def _on_trigger(self, change: str, obj: RawObject) -> None:
        key = (namespace_of(obj), name_of(obj))
        current = self._triggers.get(key)
        uid = str(metadata_of(obj).get("uid") or "")
        if current is not None and (change == "DELETED" or current.uid != uid):
            self._retire(key)
            current = None
        if change == "DELETED":
            return
        if current is None:
            current = self._triggers[key] = TriggerState(
                obj, metrics=self._metrics, on_change=self._status_due.set
            )
        if current.accept(obj):
            current.retarget(self._functions.get(key[0], {}))
            self._resubscribe.set()

    def _retire(self, key: Key) -> None:
        self._retired.append(self._triggers.pop(key))
        self._resubscribe.set()

    # -- running state: subscriptions ----------------------------------------------------

    def _on_connection(self, state: ConnectionState) -> None:
        self._metrics.connected.set(1 if state.connected else 0)
        for trigger in self._triggers.values():
            trigger.mark_dirty()
        self._resubscribe.set()

    async def _keep_subscribed(self) -> None:
        """Make subscriptions match the triggers, whenever either side changed."""
        while True:
            self._resubscribe.clear()
            while self._retired:
                await self._stop(self._retired.pop())
            for trigger in list(self._triggers.values()):
                await self._subscribe(trigger)
            await self._resubscribe.wait()

    async def _subscribe(self, trigger: TriggerState) -> None:
        connection = self._connection
        wanted = trigger.spec.topic if trigger.spec else None
        current = trigger.subscription.subject if trigger.subscription else None
        if wanted == current or connection is None or not connection.can_subscribe:
            return
        if trigger.subscription is not None:
            await trigger.subscription.unsubscribe()
            trigger.subscription = None
        trigger.mark_dirty()
        if trigger.spec is None:
            return
        if trigger.lane is None:
            trigger.lane = DeliveryLane(
                namespace=trigger.namespace,
                trigger=trigger.name,
                caller=self._invoker,
                observer=trigger,
                policy=self._policy,
            )
        try:
            trigger.subscription = await connection.subscribe(
                trigger.spec.topic,
                queue=trigger.spec.queue_group,
                handler=trigger.take,
                on_dropped=trigger.dropped,
            )
            trigger.subscribe_problem = ""
        except Unavailable as exc:
            trigger.subscribe_problem = str(exc)

    async def _stop(self, trigger: TriggerState) -> None:
        if trigger.subscription is not None:
            await trigger.subscription.unsubscribe()
        if trigger.lane is not None:
            await trigger.lane.close()
        if (trigger.namespace, trigger.name) not in self._triggers:  # not replaced by a new one
            trigger.forget_metrics()

    # -- status and events ---------------------------------------------------------------

    async def _write_statuses(self) -> None:
        """Write what changed, then rest: at most one status write per trigger per interval."""
        while True:
            self._status_due.clear()
            for trigger in list(self._triggers.values()):
                if trigger.dirty:
                    await self._write_status(trigger)
                await self._report_failures(trigger)
                if trigger.failures:  # held back by EVENT_INTERVAL_S: come back for them
                    self._status_due.set()
            await asyncio.sleep(self._status_interval_s)
            await self._status_due.wait()

    async def _write_status(self, trigger: TriggerState) -> None:
        trigger.dirty = False
        status = trigger.status
        ready = self._readiness(trigger)
        status["observedGeneration"] = int(metadata_of(trigger.obj).get("generation") or 1)
        status["functions"] = list(trigger.targets)
        status.update({outcome.value: count for outcome, count in trigger.counts.items()})
        set_condition(status, "Ready", ok=ready.ok, reason=ready.reason, message=ready.message)
        update = {"metadata": {**metadata_of(trigger.obj), "resourceVersion": None}}
        try:
            await self._store.update(NATS_TRIGGER, {**update, "status": status}, status_only=True)
        except NotFound:
            return  # deleted meanwhile
        except FuncmeshError as exc:
            logger.warning(
                "writing the status of %s/%s failed: %s", trigger.namespace, trigger.name, exc
            )
            trigger.mark_dirty()  # try again next round
            return
        if ready.reason != trigger.reported and ready.reason not in TRANSIENT_REASONS:
            trigger.reported = ready.reason
            await self._events.record(
                trigger.obj, warning=not ready.ok, reason=ready.reason, message=ready.message
            )

    async def _report_failures(self, trigger: TriggerState) -> None:
        now_s = time.monotonic()
        if not trigger.failures or now_s - trigger.last_event_s < EVENT_INTERVAL_S:
            return
        trigger.last_event_s = now_s
        failures, trigger.failures = trigger.failures, {}
        for function, (count, detail) in sorted(failures.items()):
            message = f"dropped {count} message(s) for function {function}: {detail}"
            await self._events.record(
                trigger.obj, warning=True, reason="DeliveryFailed", message=message
            )

    def _readiness(self, trigger: TriggerState) -> Readiness:
        spec, connection = trigger.spec, self._connection
        if spec is None:
            return Readiness(ok=False, reason="Invalid", message=trigger.problem)
        if connection is None:
            return Readiness(ok=False, reason="NoNATSServer", message=NO_SERVER_MESSAGE)
        if connection.state.first_attempt:
            message = f"connecting to the NATS server at {connection.address}"
            return Readiness(ok=False, reason="Connecting", message=message)
        if not connection.state.connected:
            message = (
                f"not connected to the NATS server at {connection.address} "
                f"({connection.state.problem}); reconnecting"
            )
            return Readiness(ok=False, reason="NATSDisconnected", message=message)
        if trigger.subscription is None:
            message = trigger.subscribe_problem or f"subscribing to {spec.topic}"
            return Readiness(ok=False, reason="Subscribing", message=message)
        if not trigger.targets:
            message = (
                f'no function in namespace "{spec.namespace}" matches the selector '
                f"{selector_text(spec.selector)}; messages on {spec.topic} are dropped until "
                "one does"
            )
            return Readiness(ok=False, reason="NoFunctions", message=message)
        count = len(trigger.targets)
        message = f"delivering messages on {spec.topic} to {count} function{'s' * (count != 1)}"
        return Readiness(ok=True, reason="Subscribed", message=message)


async def _supervised(what: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run ``loop`` for the controller's lifetime: a bug in it is logged, and it starts again
    (each loop is level-triggered: starting over only re-does work)."""
    while True:
        try:
            await loop()
            return
        except Exception:
            logger.exception("NATS triggers: the %s loop failed; restarting it", what)
            await asyncio.sleep(RESTART_DELAY_S)
