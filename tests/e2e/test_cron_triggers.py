"""Cron triggers as a user runs them: the CLI against a real ``funcmesh up``, real functions
that note each call they get, and a daemon killed and started again."""

from __future__ import annotations

import itertools
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, api_client, start_daemon, work_dir_for

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
HELLO = "def handler(event, context):\n    return 'hello'\n"
# Appends each call it gets, headers and all, to a file the test reads.
RECORDER = """\
import json, time

def handler(event, context):
    request = event["extensions"]["request"]
    note = {{"at": time.time(), "method": request.method, "headers": dict(request.headers),
             "data": event["data"]}}
    with open({path!r}, "a") as calls:
        calls.write(json.dumps(note) + "\\n")
    return "noted"
"""
LIST_HEADERS = ["NAME", "NAMESPACE", "SCHEDULE", "FUNCTION", "NAME", "LAST", "RUN", "RESULT"]


def deploy(daemon: Daemon, tmp_path: Path, name: str, code: str, *flags: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return daemon.run(
        "function", "deploy", name, "--runtime", RUNTIME, "--handler", f"{name}.handler",
        "--from-file", str(path), *flags,
    ).stdout  # fmt: skip


def calls_file(daemon: Daemon) -> Path:
    """A file the function (running as nobody under a root daemon) may append to."""
    folder = Path(tempfile.mkdtemp(prefix="calls-", dir=work_dir_for(daemon.home)))
    folder.chmod(0o777)
    return folder / "calls.jsonl"


def calls_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def scheduled_s(call: dict[str, Any]) -> float:
    return datetime.fromisoformat(call["headers"]["Event-Time"]).timestamp()


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def trigger_rows(daemon: Daemon) -> list[list[str]]:
    result = daemon.run("trigger", "cronjob", "ls", check=False)
    if result.returncode != 0 or not result.stdout:
        return []
    header, *rows = result.stdout.splitlines()
    assert header.split() == LIST_HEADERS
    return [row.split() for row in rows]


def trigger_spec(daemon: Daemon, name: str) -> dict[str, Any]:
    obj = json.loads(daemon.run("get", "cronjobtriggers", name, "-o", "json").stdout)
    spec: dict[str, Any] = obj["spec"]
    return spec


@pytest.fixture(scope="module")
def functions(daemon: Daemon, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Functions that triggers may name; never called, so not waited for."""
    names = ["hello", "bye"]
    for name in names:
        deploy(daemon, tmp_path_factory.mktemp("code"), name, HELLO, "--no-wait")
    return names


def stored_triggers(daemon: Daemon) -> list[str]:
    with api_client(daemon) as client:
        answer = client.get("/apis/kubeless.io/v1beta1/namespaces/default/cronjobtriggers")
    answer.raise_for_status()
    return [item["metadata"]["name"] for item in answer.json()["items"]]


@pytest.mark.usefixtures("functions")
def test_create_list_update_delete(daemon: Daemon, tmp_path: Path) -> None:
    created = daemon.run(
        "trigger", "cronjob", "create", "nightly", "--function", "hello",
        "--schedule", "0 3 * * *", "--payload", '{"report": "daily"}',
    )  # fmt: skip
    assert created.stdout == "Cronjob trigger nightly created in namespace default successfully!\n"
    assert ["nightly", "default", "0", "3", "*", "*", "*", "hello", "never", "-"] in trigger_rows(
        daemon
    )

    daemon.run("trigger", "cronjob", "update", "nightly", "--schedule", "@daily")
    assert trigger_spec(daemon, "nightly") == {
        "function-name": "hello",
        "schedule": "@daily",
        "payload": {"report": "daily"},
    }

    payload = tmp_path / "payload.yaml"
    payload.write_text("report: weekly\nrecipients:\n  - ops\n")
    updated = daemon.run(
        "trigger", "cronjob", "update", "nightly", "--function", "bye",
        "--payload-from-file", str(payload),
    )  # fmt: skip
    assert updated.stdout == "Cronjob trigger nightly updated in namespace default successfully!\n"
    assert trigger_spec(daemon, "nightly") == {
        "function-name": "bye",
        "schedule": "@daily",
        "payload": {"report": "weekly", "recipients": ["ops"]},
    }

    deleted = daemon.run("trigger", "cronjob", "delete", "nightly")
    assert (
        deleted.stdout == "Cronjob trigger nightly deleted from namespace default successfully!\n"
    )
    empty = daemon.run("trigger", "cronjob", "list")
    assert empty.stderr == "No cronjob triggers found in default namespace.\n"


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (
            ["--function", "hello", "--schedule", "*/5 * * *"],
            'error: CronJobTrigger "bad" is invalid: spec.schedule: schedule "*/5 * * *" has 4 '
            "fields; cron needs 5",
        ),
        (
            ["--function", "hello", "--schedule", "@every 100ms"],
            "@every needs a duration of whole seconds, at least 1s",
        ),
        (
            ["--function", "nosuch", "--schedule", "@hourly"],
            'error: CronJobTrigger "bad" is invalid: spec.function-name: function "nosuch" not '
            'found in namespace "default"',
        ),
        (
            ["--function", "hello", "--schedule", "@hourly", "--payload", "[1]"],
            "error: --payload: the payload must be a JSON object",
        ),
    ],
)
@pytest.mark.usefixtures("functions")
def test_bad_triggers_are_refused_and_nothing_is_created(
    daemon: Daemon, flags: list[str], error: str
) -> None:
    refused = daemon.run("trigger", "cronjob", "create", "bad", *flags, check=False)

    assert refused.returncode == 1
    assert error in refused.stderr
    assert "bad" not in stored_triggers(daemon)


def test_runs_reach_the_function_with_kubeless_headers(daemon: Daemon, tmp_path: Path) -> None:
    path = calls_file(daemon)
    deployed = deploy(
        daemon, tmp_path, "ticker", RECORDER.format(path=str(path)), "--schedule", "@every 1s"
    )
    assert "Cronjob trigger ticker created in namespace default successfully!" in deployed

    wait_until(lambda: len(calls_in(path)) >= 3, "three runs reached the function")

    calls = calls_in(path)[:3]
    times = [scheduled_s(call) for call in calls]
    assert [later - earlier for earlier, later in itertools.pairwise(times)] == [1, 1]
    for call in calls:
        headers = {name.lower(): value for name, value in call["headers"].items()}
        assert call["method"] == "GET"  # no payload
        assert call["data"] is None
        assert headers["event-namespace"] == "cronjobtrigger.kubeless.io"
        assert headers["event-type"] == headers["content-type"] == "application/json"
        assert scheduled_s(call) <= call["at"] < scheduled_s(call) + 1
    assert len({call["headers"]["Event-Id"] for call in calls}) == 3
    [row] = [row for row in trigger_rows(daemon) if row[0] == "ticker"]
    assert row[1:5] == ["default", "@every", "1s", "ticker"]
    assert row[-2:] == ["Succeeded", "(200)"]

    daemon.run("function", "delete", "ticker")
    wait_until(lambda: "ticker" not in [r[0] for r in trigger_rows(daemon)], "the trigger goes")


def test_a_killed_daemon_fires_no_run_twice_and_accounts_for_every_run(tmp_path: Path) -> None:
    first = start_daemon(tmp_path / "home", log_path=tmp_path / "first.log")
    try:
        path = calls_file(first)
        deploy(first, tmp_path, "ticker", RECORDER.format(path=str(path)), "--no-wait")
        first.run(
            "trigger", "cronjob", "create", "tick", "--function", "ticker",
            "--schedule", "@every 1s", "--payload", '{"n": 1}',
        )  # fmt: skip
        wait_until(lambda: len(calls_in(path)) >= 1, "a run reached the function")
    finally:
        first.stop(signal.SIGKILL)
    killed_s = time.time()
    second = start_daemon(tmp_path / "home", log_path=tmp_path / "second.log")
    try:
        wait_until(
            lambda: max(map(scheduled_s, calls_in(path))) >= killed_s + 1,
            "runs reach the function after the restart",
        )
        with api_client(second) as client:
            answer = client.get("/apis/kubeless.io/v1beta1/namespaces/default/cronjobtriggers/tick")
        status = answer.json()["status"]
    finally:
        assert second.stop() == 0

    called = [scheduled_s(call) for call in calls_in(path)]
    assert len(called) == len(set(called)), "a run fired twice"
    assert all(call["data"] == {"n": 1} for call in calls_in(path))
    accounted = set(called)
    for run in status["lastRuns"]:
        start_s = datetime.fromisoformat(run["scheduleTime"]).timestamp()
        if run["outcome"] == "Missed":
            accounted |= {start_s + index for index in range(run["missedRuns"])}
        elif run["outcome"] == "Unknown":
            accounted.add(start_s)
    every_second = set(range(int(min(called)), int(max(called)) + 1))
    assert every_second <= accounted, "a run was lost without a trace"
