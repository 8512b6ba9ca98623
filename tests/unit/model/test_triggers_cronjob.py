"""CronJobTrigger parsing (model.triggers); the schedule language: test_schedules.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.schedules import IntervalSchedule
from funcmesh.model.triggers import parse_cronjob_trigger

# As ``kubeless trigger cronjob create scheduled --function get-python --schedule ...`` stores it.
KUBELESS_EXAMPLE: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "CronJobTrigger",
    "metadata": {
        "name": "scheduled",
        "namespace": "default",
        "labels": {"created-by": "kubeless"},
        "uid": "9b8a2c6e-0000-4000-8000-000000000001",
        "generation": 2,
        "creationTimestamp": "2024-01-01T10:00:00Z",
    },
    "spec": {"function-name": "get-python", "schedule": "@every 10s", "payload": {"a": [1]}},
}


def with_spec(**fields: Any) -> dict[str, Any]:
    obj = copy.deepcopy(KUBELESS_EXAMPLE)
    for key, value in fields.items():
        name = key.replace("_", "-")
        if value is None:
            obj["spec"].pop(name, None)
        else:
            obj["spec"][name] = value
    return obj


def test_the_kubeless_shape_parses_into_what_the_controller_needs() -> None:
    spec = parse_cronjob_trigger(KUBELESS_EXAMPLE)

    assert spec.namespace == "default"
    assert spec.name == "scheduled"
    assert spec.uid == "9b8a2c6e-0000-4000-8000-000000000001"
    assert spec.generation == 2
    assert spec.created_s == 1704103200.0
    assert spec.function_name == "get-python"
    assert spec.schedule == IntervalSchedule(text="@every 10s", interval_s=10)
    assert spec.payload == {"a": [1]}


def test_without_a_payload_there_is_none_and_before_storing_no_creation_time() -> None:
    obj = with_spec(payload=None)
    del obj["metadata"]["creationTimestamp"]

    spec = parse_cronjob_trigger(obj)

    assert spec.payload is None
    assert spec.created_s is None


@pytest.mark.parametrize(
    ("obj", "causes"),
    [
        (with_spec(schedule="* * * *"), ['spec.schedule: schedule "* * * *" has 4 fields']),
        (with_spec(schedule=None), ["spec.schedule: schedule is required"]),
        (with_spec(schedule="  "), ["spec.schedule: schedule is required"]),
        (with_spec(schedule=5), ["spec.schedule: schedule is required"]),
        (with_spec(function_name=None), ["spec.function-name: function-name is required"]),
        (
            with_spec(function_name="Not_A_Name"),
            ['spec.function-name: "Not_A_Name" is not a valid name'],
        ),
        (with_spec(payload=[1, 2]), ["spec.payload: payload must be a JSON object, got an array"]),
        (with_spec(payload="text"), ["spec.payload: payload must be a JSON object, got a string"]),
        (with_spec(payload=True), ["spec.payload: payload must be a JSON object, got a boolean"]),
        (with_spec(payload=1.5), ["spec.payload: payload must be a JSON object, got a number"]),
        (
            with_spec(schedule="@every 1ms", function_name=None),
            ['spec.schedule: schedule "@every 1ms": @every needs', "spec.function-name"],
        ),
        ({**KUBELESS_EXAMPLE, "spec": None}, ["spec: spec must be an object"]),
        ({**KUBELESS_EXAMPLE, "kind": "Function"}, ["kind: must be CronJobTrigger"]),
    ],
)
def test_every_bad_field_is_named_at_once(obj: dict[str, Any], causes: list[str]) -> None:
    with pytest.raises(Invalid) as refused:
        parse_cronjob_trigger(obj)

    message = str(refused.value)
    assert message.startswith('CronJobTrigger "scheduled" is invalid: ')
    for cause in causes:
        assert cause in message
    assert len(refused.value.causes) == len(causes)
