"""The workload a pod belongs to, as a call's source in Istio's metrics."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.mesh.sources import WorkloadSource, source_of_pod


def pod(name: str, labels: dict[str, str], owner: dict[str, str] | None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "labels": labels}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {"metadata": metadata, "status": {"podIP": "127.128.0.9"}}


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (
            pod("hello-5d8f-x1", {"function": "hello"}, {"kind": "Function", "name": "hello"}),
            WorkloadSource(workload="hello", namespace="shop"),
        ),
        (
            pod(
                "web-7c9b-a2",
                {"app": "web", "version": "v2"},
                {"kind": "Deployment", "name": "web"},
            ),
            WorkloadSource(workload="web", namespace="shop", app="web", version="v2"),
        ),
        (pod("lonely", {}, None), WorkloadSource(workload="lonely", namespace="shop")),
    ],
)
def test_the_workload_is_the_owner_and_app_version_are_labels(
    found: dict[str, Any], expected: WorkloadSource
) -> None:
    assert source_of_pod(found) == expected
