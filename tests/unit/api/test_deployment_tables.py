"""``get deployments`` and ``get pods`` of workload replicas, as kubectl prints them."""

from __future__ import annotations

from typing import Any

from funcmesh.api.tables import table
from funcmesh.model.kinds import DEPLOYMENT, POD
from funcmesh.model.objects import parse_rfc3339

NOW_S = parse_rfc3339("2024-06-01T12:00:00Z")


def cells(rt: Any, obj: dict[str, Any], *, wide: bool = True) -> dict[str, Any]:
    rendered = table(rt, [obj], now_s=NOW_S)
    names = [c["name"] for c in rendered["columnDefinitions"]]
    row = dict(zip(names, rendered["rows"][0]["cells"], strict=True))
    if not wide:
        priority = {c["name"]: c["priority"] for c in rendered["columnDefinitions"]}
        row = {name: cell for name, cell in row.items() if priority[name] == 0}
    return row


def test_deployment_columns() -> None:
    deployment = {
        "metadata": {"name": "web", "creationTimestamp": "2024-06-01T11:59:00Z"},
        "spec": {
            "replicas": 3,
            "selector": {
                "matchLabels": {"run": "web", "app": "x"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
            },
            "template": {"spec": {"containers": [{"name": "web", "command": ["x"]}]}},
        },
        "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
    }
    assert cells(DEPLOYMENT, deployment, wide=False) == {
        "Name": "web",
        "Ready": "2/3",
        "Up-to-date": 3,
        "Available": 2,
        "Age": "60s",
    }
    wide = cells(DEPLOYMENT, deployment)
    assert (wide["Containers"], wide["Images"]) == ("web", "<none>")
    assert wide["Selector"] == "app=x,run=web,tier in (a,b)"


def test_a_new_deployment_shows_zeros() -> None:
    deployment = {"metadata": {"name": "web"}, "spec": {"replicas": 1}}
    row = cells(DEPLOYMENT, deployment, wide=False)
    assert (row["Ready"], row["Up-to-date"], row["Available"]) == ("0/1", 0, 0)


def test_a_crashing_workload_pod() -> None:
    pod = {
        "metadata": {"name": "web-abc-x1", "creationTimestamp": "2024-06-01T11:59:50Z"},
        "spec": {"containers": [{"name": "web"}], "nodeName": "host"},
        "status": {
            "phase": "Running",
            "podIP": "127.128.0.7",
            "containerStatuses": [
                {
                    "name": "web",
                    "ready": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                }
            ],
        },
    }
    row = cells(POD, pod)
    assert (row["Ready"], row["Status"], row["Restarts"], row["IP"]) == (
        "0/1",
        "CrashLoopBackOff",
        4,
        "127.128.0.7",
    )
