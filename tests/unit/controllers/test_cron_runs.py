"""The rules of cron runs: which missed runs fire late, what each run sends, how it is recorded.

Times are given to the functions (a fake clock): ``T0`` is the trigger's creation.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from funcmesh.controllers.cron_runs import (
    HISTORY_LENGTH,
    Outcome,
    RunPlan,
    call_request,
    cron_headers,
    describe_outcome,
    finish_run,
    first_due,
    mark_interrupted,
    missed_message,
    outcome_of,
    plan_catch_up,
    record_catch_up,
    record_run,
    rfc3339_micro,
)
from funcmesh.controllers.invoker import Answer
from funcmesh.model.schedules import parse_schedule
from funcmesh.model.triggers import CronJobTriggerSpec

T0 = 1704103200.0  # 2024-01-01T10:00:00Z
EVERY_10S = parse_schedule("@every 10s")
HOURLY = parse_schedule("@hourly")


def trigger(payload: dict[str, Any] | None = None, **changes: Any) -> CronJobTriggerSpec:
    fields: dict[str, Any] = {
        "namespace": "default",
        "name": "tick",
        "uid": "1f0c1d7e-0000-4000-8000-000000000000",
        "generation": 1,
        "created_s": T0,
        "function_name": "hello",
        "schedule": EVERY_10S,
        "payload": payload,
    }
    return CronJobTriggerSpec(**{**fields, **changes})


@pytest.mark.parametrize(
    ("schedule", "next_due", "now", "plan"),
    [
        # nothing came due yet
        (EVERY_10S, T0 + 10, T0 + 9.9, RunPlan(next_due_s=T0 + 10)),
        # one run missed, less than one period late: fires late, nothing is Missed
        (EVERY_10S, T0 + 10, T0 + 10, RunPlan(next_due_s=T0 + 20, late_s=T0 + 10)),
        (EVERY_10S, T0 + 10, T0 + 19.9, RunPlan(next_due_s=T0 + 20, late_s=T0 + 10)),
        # two runs missed: the older is more than one period late
        (
            EVERY_10S, T0 + 10, T0 + 20.5,
            RunPlan(next_due_s=T0 + 30, late_s=T0 + 20, missed_count=1,
                    missed_from_s=T0 + 10, missed_until_s=T0 + 10),
        ),
        # an hour down: one late run, 359 missed
        (
            EVERY_10S, T0 + 10, T0 + 3605,
            RunPlan(next_due_s=T0 + 3610, late_s=T0 + 3600, missed_count=359,
                    missed_from_s=T0 + 10, missed_until_s=T0 + 3590),
        ),
        # hourly, down from 10:59 to 13:30: 11:00 and 12:00 missed, 13:00 fires
        (
            HOURLY, T0 + 3600, T0 + 3.5 * 3600,
            RunPlan(next_due_s=T0 + 4 * 3600, late_s=T0 + 3 * 3600, missed_count=2,
                    missed_from_s=T0 + 3600, missed_until_s=T0 + 2 * 3600),
        ),
        # a stored plan that is not a time of this schedule starts afresh, firing nothing
        (EVERY_10S, T0 + 15, T0 + 15.5, RunPlan(next_due_s=T0 + 20)),
    ],
)  # fmt: skip
def test_missed_runs_decision_table(
    schedule: Any, next_due: float, now: float, plan: RunPlan
) -> None:
    assert plan_catch_up(schedule, anchor_s=T0, next_due_s=next_due, now_s=now) == plan


@pytest.mark.parametrize(
    ("status", "now", "expected"),
    [
        # never ran: from the creation on, so runs missed since then are caught up
        ({}, T0 + 35, T0 + 10),
        # the stored plan of the same generation: runs due since then are caught up
        ({"observedGeneration": 1, "nextScheduleTime": "2024-01-01T10:00:30Z"}, T0 + 95, T0 + 30),
        # the spec changed after the status was written: from now on, no catch-up
        ({"observedGeneration": 0, "nextScheduleTime": "2024-01-01T10:00:30Z"}, T0 + 95, T0 + 100),
    ],
)
def test_where_a_plan_resumes(status: dict[str, Any], now: float, expected: float) -> None:
    assert first_due(trigger(), status, anchor_s=T0, now_s=now) == expected


def test_a_run_is_recorded_before_it_fires_and_completed_after() -> None:
    status: dict[str, Any] = {}
    record_run(T0 + 10)(status)

    assert status == {
        "lastScheduleTime": "2024-01-01T10:00:10Z",
        "lastRuns": [{"scheduleTime": "2024-01-01T10:00:10Z", "outcome": "Running"}],
    }

    outcome = Outcome(succeeded=True, http_status=200)
    finish_run(T0 + 10, T0 + 10.004, outcome, 7)(status)

    assert status["lastRuns"] == [
        {
            "scheduleTime": "2024-01-01T10:00:10Z",
            "firedTime": "2024-01-01T10:00:10.004000Z",
            "outcome": "Succeeded",
            "httpStatus": 200,
            "durationMs": 7,
        }
    ]
    assert status["lastSuccessfulTime"] == "2024-01-01T10:00:10Z"


def test_a_failure_keeps_the_last_success_and_says_why() -> None:
    status: dict[str, Any] = {"lastSuccessfulTime": "2024-01-01T10:00:00Z"}
    record_run(T0 + 10)(status)
    failed = Outcome(succeeded=False, message="calling function default/hello failed: refused")
    finish_run(T0 + 10, T0 + 10.001, failed, 1)(status)

    assert status["lastSuccessfulTime"] == "2024-01-01T10:00:00Z"
    assert status["lastRuns"][0] == {
        "scheduleTime": "2024-01-01T10:00:10Z",
        "firedTime": "2024-01-01T10:00:10.001000Z",
        "outcome": "Failed",
        "durationMs": 1,
        "message": "calling function default/hello failed: refused",
    }


def test_only_the_newest_runs_are_kept_newest_first() -> None:
    status: dict[str, Any] = {}
    for index in range(HISTORY_LENGTH + 5):
        record_run(T0 + 10 * (index + 1))(status)

    times = [run["scheduleTime"] for run in status["lastRuns"]]
    assert len(times) == HISTORY_LENGTH
    assert times[0] == "2024-01-01T10:02:30Z"
    assert times == sorted(times, reverse=True)


def test_a_catch_up_records_the_missed_runs_and_the_late_one() -> None:
    plan = plan_catch_up(EVERY_10S, anchor_s=T0, next_due_s=T0 + 10, now_s=T0 + 45)
    status: dict[str, Any] = {}
    record_catch_up(plan)(status)

    assert status["lastScheduleTime"] == "2024-01-01T10:00:40Z"
    assert status["lastRuns"] == [
        {"scheduleTime": "2024-01-01T10:00:40Z", "outcome": "Running"},
        {
            "scheduleTime": "2024-01-01T10:00:10Z",
            "outcome": "Missed",
            "missedRuns": 3,
            "message": "3 runs came due while nothing could fire them",
            "lastMissedTime": "2024-01-01T10:00:30Z",
        },
    ]
    assert missed_message(trigger(), plan) == (
        "3 runs of schedule '@every 10s' from 2024-01-01T10:00:10Z to 2024-01-01T10:00:30Z "
        "were missed while nothing could fire them; the run of 2024-01-01T10:00:40Z fires late"
    )


def test_runs_in_flight_when_the_daemon_stopped_become_unknown() -> None:
    status: dict[str, Any] = {}
    record_run(T0 + 10)(status)
    finish_run(T0 + 10, T0 + 10, Outcome(succeeded=True, http_status=200), 3)(status)
    record_run(T0 + 20)(status)

    assert mark_interrupted(status)

    assert not mark_interrupted(status)
    assert [run["outcome"] for run in status["lastRuns"]] == ["Unknown", "Succeeded"]
    assert "stopped before the function answered" in status["lastRuns"][0]["message"]


def test_kubeless_cron_headers_name_the_scheduled_second() -> None:
    headers = cron_headers(trigger(), T0 + 10)

    assert headers["Event-Time"] == "2024-01-01 10:00:10+00:00"  # date --rfc-3339=seconds --utc
    assert headers["Event-Namespace"] == "cronjobtrigger.kubeless.io"
    assert headers["Event-Type"] == "application/json"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("funcmesh-cronjob-trigger/")


def test_each_run_has_its_own_event_id_and_a_run_keeps_it() -> None:
    first, again = cron_headers(trigger(), T0 + 10), cron_headers(trigger(), T0 + 10)
    second = cron_headers(trigger(), T0 + 20)
    other = cron_headers(trigger(uid="2f0c1d7e-0000-4000-8000-000000000000"), T0 + 10)

    assert first["Event-Id"] == again["Event-Id"]
    assert len({first["Event-Id"], second["Event-Id"], other["Event-Id"]}) == 3


def test_a_payload_is_posted_as_compact_json_and_no_payload_is_a_get() -> None:
    posted = call_request(trigger(payload={"city": "Zürich", "n": [1, 2]}), T0 + 10)
    assert posted.method == "POST"
    assert posted.body == '{"city":"Zürich","n":[1,2]}'.encode()
    assert json.loads(posted.body) == {"city": "Zürich", "n": [1, 2]}

    empty = call_request(trigger(payload={}), T0 + 10)
    assert (empty.method, empty.body) == ("POST", b"{}")

    got = call_request(trigger(), T0 + 10)
    assert (got.method, got.body) == ("GET", b"")


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Answer(status=200, body=b"ok", headers={}), Outcome(succeeded=True, http_status=200)),
        (Answer(status=204, body=b"", headers={}), Outcome(succeeded=True, http_status=204)),
        (
            Answer(
                status=504,
                body=b'{"error": "function default/hello timed out after 3s", "function": "x"}',
                headers={"content-type": "application/json"},
            ),
            Outcome(
                succeeded=False,
                http_status=504,
                message="function default/hello timed out after 3s",
            ),
        ),
        # the function's own answer stays out of the status
        (
            Answer(
                status=500,
                body=b'{"error": "db password wrong", "user": "x"}',
                headers={"content-type": "application/json"},
            ),
            Outcome(succeeded=False, http_status=500),
        ),
        (
            Answer(status=500, body=b"Traceback ...", headers={"content-type": "text/plain"}),
            Outcome(succeeded=False, http_status=500),
        ),
    ],
)
def test_outcomes(answer: Answer, outcome: Outcome) -> None:
    assert outcome_of(answer) == outcome


def test_event_messages_say_what_happened() -> None:
    ok = Outcome(succeeded=True, http_status=200)
    assert describe_outcome(trigger(), T0 + 10, T0 + 10.003, ok, 7) == (
        "run of 2024-01-01T10:00:10Z called function hello: HTTP 200 in 7 ms"
    )
    late = Outcome(succeeded=False, message="the gateway is down")
    assert describe_outcome(trigger(), T0 + 10, T0 + 12.5, late, 1) == (
        "run of 2024-01-01T10:00:10Z called function hello: no answer in 1 ms, fired 2.5 s late: "
        "the gateway is down"
    )


def test_fired_times_are_micro_times() -> None:
    assert rfc3339_micro(T0 + 0.0456) == "2024-01-01T10:00:00.045600Z"


def test_one_missed_run_is_told_as_one() -> None:
    plan = plan_catch_up(EVERY_10S, anchor_s=T0, next_due_s=T0 + 10, now_s=T0 + 25)

    assert missed_message(trigger(), plan) == (
        "The run of 2024-01-01T10:00:10Z (schedule '@every 10s') was missed while nothing could "
        "fire it; the run of 2024-01-01T10:00:20Z fires late"
    )
