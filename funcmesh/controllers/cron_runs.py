"""The runs of a CronJobTrigger: catch-up plans, the request each run sends, its status record.

Pure functions for the cron controller (controllers.cron), kept apart so the rules can be read
and tested on their own: which runs fire late and which are missed, Kubeless's cron headers,
and how ``status.lastRuns`` (newest first, the last HISTORY_LENGTH) records each run:

    status:
      observedGeneration: 2
      lastScheduleTime: "2024-05-03T11:31:53Z"    # the newest recorded run; never fired again
      nextScheduleTime: "2024-05-03T11:31:54Z"    # where the plan resumes after a restart
      lastSuccessfulTime: "2024-05-03T11:31:53Z"
      lastRuns:
      - {scheduleTime: ..., firedTime: "...53.000412Z", outcome: Succeeded, httpStatus: 200,
         durationMs: 7}
      - {scheduleTime: ..., outcome: Missed, missedRuns: 3, lastMissedTime: ..., message: ...}

Outcomes: Running (recorded; fired or about to), Succeeded (2xx), Failed (another status, or
the gateway could not be reached), Missed, Unknown (the daemon stopped before the answer came).
No I/O here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from funcmesh import __version__
from funcmesh.controllers.invoker import Answer
from funcmesh.model.objects import parse_rfc3339, rfc3339
from funcmesh.model.schedules import MAX_COUNTED_RUNS, Schedule
from funcmesh.model.triggers import CronJobTriggerSpec

HISTORY_LENGTH = 10
EVENT_NAMESPACE = "cronjobtrigger.kubeless.io"
JSON_MEDIA_TYPE = "application/json"
MAX_MESSAGE_CHARS = 300
LATE_NOTE_S = 1.0  # a run fired this much after its time says so in its Event

StatusChange = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    """What to do about runs whose time has passed, and when the next run is due."""

    next_due_s: float
    late_s: float | None = None  # the one run to fire now, late
    missed_count: int = 0  # runs before it, recorded Missed: how many, the first and the last
    missed_from_s: float | None = None
    missed_until_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    """The HTTP request of one run, as Kubeless's ``curl`` sent it."""

    method: str
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """How one run went."""

    succeeded: bool
    http_status: int | None = None  # None: the function was not reached
    message: str = ""


def first_due(
    spec: CronJobTriggerSpec, status: Mapping[str, Any], *, anchor_s: float, now_s: float
) -> float:
    """Where the plan of a trigger taken over resumes: its stored next run (runs due since
    then are caught up), the first run after its creation if it never ran, or the next run
    from now when its spec changed after the status was last written."""
    planned = status.get("nextScheduleTime")
    if status.get("observedGeneration") == spec.generation and isinstance(planned, str):
        return parse_rfc3339(planned)
    if "observedGeneration" not in status:
        return spec.schedule.next_after(anchor_s, anchor_s=anchor_s)
    return spec.schedule.next_after(now_s, anchor_s=anchor_s)


def plan_catch_up(
    schedule: Schedule, *, anchor_s: float, next_due_s: float, now_s: float
) -> RunPlan:
    """The runs due in ``[next_due_s, now_s]`` that nothing fired.

    A run fires late only if it is less than one period late, that is before the run after it
    is due: that holds for the most recent one alone. The others are recorded Missed.
    """
    if next_due_s > now_s:
        return RunPlan(next_due_s=next_due_s)
    following_s = schedule.next_after(now_s, anchor_s=anchor_s)
    latest_s = schedule.latest_until(now_s, anchor_s=anchor_s)
    if latest_s is None or latest_s < next_due_s:  # not a time of this schedule: plan afresh
        return RunPlan(next_due_s=following_s)
    count = schedule.count_due(next_due_s, latest_s, anchor_s=anchor_s)
    if count == 0:
        return RunPlan(next_due_s=following_s, late_s=latest_s)
    # Due times are at least one second apart: one second before the latest is past the others.
    return RunPlan(
        next_due_s=following_s,
        late_s=latest_s,
        missed_count=count,
        missed_from_s=next_due_s,
        missed_until_s=schedule.latest_until(latest_s - 1, anchor_s=anchor_s),
    )


def missed_message(spec: CronJobTriggerSpec, plan: RunPlan) -> str:
    """The Event message about the missed runs of ``plan``."""
    assert plan.missed_from_s is not None
    assert plan.late_s is not None
    schedule = f"schedule {spec.schedule.text!r}"
    late = f"the run of {rfc3339(plan.late_s)} fires late"
    if plan.missed_count == 1:
        missed = f"The run of {rfc3339(plan.missed_from_s)} ({schedule})"
        return f"{missed} was missed while nothing could fire it; {late}"
    until = rfc3339(plan.missed_until_s) if plan.missed_until_s is not None else "?"
    missed = f"{_run_count(plan.missed_count)} of {schedule}"
    period = f"from {rfc3339(plan.missed_from_s)} to {until}"
    return f"{missed} {period} were missed while nothing could fire them; {late}"


def _run_count(count: int) -> str:
    return f"{count} or more runs" if count == MAX_COUNTED_RUNS else f"{count} runs"


def record_run(due_s: float) -> StatusChange:
    """Record a run before it fires: from then on its time never fires again."""

    def change(status: dict[str, Any]) -> None:
        status["lastScheduleTime"] = rfc3339(due_s)
        _push(status, {"scheduleTime": rfc3339(due_s), "outcome": "Running"})

    return change


def record_catch_up(plan: RunPlan) -> StatusChange:
    """Record the missed runs of ``plan`` and its late run, before the late run fires."""
    assert plan.late_s is not None
    record_late = record_run(plan.late_s)

    def change(status: dict[str, Any]) -> None:
        if plan.missed_count:
            _push(status, _missed_entry(plan))
        record_late(status)

    return change


def _missed_entry(plan: RunPlan) -> dict[str, Any]:
    count = plan.missed_count
    counted = "1 run" if count == 1 else _run_count(count)
    entry: dict[str, Any] = {
        "scheduleTime": rfc3339(plan.missed_from_s),
        "outcome": "Missed",
        "missedRuns": count,
        "message": f"{counted} came due while nothing could fire them",
    }
    if plan.missed_until_s is not None and plan.missed_until_s != plan.missed_from_s:
        entry["lastMissedTime"] = rfc3339(plan.missed_until_s)
    return entry


def finish_run(due_s: float, fired_s: float, outcome: Outcome, duration_ms: int) -> StatusChange:
    """Complete the record of the run due at ``due_s`` with how it went."""

    def change(status: dict[str, Any]) -> None:
        scheduled = rfc3339(due_s)
        runs = status.get("lastRuns") or []
        for index, entry in enumerate(runs):
            if entry.get("scheduleTime") == scheduled and entry.get("outcome") == "Running":
                result = _result_fields(fired_s, outcome, duration_ms)
                runs[index] = {"scheduleTime": scheduled, **result}
                break
        if outcome.succeeded:
            status["lastSuccessfulTime"] = rfc3339(fired_s + duration_ms / 1000)

    return change


def _result_fields(fired_s: float, outcome: Outcome, duration_ms: int) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "firedTime": rfc3339_micro(fired_s),
        "outcome": "Succeeded" if outcome.succeeded else "Failed",
    }
    if outcome.http_status is not None:
        fields["httpStatus"] = outcome.http_status
    fields["durationMs"] = duration_ms
    if outcome.message:
        fields["message"] = outcome.message
    return fields


def mark_interrupted(status: dict[str, Any]) -> bool:
    """Runs still Running when the daemon stopped: nobody knows whether they reached the
    function, and they are never fired again. True if there were any."""
    interrupted = False
    for entry in status.get("lastRuns") or []:
        if entry.get("outcome") == "Running":
            entry["outcome"] = "Unknown"
            entry["message"] = "the daemon stopped before the function answered"
            interrupted = True
    return interrupted


def _push(status: dict[str, Any], entry: dict[str, Any]) -> None:
    status["lastRuns"] = [entry, *(status.get("lastRuns") or [])][:HISTORY_LENGTH]


def call_request(spec: CronJobTriggerSpec, due_s: float) -> CallRequest:
    """POST with the payload as compact JSON, or GET without a body when there is none."""
    headers = cron_headers(spec, due_s)
    if spec.payload is None:
        return CallRequest(method="GET", body=b"", headers=headers)
    body = json.dumps(spec.payload, separators=(",", ":"), ensure_ascii=False).encode()
    return CallRequest(method="POST", body=body, headers=headers)


def cron_headers(spec: CronJobTriggerSpec, due_s: float) -> dict[str, str]:
    """Kubeless's cron event headers; ``Event-Time`` is the scheduled second."""
    return {
        "Event-Id": event_id(spec, due_s),
        "Event-Time": datetime.fromtimestamp(due_s, UTC).strftime("%Y-%m-%d %H:%M:%S+00:00"),
        "Event-Namespace": EVENT_NAMESPACE,
        "Event-Type": JSON_MEDIA_TYPE,
        "Content-Type": JSON_MEDIA_TYPE,
        "User-Agent": f"funcmesh-cronjob-trigger/{__version__}",
    }


def event_id(spec: CronJobTriggerSpec, due_s: float) -> str:
    """One id per run, the same for the same trigger and time, so a function can tell runs
    apart (Kubeless used the UID of each run's pod)."""
    trigger = f"{spec.namespace}/{spec.name}/{spec.uid}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cronjobtrigger:{trigger}@{rfc3339(due_s)}"))


def outcome_of(answer: Answer) -> Outcome:
    """Succeeded for 2xx; otherwise Failed, with the gateway's reason when it gave one."""
    if answer.ok:
        return Outcome(succeeded=True, http_status=answer.status)
    return Outcome(succeeded=False, http_status=answer.status, message=_gateway_reason(answer))


def _gateway_reason(answer: Answer) -> str:
    """The ``error`` of the gateway's JSON failure body; a function's own body stays private."""
    content_type = answer.headers.get("content-type", "")
    if not content_type.startswith(JSON_MEDIA_TYPE):
        return ""
    try:
        document = json.loads(answer.body)
    except ValueError:
        return ""
    is_gateway_error = isinstance(document, dict) and set(document) <= {"error", "function"}
    error = document.get("error") if is_gateway_error else None
    return error[:MAX_MESSAGE_CHARS] if isinstance(error, str) else ""


def describe_outcome(
    spec: CronJobTriggerSpec, due_s: float, fired_s: float, outcome: Outcome, duration_ms: int
) -> str:
    """The Event message of one run."""
    answer = f"HTTP {outcome.http_status}" if outcome.http_status is not None else "no answer"
    text = f"run of {rfc3339(due_s)} called function {spec.function_name}: {answer}"
    text += f" in {duration_ms} ms"
    if fired_s - due_s >= LATE_NOTE_S:
        text += f", fired {fired_s - due_s:.1f} s late"
    return f"{text}: {outcome.message}" if outcome.message else text


def rfc3339_micro(moment_s: float) -> str:
    """``2024-05-03T11:31:53.004021Z``, as Kubernetes writes a MicroTime."""
    return datetime.fromtimestamp(moment_s, UTC).isoformat(timespec="microseconds")[:-6] + "Z"
