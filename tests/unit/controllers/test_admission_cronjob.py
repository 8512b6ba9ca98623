"""Admission of CronJobTriggers, and the store lookup admission reads objects through."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.admission import Admission, StoreLookup
from funcmesh.errors import Invalid, Unavailable
from funcmesh.model.kinds import CRONJOB_TRIGGER, FUNCTION, NAMESPACE, ResourceType
from funcmesh.runtime.catalog import RuntimeCatalog
from funcmesh.store.sqlite import Store

TRIGGER: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "CronJobTrigger",
    "metadata": {"name": "nightly", "namespace": "team"},
    "spec": {"function-name": "report", "schedule": "0 3 * * *"},
}


@dataclass
class FakeLookup:
    """Stored objects as (kind, namespace, name); remembers what admission looked up."""

    stored: set[tuple[str, str, str]] = field(default_factory=set)
    asked: list[tuple[str, str, str]] = field(default_factory=list)

    def exists(self, rt: ResourceType, namespace: str, name: str) -> bool:
        self.asked.append((rt.kind, namespace, name))
        return (rt.kind, namespace, name) in self.stored


def admission(*functions: str) -> tuple[Admission, FakeLookup]:
    lookup = FakeLookup({("Function", "team", name) for name in functions})
    return Admission(RuntimeCatalog.from_runtimes([]), objects=lookup), lookup


def trigger(**spec: Any) -> dict[str, Any]:
    obj = copy.deepcopy(TRIGGER)
    obj["spec"].update(spec)
    return obj


def test_a_trigger_of_an_existing_function_is_admitted_unchanged() -> None:
    admit, lookup = admission("report")

    assert admit.admit(CRONJOB_TRIGGER, trigger(), None) == TRIGGER
    assert lookup.asked == [("Function", "team", "report")]


def test_a_trigger_of_a_missing_function_is_refused_naming_it() -> None:
    admit, _ = admission("other")

    with pytest.raises(Invalid) as refused:
        admit.admit(CRONJOB_TRIGGER, trigger(), None)

    assert str(refused.value) == (
        'CronJobTrigger "nightly" is invalid: spec.function-name: '
        'function "report" not found in namespace "team"'
    )
    [cause] = refused.value.causes
    assert (cause.field, cause.reason) == ("spec.function-name", "FieldValueNotFound")


def test_an_update_looks_the_function_up_only_when_it_changes() -> None:
    admit, lookup = admission("report")
    stored = trigger()

    admit.admit(CRONJOB_TRIGGER, trigger(schedule="@hourly"), stored)
    assert lookup.asked == []

    with pytest.raises(Invalid, match='function "renamed" not found'):
        admit.admit(CRONJOB_TRIGGER, trigger(**{"function-name": "renamed"}), stored)


def test_an_invalid_schedule_is_refused_before_any_lookup() -> None:
    admit, lookup = admission("report")

    with pytest.raises(Invalid, match=r'spec.schedule: schedule "0 3 \* \*" has 4 fields'):
        admit.admit(CRONJOB_TRIGGER, trigger(schedule="0 3 * *"), None)
    assert lookup.asked == []


def test_admission_without_a_lookup_cannot_admit_triggers() -> None:
    admit = Admission(RuntimeCatalog.from_runtimes([]))

    with pytest.raises(Unavailable, match="without access to stored objects"):
        admit.admit(CRONJOB_TRIGGER, trigger(), None)


async def test_the_store_lookup_reads_from_admissions_thread(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db")
    try:
        await store.create(NAMESPACE, {"metadata": {"name": "team"}})
        await store.create(FUNCTION, {"metadata": {"name": "report", "namespace": "team"}})
        lookup = StoreLookup(store)
        admit = Admission(RuntimeCatalog.from_runtimes([]), objects=lookup)

        admitted = await asyncio.to_thread(admit.admit, CRONJOB_TRIGGER, trigger(), None)
        assert admitted == TRIGGER
        assert not await asyncio.to_thread(lookup.exists, FUNCTION, "team", "missing")
        with pytest.raises(RuntimeError, match="not the loop"):
            lookup.exists(FUNCTION, "team", "report")  # would block the loop it waits for
    finally:
        await store.close()
