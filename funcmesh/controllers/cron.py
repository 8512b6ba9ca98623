"""The CronJobTrigger controller: calls functions on their schedules, each run exactly once.

Every CronJobTrigger gets a scheduler task that sleeps on the event loop's clock until a run is
due (no polling) and then calls the function through the Invoker with Kubeless's cron headers.
Exactly once, also across restarts: a run is written to the trigger's status (``lastScheduleTime``,
``lastRuns``) before it fires, and a recorded time never fires again. Runs that came due while
nothing could fire them (the daemon was down, the machine slept) are caught up on start: the most
recent one fires once, late, because it is less than one period late (the run after it is not
due yet); the older ones are more than one period late and are recorded ``Missed``. Outcomes go
into ``lastRuns`` and Events. Deleting a Function deletes the CronJobTriggers that name it, as
Kubeless does. The status is written by this controller only, and from one job's tasks under one
lock. This module neither parses schedules (model.schedules) nor speaks HTTP (the Invoker).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from funcmesh.controllers.cron_clock import Clock, SystemClock
from funcmesh.controllers.cron_runs import (
    Outcome,
    RunPlan,
    StatusChange,
    call_request,
    describe_outcome,
    finish_run,
    first_due,
    mark_interrupted,
    missed_message,
    outcome_of,
    plan_catch_up,
    record_catch_up,
    record_run,
)
from funcmesh.controllers.events import EventRecorder
from funcmesh.controllers.invoker import FunctionCaller
from funcmesh.errors import FuncmeshError, Invalid, NotFound, Unavailable
from funcmesh.model.kinds import CRONJOB_TRIGGER, FUNCTION, ResourceType
from funcmesh.model.objects import (
    RawObject,
    metadata_of,
    name_of,
    namespace_of,
    rfc3339,
)
from funcmesh.model.triggers import CronJobTriggerSpec, parse_cronjob_trigger
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

RECORD_LEAD_S = 0.25  # a run is recorded this long before it is due: the write never delays it

Key = tuple[str, str]


@dataclass(slots=True, kw_only=True)
class _Job:
    """One trigger as its scheduler sees it; only the scheduler changes ``spec`` and plans."""

    spec: CronJobTriggerSpec
    about: RawObject  # the stored trigger, for Events
    status: dict[str, Any]
    next_due_s: float
    anchor_s: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    pending: RawObject | None = None  # a newer generation for the scheduler to take over
    deleted: bool = False
    unsaved: bool = False  # the status changed on taking the trigger over
    task: asyncio.Task[None] | None = None


class CronTriggerController:
    """Schedules every CronJobTrigger and deletes those whose Function goes away."""

    def __init__(
        self,
        *,
        store: Store,
        caller: FunctionCaller,
        clock: Clock | None = None,
        record_lead_s: float = RECORD_LEAD_S,
    ) -> None:
        self._store = store
        self._caller = caller
        self._clock = clock or SystemClock()
        self._lead_s = record_lead_s
        self._events = EventRecorder(store, component="cronjob-trigger-controller")
        self._jobs: dict[Key, _Job] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Take over every stored trigger (catching up on missed runs), then follow changes."""
        triggers, triggers_rv = await self._store.list_objects(CRONJOB_TRIGGER)
        _, functions_rv = await self._store.list_objects(FUNCTION)
        for obj in triggers:
            if await self._function_exists(obj):
                self._adopt(obj, restarted=True)
        self._watchers = [
            asyncio.create_task(
                _guarded(
                    self._follow(CRONJOB_TRIGGER, triggers_rv, self._on_trigger_change),
                    "following cronjob triggers",
                ),
                name="cron-watch-triggers",
            ),
            asyncio.create_task(
                _guarded(
                    self._follow(FUNCTION, functions_rv, self._on_function_change),
                    "following function deletions for cronjob triggers",
                ),
                name="cron-watch-functions",
            ),
        ]

    async def close(self, drain_s: float = 10.0) -> None:
        """Stop scheduling; recorded runs still fire and are given ``drain_s`` to answer."""
        schedulers = [job.task for job in self._jobs.values() if job.task is not None]
        await _cancel_all([*self._watchers, *schedulers])
        self._jobs.clear()
        if self._runs:
            await asyncio.wait(set(self._runs), timeout=drain_s)
        await _cancel_all(list(self._runs))

    # -- following the store

    async def _follow(
        self, rt: ResourceType, since: int, on_change: Callable[[Change], Awaitable[None]]
    ) -> None:
        """Hand each change of ``rt`` to ``on_change``. A watch that ends while the controller
        runs fell behind the store: list everything again and go on from there."""
        while True:
            async for change in self._store.watch(rt, None, since):
                since = change.resource_version
                await on_change(change)
            logger.warning("the watch of %s ended early; listing them again", rt.plural)
            since = await self._resync()

    async def _on_trigger_change(self, change: Change) -> None:
        if change.type == "DELETED":
            self._drop(_key(change.object))
        else:
            await self._offer(change.object)

    async def _on_function_change(self, change: Change) -> None:
        if change.type == "DELETED":
            await self._delete_triggers_of(namespace_of(change.object), name_of(change.object))

    async def _offer(self, obj: RawObject) -> None:
        """A new trigger is scheduled; a new generation goes to the trigger's scheduler."""
        job = self._jobs.get(_key(obj))
        if job is None:
            if await self._function_exists(obj):
                self._adopt(obj, restarted=False)
        elif _generation(obj) != job.spec.generation:
            job.pending = obj
            job.changed.set()

    async def _resync(self) -> int:
        triggers, resource_version = await self._store.list_objects(CRONJOB_TRIGGER)
        for gone in set(self._jobs) - {_key(obj) for obj in triggers}:
            self._drop(gone)
        for obj in triggers:
            await self._offer(obj)
        return resource_version

    async def _function_exists(self, trigger: RawObject) -> bool:
        """Whether the trigger's Function exists; a trigger left without one is deleted (its
        Function went away while the daemon was down, or while the trigger was admitted)."""
        namespace, function = namespace_of(trigger), str(_spec(trigger).get("function-name"))
        if await self._store.exists(FUNCTION, namespace, function):
            return True
        await self._delete_trigger(namespace, name_of(trigger), function)
        return False

    async def _delete_triggers_of(self, namespace: str, function: str) -> None:
        triggers, _ = await self._store.list_objects(CRONJOB_TRIGGER, namespace)
        for obj in triggers:
            if _spec(obj).get("function-name") == function:
                await self._delete_trigger(namespace, name_of(obj), function)

    async def _delete_trigger(self, namespace: str, name: str, function: str) -> None:
        logger.info(
            "deleting cronjob trigger %s/%s: function %s is gone", namespace, name, function
        )
        with contextlib.suppress(NotFound):
            await self._store.delete(CRONJOB_TRIGGER, namespace, name)

    def _adopt(self, obj: RawObject, *, restarted: bool) -> None:
        try:
            spec = parse_cronjob_trigger(obj)
        except Invalid as exc:  # stored before a rule existed, or its time zone went away
            logger.warning("cronjob trigger %s/%s is not scheduled: %s", *_key(obj), exc)
            return
        status = copy.deepcopy(obj.get("status") or {})
        interrupted = restarted and mark_interrupted(status)
        now_s = self._clock.now_s()
        anchor_s = spec.created_s if spec.created_s is not None else now_s
        job = _Job(
            spec=spec,
            about=obj,
            status=status,
            next_due_s=first_due(spec, status, anchor_s=anchor_s, now_s=now_s),
            anchor_s=anchor_s,
            unsaved=interrupted,
        )
        job.task = asyncio.create_task(
            self._schedule(job), name=f"cron-{spec.namespace}-{spec.name}"
        )
        self._jobs[(spec.namespace, spec.name)] = job
        logger.info(
            "scheduling cronjob trigger %s/%s (%s): next run at %s",
            spec.namespace,
            spec.name,
            spec.schedule.text,
            rfc3339(job.next_due_s),
        )

    def _drop(self, key: Key) -> None:
        job = self._jobs.pop(key, None)
        if job is not None:
            job.deleted = True  # runs recorded but not yet fired stay unfired
            if job.task is not None:
                job.task.cancel()

    # -- scheduling one trigger

    async def _schedule(self, job: _Job) -> None:
        try:
            if job.unsaved:
                await self._write_status(job, _unchanged)
            while True:
                await self._take_change(job)
                self._catch_up(job)
                due_s = job.next_due_s
                if not await self._sleep_unless_changed(job, due_s - self._lead_s):
                    continue
                if self._clock.now_s() > due_s:
                    continue  # woke up past the due time (the machine slept): catch up
                job.next_due_s = job.spec.schedule.next_after(due_s, anchor_s=job.anchor_s)
                self._spawn(self._run(job, job.spec, due_s, record_run(due_s)))
        except Exception:  # the task boundary: a bug stops this trigger only, loudly
            logger.exception("scheduling cronjob trigger %s/%s failed", *_key(job.about))

    async def _take_change(self, job: _Job) -> None:
        """Take over a new generation: from now on, with no catch-up for the old schedule."""
        job.changed.clear()
        obj, job.pending = job.pending, None
        if obj is None:
            return
        try:
            job.spec = parse_cronjob_trigger(obj)
        except Invalid as exc:  # only a laxer older version could have stored it
            logger.warning("cronjob trigger %s/%s keeps its schedule: %s", *_key(obj), exc)
            job.spec = dataclasses.replace(job.spec, generation=_generation(obj))
            return
        job.about = obj
        now_s = self._clock.now_s()
        job.next_due_s = job.spec.schedule.next_after(now_s, anchor_s=job.anchor_s)
        await self._write_status(job, _unchanged)

    def _catch_up(self, job: _Job) -> None:
        plan = plan_catch_up(
            job.spec.schedule,
            anchor_s=job.anchor_s,
            next_due_s=job.next_due_s,
            now_s=self._clock.now_s(),
        )
        job.next_due_s = plan.next_due_s
        if plan.late_s is not None:
            self._spawn(self._run(job, job.spec, plan.late_s, record_catch_up(plan), plan))

    async def _sleep_unless_changed(self, job: _Job, moment_s: float) -> bool:
        """Sleep until ``moment_s``; False as soon as the trigger changes instead."""
        sleeping = asyncio.ensure_future(self._clock.sleep_until(moment_s))
        changed = asyncio.ensure_future(job.changed.wait())
        try:
            await asyncio.wait((sleeping, changed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all([sleeping, changed])
        return not job.changed.is_set()

    # -- one run

    async def _run(
        self,
        job: _Job,
        spec: CronJobTriggerSpec,
        due_s: float,
        record: StatusChange,
        catch_up: RunPlan | None = None,
    ) -> None:
        """Record the run, then fire it at its second. A task of its own, which the scheduler
        never cancels, so a recorded run always fires (unless its trigger is deleted)."""
        if not await self._write_status(job, record):
            return  # not recorded, so not fired: a run fires at most once
        if catch_up is not None and catch_up.missed_count:
            message = missed_message(spec, catch_up)
            await self._events.record(job.about, warning=True, reason="Missed", message=message)
        await self._clock.sleep_until(due_s)
        if not job.deleted:
            await self._fire(job, spec, due_s)

    async def _fire(self, job: _Job, spec: CronJobTriggerSpec, due_s: float) -> None:
        fired_s = self._clock.now_s()
        started_s = time.monotonic()
        outcome = await self._call(spec, due_s)
        duration_ms = round((time.monotonic() - started_s) * 1000)
        if await self._write_status(job, finish_run(due_s, fired_s, outcome, duration_ms)):
            message = describe_outcome(spec, due_s, fired_s, outcome, duration_ms)
            reason = "Succeeded" if outcome.succeeded else "Failed"
            await self._events.record(
                job.about, warning=not outcome.succeeded, reason=reason, message=message
            )

    async def _call(self, spec: CronJobTriggerSpec, due_s: float) -> Outcome:
        request = call_request(spec, due_s)
        try:
            answer = await self._caller.call(
                spec.namespace,
                spec.function_name,
                method=request.method,
                body=request.body,
                headers=request.headers,
            )
        except Unavailable as exc:
            return Outcome(succeeded=False, message=str(exc))
        except Exception as exc:  # the run's boundary: a bug is recorded, not left Running
            logger.exception("calling %s/%s failed", spec.namespace, spec.function_name)
            return Outcome(succeeded=False, message=f"internal error: {type(exc).__name__}")
        return outcome_of(answer)

    def _spawn(self, run: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(_guarded(run, "a cronjob trigger run"))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    async def _write_status(self, job: _Job, change: StatusChange) -> bool:
        """Apply ``change`` to the status and store it (with the plan); False if not stored."""
        async with job.lock:
            status = copy.deepcopy(job.status)
            change(status)
            status["observedGeneration"] = job.spec.generation
            status["nextScheduleTime"] = rfc3339(job.next_due_s)
            update = {"metadata": {"namespace": job.spec.namespace, "name": job.spec.name}}
            try:
                await self._store.update(
                    CRONJOB_TRIGGER, {**update, "status": status}, status_only=True
                )
            except NotFound:
                job.deleted = True
                return False
            except FuncmeshError as exc:
                logger.error("recording a run of %s/%s failed: %s", *_key(job.about), exc)
                return False
            job.status = status
            return True


def _unchanged(status: dict[str, Any]) -> None:
    """A status write that only stores the plan (``observedGeneration``, next run)."""


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, dict) else {}


def _generation(obj: RawObject) -> int:
    return int(metadata_of(obj).get("generation") or 1)


def _key(obj: RawObject) -> Key:
    return namespace_of(obj), name_of(obj)


async def _guarded(work: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await work
    except Exception:  # a task boundary: a bug is logged, the daemon goes on
        logger.exception("%s failed", what)


async def _cancel_all(tasks: list[asyncio.Task[Any]] | list[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
