"""The Kubeless event a NATS message becomes, and a trigger's run-time state."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from funcmesh.controllers.deliveries import Outcome
from funcmesh.controllers.nats_trigger import (
    NatsMetrics,
    TriggerState,
    go_time_string,
    nats_event_headers,
)

TRIGGER: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "NATSTrigger",
    "metadata": {"name": "orders", "namespace": "shop", "uid": "u1", "generation": 1},
    "spec": {"topic": "orders", "functionSelector": {"matchLabels": {"topic": "orders"}}},
}


@pytest.mark.parametrize(
    ("unix_ns", "text"),
    [
        (1_257_894_000_000_000_000, "2009-11-10 23:00:00 +0000 UTC"),
        (1_257_894_000_500_000_000, "2009-11-10 23:00:00.5 +0000 UTC"),
        (1_539_658_560_738_120_124, "2018-10-16 02:56:00.738120124 +0000 UTC"),
        (1_539_658_560_000_000_100, "2018-10-16 02:56:00.0000001 +0000 UTC"),
    ],
)
def test_event_time_is_written_as_go_writes_it(unix_ns: int, text: str) -> None:
    assert go_time_string(unix_ns) == text


@pytest.mark.parametrize(
    ("payload", "media_type"),
    [
        (b'{"id": 7}', "application/json"),
        (b'  {"nested": {"a": [1]}}\n', "application/json"),
        (b"[1, 2]", "text/plain"),
        (b"42", "text/plain"),
        (b"{not json", "text/plain"),
        (b"hello", "text/plain"),
        (b"", "text/plain"),
        (b"{\xff}", "text/plain"),
    ],
)
def test_only_a_json_object_is_sent_as_json(payload: bytes, media_type: str) -> None:
    headers = nats_event_headers(payload, event_id="abc", unix_ns=1_257_894_000_000_000_000)

    assert headers == {
        "event-id": "abc",
        "event-time": "2009-11-10 23:00:00 +0000 UTC",
        "event-type": media_type,
        "event-namespace": "natstriggers.kubeless.io",
        "Content-Type": media_type,
    }


def state(obj: dict[str, Any], changes: list[str]) -> TriggerState:
    metrics = NatsMetrics(CollectorRegistry())
    trigger = TriggerState(obj, metrics=metrics, on_change=lambda: changes.append("changed"))
    trigger.accept(obj)
    return trigger


def test_counts_continue_from_the_stored_status() -> None:
    obj = copy.deepcopy(TRIGGER)
    obj["status"] = {"delivered": 10, "retried": 2, "failed": 1}
    trigger = state(obj, [])
    trigger.record("fn", Outcome.DELIVERED, "")
    trigger.record("fn", Outcome.FAILED, "function answered 500 (6 attempts)")

    assert trigger.counts == {Outcome.DELIVERED: 11, Outcome.RETRIED: 2, Outcome.FAILED: 2}
    assert trigger.failures == {"fn": (1, "function answered 500 (6 attempts)")}


def test_the_selection_follows_labels_and_reports_changes_only() -> None:
    changes: list[str] = []
    trigger = state(copy.deepcopy(TRIGGER), changes)
    changes.clear()

    trigger.retarget({"b": {"topic": "orders"}, "a": {"topic": "orders"}, "c": {}})
    assert trigger.targets == ("a", "b")
    assert trigger.selects("a")
    assert not trigger.selects("c")
    assert changes == ["changed"]

    trigger.retarget({"b": {"topic": "orders"}, "a": {"topic": "orders"}})
    assert changes == ["changed"], "the same selection is no change"


def test_a_new_generation_is_parsed_again_and_a_status_write_is_not() -> None:
    obj = copy.deepcopy(TRIGGER)
    changes: list[str] = []
    trigger = state(obj, changes)

    assert not trigger.accept({**obj, "status": {"delivered": 1}})
    newer = copy.deepcopy(obj)
    newer["metadata"]["generation"] = 2
    newer["spec"]["topic"] = "orders.>"
    assert trigger.accept(newer)
    assert trigger.spec is not None
    assert trigger.spec.topic == "orders.>"


def test_an_invalid_object_keeps_its_problem_and_selects_nothing() -> None:
    obj = copy.deepcopy(TRIGGER)
    obj["spec"]["topic"] = "a..b"
    trigger = state(obj, [])
    trigger.retarget({"fn": {"topic": "orders"}})

    assert trigger.spec is None
    assert 'spec.topic: topic "a..b" has an empty token' in trigger.problem
    assert trigger.targets == ()
    assert not trigger.accept({**obj, "status": {}}), "a status write re-parses nothing"
