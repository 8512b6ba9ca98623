"""The pure parts of ``funcmesh trigger nats``: building, updating and listing triggers.
The commands against a real daemon and nats-server: tests/e2e/test_nats_triggers.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.cli.trigger_nats import (
    apply_changes,
    build_nats_trigger,
    function_selector_spec,
    server_address,
    trigger_row,
)
from funcmesh.errors import Invalid

STORED: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "NATSTrigger",
    "metadata": {"name": "orders", "namespace": "shop", "resourceVersion": "7"},
    "spec": {
        "topic": "orders",
        "functionSelector": {
            "matchLabels": {"topic": "orders"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}],
        },
    },
    "status": {
        "functions": ["a", "b"],
        "delivered": 12,
        "retried": 3,
        "failed": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Subscribed"}],
    },
}


def test_build_is_the_kubeless_object_with_kubeless_labels() -> None:
    obj = build_nats_trigger("orders", "shop", topic="orders.*", selector="topic=orders")

    assert obj == {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "NATSTrigger",
        "metadata": {"name": "orders", "namespace": "shop", "labels": {"created-by": "kubeless"}},
        "spec": {"topic": "orders.*", "functionSelector": {"matchLabels": {"topic": "orders"}}},
    }


@pytest.mark.parametrize(
    ("topic", "selector", "message"),
    [
        ("t", "a in (b", "invalid function selector 'a in (b'"),
        ("t", "", "give matchLabels or matchExpressions"),
        ("a b", "x=y", "must not contain whitespace"),
    ],
)
def test_build_refuses_what_the_api_would_refuse(topic: str, selector: str, message: str) -> None:
    with pytest.raises(Invalid, match=message.replace("(", r"\(")):
        build_nats_trigger("t", "default", topic=topic, selector=selector)


def test_a_new_selector_replaces_the_old_one_entirely() -> None:
    updated = apply_changes(copy.deepcopy(STORED), topic=None, selector="app=api")

    assert updated["spec"] == {
        "topic": "orders",
        "functionSelector": {"matchLabels": {"app": "api"}},
    }
    assert updated["metadata"]["resourceVersion"] == "7", "the update is a compare-and-set"


def test_a_new_topic_keeps_the_selector() -> None:
    updated = apply_changes(copy.deepcopy(STORED), topic="orders.>", selector=None)

    assert updated["spec"]["topic"] == "orders.>"
    assert updated["spec"]["functionSelector"] == STORED["spec"]["functionSelector"]


def test_selector_flag_keeps_expressions_kubeless_dropped() -> None:
    assert function_selector_spec("topic=orders,tier notin (db)") == {
        "matchLabels": {"topic": "orders"},
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}],
    }


def test_rows_show_kubeless_columns_and_wide_adds_status_and_counts() -> None:
    assert trigger_row(STORED, wide=False) == [
        "orders",
        "shop",
        "orders",
        "topic=orders,tier in (a)",
    ]
    assert trigger_row(STORED, wide=True)[4:] == ["Subscribed", "a,b", "12", "3", "1"]


def test_a_trigger_without_status_yet_is_pending() -> None:
    fresh = {key: value for key, value in STORED.items() if key != "status"}

    assert trigger_row(fresh, wide=True)[4:] == ["Pending", "<none>", "0", "0", "0"]


def test_server_address_hides_credentials() -> None:
    assert server_address("nats://user:secret@nats.local") == "nats://nats.local:4222"
