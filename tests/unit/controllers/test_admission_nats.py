"""Admission of NATSTriggers: bad subjects and selectors are refused with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.controllers.admission import Admission
from funcmesh.errors import Invalid
from funcmesh.model.kinds import NATS_TRIGGER
from funcmesh.runtime.catalog import RuntimeCatalog

ADMISSION = Admission(RuntimeCatalog.from_runtimes([]))
TRIGGER: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "NATSTrigger",
    "metadata": {"name": "orders", "namespace": "default"},
    "spec": {"topic": "orders.*", "functionSelector": {"matchLabels": {"topic": "orders"}}},
}


def test_a_good_trigger_is_admitted_unchanged() -> None:
    assert ADMISSION.admit(NATS_TRIGGER, copy.deepcopy(TRIGGER), None) == TRIGGER


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"functionSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}},
            'NATSTrigger "orders" is invalid: spec.functionSelector.matchExpressions[0].operator: '
            'Unsupported value: "Like"',
        ),
        (
            {"functionSelector": {"matchLabels": {"topic": "two words"}}},
            'NATSTrigger "orders" is invalid: spec.functionSelector.matchLabels: '
            'label value "two words"',
        ),
        (
            {"topic": "orders.>.eu"},
            'NATSTrigger "orders" is invalid: spec.topic: topic "orders.>.eu": the wildcard ">"',
        ),
    ],
)
def test_a_bad_trigger_is_refused(spec: dict[str, Any], message: str) -> None:
    bad = copy.deepcopy(TRIGGER)
    bad["spec"].update(spec)
    with pytest.raises(Invalid) as caught:
        ADMISSION.admit(NATS_TRIGGER, bad, None)

    assert str(caught.value).startswith(message)
