from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from funcmesh.cli.apply import (
    APPLIED_DIGEST_ANNOTATION,
    Target,
    applied_digest,
    apply_one,
    is_unchanged,
    read_manifests,
    replacement,
)
from funcmesh.client.api import ApiClient
from funcmesh.errors import Invalid
from funcmesh.model.kinds import FUNCTION

DESIRED: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "Function",
    "metadata": {"name": "hello", "namespace": "default", "labels": {"app": "x"}},
    "spec": {"runtime": "python3.11", "handler": "hello.handler", "function": "x = 1\n"},
}
SERVER_METADATA = {
    "uid": "u-1",
    "resourceVersion": "12",
    "generation": 3,
    "creationTimestamp": "2024-01-01T00:00:00Z",
}


def stored(*, digest: str | None = None, **spec_changes: Any) -> dict[str, Any]:
    """DESIRED as the server keeps it: its own metadata, a forced label, a defaulted field."""
    annotations = {APPLIED_DIGEST_ANNOTATION: digest} if digest else {}
    metadata = {
        **DESIRED["metadata"],
        **SERVER_METADATA,
        "labels": {**DESIRED["metadata"]["labels"], "function": "hello"},
        "annotations": annotations,
    }
    return {
        **DESIRED,
        "metadata": metadata,
        "spec": {**DESIRED["spec"], "deps": "", **spec_changes},
        "status": {"observedGeneration": 3},
    }


def test_what_the_server_adds_does_not_make_a_change() -> None:
    assert is_unchanged(DESIRED, stored(digest=applied_digest(DESIRED)))
    assert is_unchanged(DESIRED, stored())  # made by function deploy: no digest yet


def test_a_field_changed_on_the_server_is_a_change() -> None:
    assert not is_unchanged(DESIRED, stored(digest=applied_digest(DESIRED), handler="other.fn"))


def test_a_field_removed_from_the_manifest_is_a_change() -> None:
    previous = {**DESIRED, "spec": {**DESIRED["spec"], "timeout": "30"}}
    live = stored(digest=applied_digest(previous), timeout="30")
    assert not is_unchanged(DESIRED, live)


def test_replacement_keeps_server_owned_metadata() -> None:
    obj = replacement(DESIRED, stored(handler="old.handler"))
    assert obj["metadata"] == {**DESIRED["metadata"], **SERVER_METADATA}
    assert obj["spec"] == DESIRED["spec"]


class FakeApi:
    def __init__(self, current: dict[str, Any] | None, *, conflicts: int = 0) -> None:
        self.current = current
        self.conflicts = conflicts
        self.writes: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if self.current is None:
                return httpx.Response(
                    404,
                    json={
                        "kind": "Status",
                        "code": 404,
                        "reason": "NotFound",
                        "message": "not found",
                    },
                )
            return httpx.Response(200, json=self.current)
        self.writes.append((request.method, json.loads(request.content)))
        if self.conflicts:
            self.conflicts -= 1
            return httpx.Response(
                409,
                json={"kind": "Status", "code": 409, "reason": "Conflict", "message": "changed"},
            )
        return httpx.Response(200, json=json.loads(request.content))


def apply_with(api: FakeApi) -> str:
    client = ApiClient(server="https://127.0.0.1:6443", transport=httpx.MockTransport(api))
    with client:
        return apply_one(client, Target(rt=FUNCTION, obj=DESIRED))


def test_absent_object_is_created() -> None:
    api = FakeApi(None)
    assert apply_with(api) == "created"
    [(method, body)] = api.writes
    assert method == "POST"
    assert body["metadata"]["annotations"] == {APPLIED_DIGEST_ANNOTATION: applied_digest(DESIRED)}
    assert body["spec"] == DESIRED["spec"]


def test_equal_object_is_left_alone() -> None:
    api = FakeApi(stored(digest=applied_digest(DESIRED)))
    assert apply_with(api) == "unchanged"
    assert api.writes == []


def test_changed_object_is_replaced_with_the_read_resource_version() -> None:
    api = FakeApi(stored(handler="old.handler"))
    assert apply_with(api) == "configured"
    [(method, body)] = api.writes
    assert method == "PUT"
    assert body["metadata"]["resourceVersion"] == "12"
    assert body["spec"]["handler"] == "hello.handler"


def test_conflict_is_retried_with_a_fresh_read() -> None:
    api = FakeApi(stored(handler="old.handler"), conflicts=1)
    assert apply_with(api) == "configured"
    assert [method for method, _ in api.writes] == ["PUT", "PUT"]


def test_manifests_from_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n"
    )
    (tmp_path / "c.json").write_text(
        '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "c"}}'
    )
    (tmp_path / "notes.txt").write_text("not a manifest")
    names = [obj["metadata"]["name"] for obj in read_manifests([str(tmp_path)])]
    assert names == ["a", "b", "c"]


def test_missing_or_empty_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="no such file"):
        read_manifests([str(tmp_path / "nope.yaml")])
    (tmp_path / "empty.yaml").write_text("---\n")
    with pytest.raises(Invalid, match="no objects passed"):
        read_manifests([str(tmp_path / "empty.yaml")])
