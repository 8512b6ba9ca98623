"""The ``autoscaling.funcmesh.io/metric`` and ``target`` annotations: what they mean, and the
422 causes that name them when they are wrong."""

from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.function import Scaling, parse_function

P = "autoscaling.funcmesh.io/"


def function(annotations: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": "hello", "namespace": "default", "annotations": annotations},
        "spec": {"runtime": "python3.11", "handler": "hello.handler", "function": "x"},
    }


@pytest.mark.parametrize(
    ("annotations", "metric", "target"),
    [
        ({}, "concurrency", None),
        ({P + "metric": "concurrency"}, "concurrency", None),
        ({P + "metric": "cpu", P + "target": "50"}, "cpu", 50.0),
        ({P + "metric": "cpu", P + "target": "100"}, "cpu", 100.0),
        ({P + "metric": "qps", P + "target": "2.5"}, "qps", 2.5),
        ({P + "metric": "qps", P + "target": " 20 "}, "qps", 20.0),
    ],
)
def test_metric_and_target_are_read(
    annotations: dict[str, str], metric: str, target: float | None
) -> None:
    scaling = parse_function(function(annotations)).scaling
    assert (scaling.metric, scaling.target) == (metric, target)
    assert scaling.target_concurrency == 1  # the per-instance cap stays, whatever the metric


@pytest.mark.parametrize(
    ("annotations", "field", "words"),
    [
        ({P + "metric": "memory"}, P + "metric", "must be one of concurrency, cpu, qps"),
        ({P + "metric": "cpu"}, P + "target", "required with metric cpu"),
        ({P + "metric": "qps"}, P + "target", "required with metric qps"),
        ({P + "metric": "cpu", P + "target": "0"}, P + "target", "1 to 100"),
        ({P + "metric": "cpu", P + "target": "101"}, P + "target", "1 to 100"),
        ({P + "metric": "cpu", P + "target": "50.5"}, P + "target", "whole percentage"),
        ({P + "metric": "qps", P + "target": "0"}, P + "target", "above 0"),
        ({P + "metric": "qps", P + "target": "-3"}, P + "target", "above 0"),
        ({P + "metric": "qps", P + "target": "inf"}, P + "target", "above 0"),
        ({P + "metric": "qps", P + "target": "fast"}, P + "target", "above 0"),
        ({P + "target": "5"}, P + "target", "set autoscaling.funcmesh.io/target-concurrency"),
    ],
)
def test_bad_metric_or_target_names_the_annotation(
    annotations: dict[str, str], field: str, words: str
) -> None:
    with pytest.raises(Invalid) as caught:
        parse_function(function(annotations))
    [cause] = caught.value.causes
    assert cause.field == f"metadata.annotations[{field}]"
    assert words in cause.message


def test_scaling_defaults_to_concurrency() -> None:
    assert (Scaling().metric, Scaling().target) == ("concurrency", None)
