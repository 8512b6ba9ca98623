from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.function import parse_function

KUBELESS_EXAMPLE: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "Function",
    "metadata": {
        "name": "get-python",
        "namespace": "default",
        "labels": {"created-by": "kubeless", "function": "get-python"},
    },
    "spec": {
        "runtime": "python3.7",
        "timeout": "180",
        "handler": "helloget.foo",
        "deps": "",
        "checksum": "sha256:d251999dcbfdeccec385606fd0aec385b214cfc74ede8b6c9e47af71728f6e9a",
        "function-content-type": "text",
        "function": 'def foo(event, context):\n    return "hello world"\n',
        "deployment": {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "",
                                "env": [{"name": "FOO", "value": "bar"}],
                                "resources": {"limits": {"memory": "128Mi"}},
                            }
                        ]
                    }
                }
            }
        },
    },
}


def with_changes(path: str, value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(KUBELESS_EXAMPLE)
    *parents, last = path.split("/")
    target = obj
    for part in parents:
        target = target[part]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return obj


def test_kubeless_example_parses_as_written() -> None:
    spec = parse_function(KUBELESS_EXAMPLE)
    assert (spec.module, spec.handler, spec.runtime) == ("helloget", "foo", "python3.7")
    assert spec.timeout_s == 180.0
    assert spec.env == (("FOO", "bar"),)
    assert spec.memory_limit == "128Mi"
    assert spec.memory_limit_bytes == 128 * 1024 * 1024
    assert spec.scaling.min_scale == 0
    assert spec.scaling.max_scale == 10
    assert spec.scaling.scale_to_zero_after_s == 300.0


def test_scaling_annotations_are_read() -> None:
    obj = with_changes(
        "metadata/annotations",
        {
            "autoscaling.funcmesh.io/min-scale": "1",
            "autoscaling.funcmesh.io/max-scale": "3",
            "autoscaling.funcmesh.io/target-concurrency": "4",
            "autoscaling.funcmesh.io/scale-to-zero-after": "5m",
        },
    )
    scaling = parse_function(obj).scaling
    assert (scaling.min_scale, scaling.max_scale, scaling.target_concurrency) == (1, 3, 4)
    assert scaling.scale_to_zero_after_s == 300.0


@pytest.mark.parametrize(
    ("path", "value", "field", "words"),
    [
        ("spec/handler", "nodot", "spec.handler", "module_name.handler_name"),
        ("spec/handler", "a.b.c", "spec.handler", "module_name.handler_name"),
        ("spec/handler", None, "spec.handler", "module_name.handler_name"),
        ("metadata/name", "Bad_Name", "metadata.name", "DNS-1123"),
        ("spec/function-content-type", "gzip", "spec.function-content-type", "unknown"),
        ("spec/checksum", "md5:abc", "spec.checksum", "sha256"),
        ("spec/timeout", "soon", "spec.timeout", "not a duration"),
        ("spec/timeout", "0", "spec.timeout", "more than 0"),
        ("spec/runtime", "", "spec.runtime", "python3.11"),
        (
            "metadata/annotations",
            {"autoscaling.funcmesh.io/max-scale": "x"},
            "metadata.annotations",
            "whole number",
        ),
        (
            "metadata/annotations",
            {"autoscaling.funcmesh.io/min-scale": "5", "autoscaling.funcmesh.io/max-scale": "2"},
            "metadata.annotations",
            "must not exceed",
        ),
        (
            "spec/deployment/spec/template/spec/enableServiceLinks",
            "no",
            "spec.deployment.spec.template.spec.enableServiceLinks",
            "true or false",
        ),
    ],
)
def test_invalid_functions_name_the_field(path: str, value: Any, field: str, words: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_function(with_changes(path, value))
    assert any(
        c.field.startswith(field) and words in c.message for c in caught.value.causes
    ), caught.value.causes
    assert words in str(caught.value)


def test_service_links_are_on_unless_the_pod_spec_turns_them_off() -> None:
    assert parse_function(KUBELESS_EXAMPLE).service_links is True
    off = with_changes("spec/deployment/spec/template/spec/enableServiceLinks", False)
    assert parse_function(off).service_links is False


def test_every_problem_is_reported_at_once() -> None:
    obj = with_changes("spec/handler", "nodot")
    obj["spec"]["timeout"] = "never"
    with pytest.raises(Invalid) as caught:
        parse_function(obj)
    assert {c.field for c in caught.value.causes} == {"spec.handler", "spec.timeout"}


def test_missing_spec_is_invalid() -> None:
    with pytest.raises(Invalid, match="spec is required"):
        parse_function({"metadata": {"name": "x"}})
