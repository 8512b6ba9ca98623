"""Merge patch (RFC 7386) and JSON patch (RFC 6902), table-driven from the RFCs' examples."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.api.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    apply_patch,
    json_patch,
    merge_patch,
)
from funcmesh.api.status import BadRequest, UnsupportedMediaType
from funcmesh.errors import Invalid

# RFC 7386 appendix A
MERGE_CASES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "expected"), MERGE_CASES)
def test_merge_patch(target: Any, patch: Any, expected: Any) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == expected
    assert target == before


DOC = {"foo": "bar", "list": ["a", "b"], "nested": {"x": 1}}
JSON_CASES: list[tuple[list[dict[str, Any]], Any]] = [
    ([{"op": "add", "path": "/baz", "value": "qux"}], {**DOC, "baz": "qux"}),
    ([{"op": "add", "path": "/list/1", "value": "z"}], {**DOC, "list": ["a", "z", "b"]}),
    ([{"op": "add", "path": "/list/-", "value": "z"}], {**DOC, "list": ["a", "b", "z"]}),
    ([{"op": "remove", "path": "/foo"}], {"list": ["a", "b"], "nested": {"x": 1}}),
    ([{"op": "remove", "path": "/list/0"}], {**DOC, "list": ["b"]}),
    ([{"op": "replace", "path": "/nested/x", "value": 2}], {**DOC, "nested": {"x": 2}}),
    (
        [{"op": "move", "from": "/foo", "path": "/moved"}],
        {**{k: v for k, v in DOC.items() if k != "foo"}, "moved": "bar"},
    ),
    ([{"op": "copy", "from": "/nested", "path": "/copied"}], {**DOC, "copied": {"x": 1}}),
    ([{"op": "test", "path": "/list", "value": ["a", "b"]}], DOC),
    ([{"op": "test", "path": "/nested/x", "value": 1.0}], DOC),
    ([{"op": "replace", "path": "", "value": {"whole": True}}], {"whole": True}),
    ([{"op": "add", "path": "/a~1b", "value": 1}], {**DOC, "a/b": 1}),
]


@pytest.mark.parametrize(("operations", "expected"), JSON_CASES)
def test_json_patch(operations: list[dict[str, Any]], expected: Any) -> None:
    document = copy.deepcopy(DOC)
    assert json_patch(document, operations) == expected
    assert document == DOC


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ([{"op": "test", "path": "/foo", "value": "other"}], "test failed"),
        ([{"op": "test", "path": "/nested/x", "value": True}], "test failed"),
        ([{"op": "remove", "path": "/missing"}], "does not exist"),
        ([{"op": "replace", "path": "/list/5", "value": 1}], "out of range"),
        ([{"op": "add", "path": "/list/x", "value": 1}], "not an array index"),
        ([{"op": "add", "path": "/foo/deeper", "value": 1}], "not an object"),
        ([{"op": "move", "from": "/nested", "path": "/nested/x"}], "own child"),
    ],
)
def test_json_patch_that_cannot_apply_is_invalid(
    operations: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(Invalid, match=message):
        json_patch(DOC, operations)


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ({"op": "add"}, "JSON array"),
        ([{"op": "frobnicate", "path": "/a"}], "unknown op"),
        ([{"op": "add", "path": "/a"}], 'needs "value"'),
        ([{"op": "move", "path": "/a"}], 'needs "from"'),
        (["add"], "not an object"),
        ([{"op": "add", "path": "a", "value": 1}], "must start with"),
    ],
)
def test_malformed_json_patch_is_a_bad_request(operations: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        json_patch(DOC, operations)


def test_strategic_merge_patch_merges_lists_by_the_kind_of_the_document() -> None:
    """The same patch: a Pod merges its containers by name, a kind without merge keys (an
    HTTPTrigger) takes the list as it is, as a merge patch would."""
    patch = {"spec": {"containers": [{"name": "web", "image": "b"}], "paused": None}}
    containers = [{"name": "web", "image": "a", "command": ["run"]}]
    for kind, merged in (
        (("v1", "Pod"), [{"name": "web", "image": "b", "command": ["run"]}]),
        (("kubeless.io/v1beta1", "HTTPTrigger"), [{"name": "web", "image": "b"}]),
    ):
        document = {"apiVersion": kind[0], "kind": kind[1], "spec": {"containers": containers}}
        document["spec"]["paused"] = True
        result = apply_patch(STRATEGIC_MERGE_PATCH, document, patch)
        assert result == {**document, "spec": {"containers": merged}}


def test_apply_patch_dispatches_on_the_content_type() -> None:
    assert apply_patch(MERGE_PATCH, {"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    assert apply_patch(JSON_PATCH, {"a": 1}, [{"op": "remove", "path": "/a"}]) == {}
    with pytest.raises(BadRequest, match="JSON object"):
        apply_patch(MERGE_PATCH, {"a": 1}, [1])
    with pytest.raises(BadRequest, match="strategic merge patch must be a JSON object"):
        apply_patch(STRATEGIC_MERGE_PATCH, {"a": 1}, [1])
    with pytest.raises(UnsupportedMediaType, match="server-side apply"):
        apply_patch(APPLY_PATCH, {}, {})
    with pytest.raises(UnsupportedMediaType, match="text/plain"):
        apply_patch("text/plain", {}, {})
