"""Server-side printing: kubectl's age format and the cells of each kind's Table."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.api.ages import human_duration
from funcmesh.api.tables import table
from funcmesh.model.kinds import EVENT, FUNCTION, NAMESPACE, POD
from funcmesh.model.objects import parse_rfc3339

NOW_S = parse_rfc3339("2024-06-01T12:00:00Z")
MINUTE, HOUR, DAY = 60, 3600, 86400


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-0.5, "0s"),
        (0, "0s"),
        (5.9, "5s"),
        (119, "119s"),
        (2 * MINUTE, "2m"),
        (3 * MINUTE + 12, "3m12s"),
        (10 * MINUTE + 30, "10m"),
        (179 * MINUTE, "179m"),
        (3 * HOUR, "3h"),
        (7 * HOUR + 59 * MINUTE, "7h59m"),
        (8 * HOUR + 30 * MINUTE, "8h"),
        (47 * HOUR, "47h"),
        (2 * DAY, "2d"),
        (4 * DAY + 5 * HOUR, "4d5h"),
        (8 * DAY, "8d"),
        (729 * DAY, "729d"),
        (2 * 365 * DAY, "2y"),
        (3 * 365 * DAY + 10 * DAY, "3y10d"),
        (9 * 365 * DAY, "9y"),
    ],
)
def test_human_duration_matches_kubectl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def cells(kind: Any, obj: dict[str, Any]) -> dict[str, Any]:
    result = table(kind, [obj], now_s=NOW_S)
    columns = [c["name"] for c in result["columnDefinitions"]]
    return dict(zip(columns, result["rows"][0]["cells"], strict=True))


def test_function_cells() -> None:
    function = {
        "metadata": {"name": "hello", "generation": 2, "creationTimestamp": "2024-06-01T11:55:00Z"},
        "spec": {"runtime": "python3.11", "handler": "hello.handler"},
        "status": {
            "observedGeneration": 2,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "BuildFailed",
                    "message": "pip install failed: no such package\nmore",
                }
            ],
        },
    }
    assert cells(FUNCTION, function) == {
        "Name": "hello",
        "Runtime": "python3.11",
        "Handler": "hello.handler",
        "Status": "BuildFailed: pip install failed: no such package",
        "Age": "5m",
    }


def test_pod_cells_and_wide_columns() -> None:
    pod = {
        "metadata": {"name": "hello-1", "creationTimestamp": "2024-06-01T11:59:30Z"},
        "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "localhost"},
        "status": {
            "phase": "Running",
            "podIP": "127.128.0.3",
            "containerStatuses": [
                {"ready": True, "restartCount": 1},
                {
                    "ready": False,
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                },
            ],
        },
    }
    assert cells(POD, pod) == {
        "Name": "hello-1",
        "Ready": "1/2",
        "Status": "CrashLoopBackOff",
        "Restarts": 3,
        "Age": "30s",
        "IP": "127.128.0.3",
        "Node": "localhost",
    }
    priorities = {
        c["name"]: c["priority"] for c in table(POD, [], now_s=NOW_S)["columnDefinitions"]
    }
    assert (priorities["IP"], priorities["Node"], priorities["Ready"]) == (1, 1, 0)


def test_namespace_without_status_is_active() -> None:
    namespace = {"metadata": {"name": "team"}}
    assert cells(NAMESPACE, namespace) == {"Name": "team", "Status": "Active", "Age": "<unknown>"}


def test_event_cells() -> None:
    event = {
        "metadata": {"name": "hello.1", "creationTimestamp": "2024-06-01T10:00:00Z"},
        "lastTimestamp": "2024-06-01T11:59:00Z",
        "type": "Warning",
        "reason": "BuildFailed",
        "involvedObject": {"kind": "Function", "name": "hello"},
        "message": "pip failed",
    }
    assert cells(EVENT, event) == {
        "Last Seen": "60s",
        "Type": "Warning",
        "Reason": "BuildFailed",
        "Object": "function/hello",
        "Message": "pip failed",
    }


def test_a_merged_event_shows_its_count_and_span() -> None:
    event = {
        "metadata": {"name": "tick.1", "creationTimestamp": "2024-06-01T11:55:00Z"},
        "firstTimestamp": "2024-06-01T11:55:00Z",
        "lastTimestamp": "2024-06-01T11:59:56Z",
        "count": 300,
        "reason": "Succeeded",
    }
    assert cells(EVENT, event)["Last Seen"] == "4s (x300 over 5m)"


@pytest.mark.parametrize(
    ("include_object", "expected_kind"),
    [("Metadata", "PartialObjectMetadata"), ("Object", "Function"), ("None", None)],
)
def test_rows_carry_the_object_as_asked(include_object: str, expected_kind: str | None) -> None:
    function = {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": "f", "uid": "u"},
        "spec": {},
    }
    (row,) = table(FUNCTION, [function], now_s=NOW_S, include_object=include_object)["rows"]
    assert (row.get("object") or {}).get("kind") == expected_kind
    if expected_kind == "PartialObjectMetadata":
        assert row["object"] == {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"name": "f", "uid": "u"},
        }
