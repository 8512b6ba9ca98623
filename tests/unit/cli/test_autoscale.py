"""The patches ``funcmesh autoscale`` sends, per flag set, and its validation messages."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.cli.autoscale import (
    AutoscaleRule,
    build_create_patch,
    build_delete_patch,
    check_rule,
    has_rule,
    rule_row,
)
from funcmesh.cli.function_flags import apply_merge_patch
from funcmesh.errors import Invalid
from funcmesh.model.function import parse_function

P = "autoscaling.funcmesh.io/"


def function(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "resourceVersion": "7",
            "labels": {"app": "web"},
            "annotations": annotations or {},
        },
        "spec": {
            "runtime": "python3.11",
            "handler": "hello.handler",
            "function": "def handler(event, context):\n    return 1\n",
            **spec,
        },
    }


def test_concurrency_rule_writes_annotations_and_a_pods_metric() -> None:
    patch = build_create_patch(function(), AutoscaleRule(min_scale=0, max_scale=3, value="2"))

    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["metadata"]["annotations"] == {
        P + "min-scale": "0",
        P + "max-scale": "3",
        P + "target-concurrency": "2",
        P + "metric": None,
        P + "target": None,
    }
    hpa = patch["spec"]["horizontalPodAutoscaler"]
    assert hpa["metadata"] == {"name": "hello", "namespace": "default", "labels": {"app": "web"}}
    assert hpa["spec"] == {
        "scaleTargetRef": {"apiVersion": "apps/v1beta1", "kind": "Deployment", "name": "hello"},
        "minReplicas": 0,
        "maxReplicas": 3,
        "metrics": [
            {"type": "Pods", "pods": {"metricName": "concurrency", "targetAverageValue": "2"}}
        ],
    }


def test_concurrency_rule_without_value_keeps_the_target_concurrency() -> None:
    current = function({P + "target-concurrency": "4"})
    patch = build_create_patch(current, AutoscaleRule(min_scale=1, max_scale=2))

    assert P + "target-concurrency" not in patch["metadata"]["annotations"]
    [metric] = patch["spec"]["horizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["pods"]["targetAverageValue"] == "4"


def test_cpu_rule_is_kubeless_resource_metric_and_the_annotations_the_pool_reads() -> None:
    current = function()
    rule = AutoscaleRule(min_scale=1, max_scale=5, metric="cpu", value="70")
    patch = build_create_patch(current, rule)

    annotations = patch["metadata"]["annotations"]
    assert annotations[P + "metric"] == "cpu"
    assert annotations[P + "target"] == "70"
    assert patch["spec"]["horizontalPodAutoscaler"]["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "targetAverageUtilization": 70}}
    ]
    scaling = parse_function(apply_merge_patch(current, patch)).scaling
    assert (scaling.metric, scaling.target, scaling.max_scale) == ("cpu", 70.0, 5)


def test_qps_rule_is_kubeless_object_metric_on_function_calls() -> None:
    rule = AutoscaleRule(min_scale=1, max_scale=5, metric="qps", value="2.5")
    patch = build_create_patch(function(), rule)

    assert patch["spec"]["horizontalPodAutoscaler"]["spec"]["metrics"] == [
        {
            "type": "Object",
            "object": {
                "metricName": "function_calls",
                "targetValue": "2.5",
                "target": {"kind": "Service", "name": "hello"},
            },
        }
    ]


def test_patched_function_still_parses_with_the_new_scaling() -> None:
    current = function()
    patch = build_create_patch(current, AutoscaleRule(min_scale=0, max_scale=3, value="2"))

    scaling = parse_function(apply_merge_patch(current, patch)).scaling

    assert (scaling.min_scale, scaling.max_scale, scaling.target_concurrency) == (0, 3, 2)


def test_delete_patch_removes_annotations_and_hpa_but_not_others() -> None:
    current = function()
    created = apply_merge_patch(
        current, build_create_patch(current, AutoscaleRule(min_scale=1, max_scale=3, value="2"))
    )
    created["metadata"]["annotations"][P + "scale-to-zero-after"] = "30s"

    removed = apply_merge_patch(created, build_delete_patch(created))

    assert removed["metadata"]["annotations"] == {P + "scale-to-zero-after": "30s"}
    assert "horizontalPodAutoscaler" not in removed["spec"]
    assert has_rule(created)
    assert not has_rule(removed)


def test_rule_row_shows_metric_and_value() -> None:
    cpu = function(
        {P + "min-scale": "1", P + "max-scale": "4", P + "metric": "cpu", P + "target": "70"}
    )
    plain = function({P + "min-scale": "0", P + "max-scale": "3"})

    assert rule_row(cpu) == ["hello", "default", "hello", "1", "4", "cpu", "70"]
    assert rule_row(plain) == ["hello", "default", "hello", "0", "3", "concurrency", "1"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (AutoscaleRule(min_scale=-1, max_scale=2), "min can't be negative"),
        (AutoscaleRule(min_scale=3, max_scale=2), "max must be greater than or equal to min"),
        (AutoscaleRule(min_scale=0, max_scale=0), "max must be at least 1"),
        (AutoscaleRule(min_scale=1, max_scale=2, metric="memory"), "only supported metrics"),
        (AutoscaleRule(min_scale=1, max_scale=2, metric="cpu"), "--value is required"),
        (AutoscaleRule(min_scale=1, max_scale=2, value="0"), "--value must be a whole number"),
        (
            AutoscaleRule(min_scale=1, max_scale=2, metric="qps", value="x"),
            "--value must be a positive number",
        ),
        (
            AutoscaleRule(min_scale=1, max_scale=2, metric="qps", value="inf"),
            "--value must be a positive number",
        ),
        (
            AutoscaleRule(min_scale=1, max_scale=2, metric="cpu", value="150"),
            "percentage of one CPU core per instance, at most 100",
        ),
        (
            AutoscaleRule(min_scale=1, max_scale=2, metric="cpu", value="50.5"),
            "--value must be a whole number",
        ),
    ],
)
def test_bad_rules_are_refused_with_kubeless_messages(rule: AutoscaleRule, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        check_rule(rule)


def test_min_zero_and_a_full_core_are_accepted() -> None:
    check_rule(AutoscaleRule(min_scale=0, max_scale=1))
    check_rule(AutoscaleRule(min_scale=0, max_scale=1, metric="cpu", value="100"))
