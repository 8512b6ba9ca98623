"""Strategic merge patch (``application/strategic-merge-patch+json``) as Kubernetes applies it.

A JSON merge patch replaces every list whole; a strategic merge patch merges the lists that the
Kubernetes types declare mergeable: containers by ``name``, a container's ports by
``containerPort``, a Service's ports by ``port``, finalizers as a set, and so on. The table
below names those lists by field path for each kind funcmesh serves; every other list is
atomic (replaced whole). ``kubectl apply`` and ``kubectl patch`` rely on it: they send only the
changed fields of a list element, plus the directives

- ``$patch: delete`` (in a list element: remove the elements with its key; in a map: remove
  the map),
- ``$patch: replace`` (in a map: replace the map instead of merging it; as an element of a
  list: replace the list with the other elements),
- ``$patch: merge`` (the default, accepted as a no-op),
- ``$setElementOrder/<list>`` (the order of the merged list),
- ``$retainKeys`` (clear the fields of a map that the list does not name),
- ``$deleteFromPrimitiveList/<list>`` (remove values from a set of primitives).

``null`` removes a map member. Nulls and directives do not reach the result, also not from a
map the target does not have yet (a list that is replaced whole is taken as it is, as in a
merge patch). Kubeless kinds are custom resources: Kubernetes refuses strategic merge for those
(415) and ``kubectl apply`` sends them JSON merge patches; funcmesh accepts it anyway, treats
their lists as atomic and merges a Function's ``spec.deployment`` as the Deployment and
``spec.service`` as the Service spec they are. A malformed directive is a BadRequest naming the
field. This module is pure: the functions never change their arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.api.status import BadRequest
from funcmesh.model.kinds import DEPLOYMENT, ENDPOINTS, FUNCTION, NAMESPACE, POD, SERVICE

AS_SET = ""  # the "merge key" of a list of primitives that merges as a set (finalizers)
DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
SET_ELEMENT_ORDER = "$setElementOrder/"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
_DIRECTIVE_VALUES = ("replace", "delete", "merge")
_USE = "replace, delete or merge"
_REPLACE_MARKER = {DIRECTIVE: "replace"}
_NO_KEY = object()  # the key of a list element that has none: equal to nothing

MergeKeys = Mapping[str, str]  # field path of a mergeable list -> its merge key (or AS_SET)


def _under(prefix: str, table: MergeKeys) -> dict[str, str]:
    return {f"{prefix}.{path}": key for path, key in table.items()}


# patchMergeKey / patchStrategy "merge" of the Kubernetes types (core/v1, apps/v1)
_OBJECT_META = {"finalizers": AS_SET, "ownerReferences": "uid"}
_CONTAINER = {
    "env": "name",
    "ports": "containerPort",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")
_POD_SPEC = {
    **{name: "name" for name in _CONTAINER_LISTS},
    **{path: key for name in _CONTAINER_LISTS for path, key in _under(name, _CONTAINER).items()},
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
_CONDITIONS = {"conditions": "type"}
_POD_STATUS = {**_CONDITIONS, "podIPs": "ip", "hostIPs": "ip", "resourceClaimStatuses": "name"}
_SERVICE_SPEC = {"ports": "port"}
_ANY_OBJECT = _under("metadata", _OBJECT_META)
_DEPLOYMENT = {
    **_ANY_OBJECT,
    **_under("spec.template.metadata", _OBJECT_META),
    **_under("spec.template.spec", _POD_SPEC),
    **_under("status", _CONDITIONS),
}

MERGE_KEYS: dict[tuple[str, str], MergeKeys] = {
    (POD.api_version, POD.kind): {
        **_ANY_OBJECT,
        **_under("spec", _POD_SPEC),
        **_under("status", _POD_STATUS),
    },
    (SERVICE.api_version, SERVICE.kind): {
        **_ANY_OBJECT,
        **_under("spec", _SERVICE_SPEC),
        **_under("status", _CONDITIONS),
    },
    (ENDPOINTS.api_version, ENDPOINTS.kind): _ANY_OBJECT,  # subsets are atomic
    (NAMESPACE.api_version, NAMESPACE.kind): {**_ANY_OBJECT, **_under("status", _CONDITIONS)},
    (DEPLOYMENT.api_version, DEPLOYMENT.kind): _DEPLOYMENT,
    (FUNCTION.api_version, FUNCTION.kind): {
        **_ANY_OBJECT,
        **_under("spec.deployment", _DEPLOYMENT),  # Kubeless: a Deployment of the function
        **_under("spec.service", _SERVICE_SPEC),  # Kubeless: a ServiceSpec
    },
}


def merge_keys_for(api_version: object, kind: object) -> MergeKeys:
    """The mergeable lists of a kind; only ``metadata``'s for kinds without any of their own."""
    return MERGE_KEYS.get((str(api_version), str(kind)), _ANY_OBJECT)


def strategic_merge_patch(
    document: Any, patch: Mapping[str, Any], *, merge_keys: MergeKeys
) -> dict[str, Any]:
    """Apply ``patch`` to ``document`` (a copy of it), merging the lists ``merge_keys`` names."""
    target = copy.deepcopy(document) if isinstance(document, dict) else {}
    merged = _Merge(merge_keys=merge_keys).merge_map(target, patch, "")
    if merged is None:
        raise BadRequest('"$patch: delete" cannot delete the whole object: use DELETE')
    return merged


def json_equal(left: Any, right: Any) -> bool:
    """Equality in JSON terms: ``true`` is not ``1``, ``1`` equals ``1.0``."""
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(json_equal, left, right))
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and left == right


@dataclass(frozen=True, slots=True, kw_only=True)
class _Merge:
    """One patch application. ``target`` values are the caller's private copy and are changed in
    place; patch values are only read (what enters the result is built anew or copied)."""

    merge_keys: MergeKeys

    def merge_map(
        self, target: dict[str, Any], patch: Mapping[str, Any], path: str
    ) -> dict[str, Any] | None:
        """The merged map, or None when the patch deletes it (``$patch: delete``)."""
        directive = patch.get(DIRECTIVE)
        if directive == "delete":
            return None
        if directive == "replace":
            target = {}
        elif directive is not None and directive not in _DIRECTIVE_VALUES:
            raise BadRequest(f'{_at(path)}unknown "$patch: {directive}": use {_USE}')
        _retain_keys(target, patch, path)
        orders, deletions = _list_directives(patch, path)
        for key, value in patch.items():
            if not key.startswith("$"):
                self._merge_member(target, key, value, path, order=orders.pop(key, None))
        for key, order in orders.items():  # an order without a patch list: reorder what is there
            if isinstance(target.get(key), list) and _join(path, key) in self.merge_keys:
                target[key] = self.merge_list(target[key], [], _join(path, key), order=order)
        for key, values in deletions.items():
            _delete_primitives(target, key, values, _join(path, key))
        return target

    def _merge_member(
        self, target: dict[str, Any], key: str, value: Any, path: str, *, order: list[Any] | None
    ) -> None:
        current, child = target.get(key), _join(path, key)
        if isinstance(value, dict):
            value = self.merge_map(current if isinstance(current, dict) else {}, value, child)
        elif isinstance(value, list):
            base = current if isinstance(current, list) else []
            value = self.merge_list(base, value, child, order=order)
        if value is None:  # null, or a map with "$patch: delete"
            target.pop(key, None)
        else:
            target[key] = value

    def merge_list(
        self, target: list[Any], patch: list[Any], path: str, *, order: list[Any] | None
    ) -> list[Any]:
        """The merged list at ``path``: keyed, a set, or (not in the table) the patch's."""
        key = self.merge_keys.get(path)
        if key is None:
            return _atomic(patch, path)
        if key == AS_SET:
            return _merged_set(target, patch, path, order=order)
        return self._merged_by_key(target, patch, path, key=key, order=order)

    def _merged_by_key(
        self, target: list[Any], patch: list[Any], path: str, *, key: str, order: list[Any] | None
    ) -> list[Any]:
        replace, deleted, items = _keyed_elements(patch, path, key)
        before = [] if replace else target
        merged = [item for item in before if _position(deleted, _key_of(item, key)) is None]
        for item in items:
            index = _position([_key_of(element, key) for element in merged], item[key])
            if index is None:
                merged.append(self.merge_map({}, item, path))
            else:
                merged[index] = self.merge_map(merged[index], item, path)
        wanted = [item[key] for item in items]
        if order is not None:
            wanted = _checked_order(_order_keys(order, key, path), wanted, path)
        return _ordered(merged, wanted, before, key_of=lambda element: _key_of(element, key))


def _at(path: str) -> str:
    return f'"{path}": ' if path else ""


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _retain_keys(target: dict[str, Any], patch: Mapping[str, Any], path: str) -> None:
    """``$retainKeys``: clear the target's fields that the list does not name."""
    if RETAIN_KEYS not in patch:
        return
    kept = patch[RETAIN_KEYS]
    if not isinstance(kept, list) or not all(isinstance(name, str) for name in kept):
        raise BadRequest(f'{_at(path)}"$retainKeys" must be a list of field names')
    for name, value in patch.items():
        if value is not None and not name.startswith("$") and name not in kept:
            raise BadRequest(f'{_at(path)}"{name}" is in the patch but not in its "$retainKeys"')
    for name in [name for name in target if name not in kept]:
        del target[name]


def _list_directives(
    patch: Mapping[str, Any], path: str
) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """The ``$setElementOrder/<list>`` and the ``$deleteFromPrimitiveList/<list>`` directives,
    by list; BadRequest for a malformed one or one funcmesh does not know."""
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    for name, value in patch.items():
        if not name.startswith("$") or name in (DIRECTIVE, RETAIN_KEYS):
            continue
        prefix, _, field = name.partition("/")
        found = {SET_ELEMENT_ORDER: orders, DELETE_FROM_PRIMITIVE_LIST: deletions}.get(prefix + "/")
        if found is None:
            raise BadRequest(f'{_at(path)}unknown strategic merge patch directive "{name}"')
        if not field or not isinstance(value, list):
            raise BadRequest(f'{_at(path)}"{name}" must name a list and give a list')
        found[field] = value
    return orders, deletions


def _delete_primitives(target: dict[str, Any], key: str, values: list[Any], path: str) -> None:
    """``$deleteFromPrimitiveList/<key>``: remove every element equal to one of ``values``."""
    if not all(_is_primitive(value) for value in values):
        raise BadRequest(f'"{path}": "$deleteFromPrimitiveList" must list strings or numbers')
    current = target.get(key)
    if isinstance(current, list):
        target[key] = [item for item in current if _position(values, item) is None]


def _atomic(patch: list[Any], path: str) -> list[Any]:
    """A list without a merge key is replaced whole: a ``$patch: replace`` marker says nothing
    new, and a ``$patch: delete`` element has no key to name the element it deletes by."""
    items = []
    for item in patch:
        if isinstance(item, dict) and DIRECTIVE in item:
            if item != _REPLACE_MARKER:
                raise BadRequest(
                    f'"{path}": this list has no merge key, it is replaced whole: an element '
                    f'cannot carry "$patch: {item[DIRECTIVE]}"'
                )
            continue
        items.append(copy.deepcopy(item))
    return items


def _merged_set(
    target: list[Any], patch: list[Any], path: str, *, order: list[Any] | None
) -> list[Any]:
    """A list of primitives merged as a set (``metadata.finalizers``)."""
    values = [item for item in patch if item != _REPLACE_MARKER]
    if not all(_is_primitive(value) for value in values):
        raise BadRequest(f'"{path}": this list is a set of strings or numbers')
    before = [] if _REPLACE_MARKER in patch else target
    merged: list[Any] = []
    for item in [*before, *values]:
        if _position(merged, item) is None:
            merged.append(item)
    wanted = values
    if order is not None:
        if not all(_is_primitive(value) for value in order):
            raise BadRequest(f'"{path}": "$setElementOrder" of a set must list its values')
        wanted = _checked_order(order, values, path)
    return _ordered(merged, wanted, before, key_of=lambda value: value)


def _keyed_elements(
    patch: list[Any], path: str, key: str
) -> tuple[bool, list[Any], list[dict[str, Any]]]:
    """Split the patch of a keyed list: does it replace the list, which keys does it delete,
    which elements does it merge."""
    replace, deleted, items = False, [], []
    for index, item in enumerate(patch):
        if not isinstance(item, dict):
            raise BadRequest(f'"{path}": element {index} is not an object')
        directive = item.get(DIRECTIVE)
        if directive == "replace":
            if item != _REPLACE_MARKER:
                raise BadRequest(
                    f'"{path}": a "$patch: replace" element replaces the whole list with the '
                    "other elements and must have no other fields"
                )
            replace = True
        elif key not in item:
            raise BadRequest(f'"{path}": element {index} has no "{key}", the merge key of the list')
        elif directive == "delete":
            deleted.append(item[key])
        elif directive in (None, "merge"):
            items.append(item)
        else:
            raise BadRequest(f'"{path}": unknown "$patch: {directive}": use {_USE}')
    return replace, deleted, items


def _order_keys(order: list[Any], key: str, path: str) -> list[Any]:
    if not all(isinstance(entry, dict) and key in entry for entry in order):
        raise BadRequest(f'"{path}": every "$setElementOrder" entry must give "{key}"')
    return [entry[key] for entry in order]


def _checked_order(order: list[Any], patched: list[Any], path: str) -> list[Any]:
    """``$setElementOrder`` must name every element the patch merges (Kubernetes checks it too)."""
    for value in patched:
        if _position(order, value) is None:
            raise BadRequest(f'"{path}": {value!r} is in the patch but not in "$setElementOrder"')
    return order


def _ordered(
    merged: list[Any], wanted: list[Any], before: list[Any], *, key_of: Callable[[Any], Any]
) -> list[Any]:
    """The merged elements in the order Kubernetes gives them: the ones ``wanted`` names in that
    order, the others (only in the target) in theirs; the two interleave where the target's own
    order relates them, and otherwise the target's elements come first."""
    named = [item for item in merged if _position(wanted, key_of(item)) is not None]
    named.sort(key=lambda item: _position(wanted, key_of(item)) or 0)
    others = [item for item in merged if _position(wanted, key_of(item)) is None]
    old_keys = [key_of(item) for item in before]
    result: list[Any] = []
    while named and others:
        mine, theirs = _position(old_keys, key_of(named[0])), _position(old_keys, key_of(others[0]))
        named_first = mine is not None and theirs is not None and mine < theirs
        result.append(named.pop(0) if named_first else others.pop(0))
    return [*result, *named, *others]


def _key_of(element: Any, key: str) -> Any:
    return element.get(key, _NO_KEY) if isinstance(element, dict) else _NO_KEY


def _position(values: list[Any], value: Any) -> int | None:
    """The index of the first of ``values`` JSON-equal to ``value``, or None."""
    if value is _NO_KEY:
        return None
    return next((i for i, item in enumerate(values) if json_equal(item, value)), None)


def _is_primitive(value: Any) -> bool:
    return not isinstance(value, dict | list)
