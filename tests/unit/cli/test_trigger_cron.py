"""The pure parts of ``funcmesh trigger cronjob``: payloads, updates and the list columns.
The commands against a real daemon: tests/e2e/test_cron_triggers.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from funcmesh.cli.main import cli
from funcmesh.cli.trigger_cron import (
    apply_changes,
    build_cronjob_trigger,
    last_run_cells,
    read_payload,
    result_text,
)
from funcmesh.errors import Invalid

NOW_S = 1704103200.0  # 2024-01-01T10:00:00Z


def test_build_is_the_kubeless_object_with_kubeless_labels() -> None:
    obj = build_cronjob_trigger(
        "tick", "team", function_name="hello", schedule="@every 10s", payload={"a": 1}
    )

    assert obj == {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "CronJobTrigger",
        "metadata": {"name": "tick", "namespace": "team", "labels": {"created-by": "kubeless"}},
        "spec": {"function-name": "hello", "schedule": "@every 10s", "payload": {"a": 1}},
    }


def test_build_refuses_what_the_api_would_refuse() -> None:
    with pytest.raises(Invalid, match='schedule "every minute" has 2 fields'):
        build_cronjob_trigger(
            "tick", "team", function_name="f", schedule="every minute", payload=None
        )


@pytest.mark.parametrize(
    ("name", "content", "payload"),
    [
        ("p.json", '{"a": [1, 2], "b": null}', {"a": [1, 2], "b": None}),
        ("p.yaml", "a:\n  - 1\n  - 2\nat: 2024-01-01T10:00:00Z\n",
         {"a": [1, 2], "at": "2024-01-01T10:00:00Z"}),
        ("p.YML", "{a: 1}", {"a": 1}),
    ],
)  # fmt: skip
def test_payload_files_in_json_and_yaml(
    tmp_path: Path, name: str, content: str, payload: dict[str, Any]
) -> None:
    path = tmp_path / name
    path.write_text(content)

    assert read_payload(None, str(path)) == payload


@pytest.mark.parametrize(
    ("text", "file_content", "suffix", "message"),
    [
        ('{"a": 1}', "{}", ".json", "You can't provide both raw payload and a payload file"),
        ("[1, 2]", None, "", "--payload: the payload must be a JSON object"),
        ("{oops", None, "", "--payload is not valid JSON"),
        (None, "- 1\n", ".yaml", "must be a YAML mapping"),
        (None, "a: [1\n", ".yaml", "is not valid YAML"),
        (None, "a: !!binary aGk=\n", ".yaml", "the payload must be plain JSON data"),
        (None, "a=1\n", ".txt", "the file must end in .json, .yaml or .yml"),
    ],
)
def test_bad_payloads_are_refused_with_the_reason(
    tmp_path: Path, text: str | None, file_content: str | None, suffix: str, message: str
) -> None:
    file_name = None
    if file_content is not None:
        path = tmp_path / f"payload{suffix}"
        path.write_text(file_content)
        file_name = str(path)

    with pytest.raises(Invalid) as refused:
        read_payload(text, file_name)
    assert message in str(refused.value)


def test_a_missing_payload_file_is_named() -> None:
    with pytest.raises(Invalid, match="cannot read --payload-from-file /nonexistent/p.json"):
        read_payload(None, "/nonexistent/p.json")


def test_an_update_changes_only_what_is_given() -> None:
    current = build_cronjob_trigger(
        "tick", "team", function_name="hello", schedule="@hourly", payload={"a": 1}
    )
    current["status"] = {"lastScheduleTime": "2024-01-01T09:00:00Z"}

    schedule_only = apply_changes(current, {"schedule": "@every 5s"})
    assert schedule_only["spec"] == {
        "function-name": "hello",
        "schedule": "@every 5s",
        "payload": {"a": 1},
    }
    assert schedule_only["status"] == current["status"]

    # the payload is replaced, not merged
    new_payload = apply_changes(current, {"payload": {"b": 2}})
    assert new_payload["spec"]["payload"] == {"b": 2}
    assert current["spec"]["payload"] == {"a": 1}  # the read object is left alone

    with pytest.raises(Invalid, match="has 1 fields"):
        apply_changes(current, {"schedule": "sometimes"})


@pytest.mark.parametrize(
    ("runs", "cells"),
    [
        ([], ("never", "-")),
        (
            [{"scheduleTime": "2024-01-01T09:59:55Z", "outcome": "Succeeded", "httpStatus": 200}],
            ("5s ago", "Succeeded (200)"),
        ),
        # a run still running shows the one before it
        (
            [
                {"scheduleTime": "2024-01-01T10:00:00Z", "outcome": "Running"},
                {"scheduleTime": "2024-01-01T09:57:00Z", "outcome": "Failed", "httpStatus": 504},
            ],
            ("3m ago", "Failed (504)"),
        ),
        (
            [{"scheduleTime": "2024-01-01T09:59:59Z", "outcome": "Running"}],
            ("1s ago", "Running"),
        ),
        (
            [
                {
                    "scheduleTime": "2024-01-01T07:00:00Z",
                    "lastMissedTime": "2024-01-01T09:00:00Z",
                    "outcome": "Missed",
                    "missedRuns": 3,
                }
            ],
            ("60m ago", "Missed (3 runs)"),
        ),
        (
            [{"scheduleTime": "2023-12-29T10:00:00Z", "outcome": "Unknown"}],
            ("3d ago", "Unknown"),
        ),
    ],
)
def test_last_run_and_result_columns(runs: list[dict[str, Any]], cells: tuple[str, str]) -> None:
    assert last_run_cells({"lastRuns": runs}, NOW_S) == cells


def test_results_read_well() -> None:
    assert result_text({"outcome": "Failed"}) == "Failed"
    assert result_text({"outcome": "Missed", "missedRuns": 1}) == "Missed (1 run)"


def test_deploy_dryrun_with_a_schedule_shows_the_function_and_its_trigger(tmp_path: Path) -> None:
    code = tmp_path / "hello.py"
    code.write_text("def handler(event, context):\n    return 'hi'\n")
    args = [
        "function", "deploy", "hello", "--runtime", "python3.11", "--handler", "hello.handler",
        "--from-file", str(code), "--schedule", "@every 10m", "--dryrun", "-o", "json",
    ]  # fmt: skip
    env = {"HOME": str(tmp_path), "KUBECONFIG": None, "FUNCMESH_HOME": None}

    result = CliRunner(env=env).invoke(cli, args)

    assert result.exit_code == 0, result.output
    function, trigger = json.loads(result.stdout)["items"]
    assert function["kind"] == "Function"
    assert trigger["kind"] == "CronJobTrigger"
    assert trigger["metadata"] == {
        "name": "hello",
        "namespace": "default",
        "labels": {"created-by": "kubeless", "function": "hello"},
    }
    assert trigger["spec"] == {"function-name": "hello", "schedule": "@every 10m"}
