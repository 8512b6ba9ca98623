"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge patch (what ``kubectl apply`` and ``kubectl patch`` send for built-in kinds)
lives in ``strategic_merge``; which lists it merges depends on the kind, which the patched
document names (stored objects carry ``apiVersion`` and ``kind``). A malformed patch document
is a BadRequest; a well-formed one that cannot be applied (missing path, failed ``test``) is
Invalid, as in Kubernetes. The functions never change their arguments. This module is pure.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from funcmesh.api.status import BadRequest, UnsupportedMediaType
from funcmesh.api.strategic_merge import json_equal, merge_keys_for, strategic_merge_patch
from funcmesh.errors import Invalid

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def apply_patch(content_type: str, document: Any, patch: Any) -> Any:
    """Apply a decoded patch body of the given content type to ``document``."""
    if content_type == MERGE_PATCH:
        if not isinstance(patch, dict):
            raise BadRequest("a merge patch must be a JSON object")
        return merge_patch(document, patch)
    if content_type == STRATEGIC_MERGE_PATCH:
        if not isinstance(patch, dict):
            raise BadRequest("a strategic merge patch must be a JSON object")
        kind = document if isinstance(document, dict) else {}
        merge_keys = merge_keys_for(kind.get("apiVersion"), kind.get("kind"))
        return strategic_merge_patch(document, patch, merge_keys=merge_keys)
    if content_type == JSON_PATCH:
        return json_patch(document, patch)
    if content_type == APPLY_PATCH:
        raise UnsupportedMediaType(
            "server-side apply is not supported; use client-side kubectl apply "
            "(--server-side=false) or funcmesh apply"
        )
    raise UnsupportedMediaType(
        f'PATCH content type "{content_type}" is not supported; use {MERGE_PATCH}, '
        f"{STRATEGIC_MERGE_PATCH} or {JSON_PATCH}"
    )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 ``add``, ``remove``, ``replace``, ``move``, ``copy`` and ``test``."""
    if not isinstance(operations, list):
        raise BadRequest("a JSON patch must be a JSON array of operations")
    result = copy.deepcopy(document)
    for index, operation in enumerate(operations):
        result = _apply_operation(result, _checked(operation, index))
    return result


def _checked(operation: Any, index: int) -> dict[str, Any]:
    if not isinstance(operation, dict):
        raise BadRequest(f"JSON patch operation {index} is not an object")
    op = operation.get("op")
    if op not in _OPERATIONS:
        raise BadRequest(f'JSON patch operation {index}: unknown op "{op}"')
    required = ("path", "from") if op in ("move", "copy") else ("path",)
    if op in ("add", "replace", "test"):
        required = (*required, "value")
    for member in required:
        present = member in operation
        if not present or (member != "value" and not isinstance(operation[member], str)):
            raise BadRequest(f'JSON patch operation {index} ("{op}") needs "{member}"')
    return operation


def _apply_operation(document: Any, operation: dict[str, Any]) -> Any:
    return _OPERATIONS[operation["op"]](document, operation)


def _add(document: Any, operation: dict[str, Any]) -> Any:
    return _insert(document, _pointer(operation["path"]), copy.deepcopy(operation["value"]))


def _remove(document: Any, operation: dict[str, Any]) -> Any:
    tokens = _pointer(operation["path"])
    if not tokens:
        raise Invalid("JSON patch: cannot remove the whole document")
    parent, key = _parent(document, tokens)
    _get_child(parent, key, tokens)
    if isinstance(parent, list):
        del parent[int(key)]
    else:
        del parent[key]
    return document


def _replace(document: Any, operation: dict[str, Any]) -> Any:
    tokens = _pointer(operation["path"])
    value = copy.deepcopy(operation["value"])
    if not tokens:
        return value
    parent, key = _parent(document, tokens)
    _get_child(parent, key, tokens)
    parent[int(key) if isinstance(parent, list) else key] = value
    return document


def _move(document: Any, operation: dict[str, Any]) -> Any:
    source, target = operation["from"], operation["path"]
    if target.startswith(source + "/"):
        raise Invalid(f'JSON patch: cannot move "{source}" into its own child "{target}"')
    value = _resolve(document, _pointer(source))
    document = _remove(document, {"path": source})
    return _insert(document, _pointer(target), value)


def _copy(document: Any, operation: dict[str, Any]) -> Any:
    value = copy.deepcopy(_resolve(document, _pointer(operation["from"])))
    return _insert(document, _pointer(operation["path"]), value)


def _test(document: Any, operation: dict[str, Any]) -> Any:
    actual = _resolve(document, _pointer(operation["path"]))
    if not json_equal(actual, operation["value"]):
        raise Invalid(
            f'JSON patch test failed at "{operation["path"]}": '
            f"expected {operation['value']!r}, found {actual!r}"
        )
    return document


_OPERATIONS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "add": _add,
    "remove": _remove,
    "replace": _replace,
    "move": _move,
    "copy": _copy,
    "test": _test,
}


def _insert(document: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent, key = _parent(document, tokens)
    if isinstance(parent, list):
        parent.insert(_list_index(parent, key, tokens, insert=True), value)
    else:
        parent[key] = value
    return document


def _pointer(text: str) -> list[str]:
    """RFC 6901: ``/a/b~1c`` -> ``["a", "b/c"]``; ``""`` is the whole document."""
    if text == "":
        return []
    if not text.startswith("/"):
        raise BadRequest(f'JSON pointer "{text}" must start with "/"')
    return [token.replace("~1", "/").replace("~0", "~") for token in text[1:].split("/")]


def _resolve(document: Any, tokens: list[str]) -> Any:
    value = document
    for depth in range(len(tokens)):
        value = _get_child(value, tokens[depth], tokens[: depth + 1])
    return value


def _parent(document: Any, tokens: list[str]) -> tuple[Any, str]:
    parent = _resolve(document, tokens[:-1])
    if not isinstance(parent, dict | list):
        raise Invalid(f'JSON patch: "{_render(tokens[:-1])}" is not an object or array')
    return parent, tokens[-1]


def _get_child(container: Any, key: str, tokens: list[str]) -> Any:
    if isinstance(container, dict):
        if key not in container:
            raise Invalid(f'JSON patch: path "{_render(tokens)}" does not exist')
        return container[key]
    if isinstance(container, list):
        return container[_list_index(container, key, tokens, insert=False)]
    raise Invalid(f'JSON patch: path "{_render(tokens)}" does not exist')


def _list_index(items: list[Any], key: str, tokens: list[str], *, insert: bool) -> int:
    if insert and key == "-":
        return len(items)
    if not key.isdigit() or (len(key) > 1 and key.startswith("0")):
        raise Invalid(f'JSON patch: "{key}" in "{_render(tokens)}" is not an array index')
    index = int(key)
    if index > len(items) or (index == len(items) and not insert):
        raise Invalid(f'JSON patch: index {index} of "{_render(tokens)}" is out of range')
    return index


def _render(tokens: list[str]) -> str:
    return "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)
