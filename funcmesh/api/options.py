"""Query parameters of list, watch and write requests, and list pagination.

Parses ``labelSelector``, ``fieldSelector``, ``limit``/``continue``, ``resourceVersion``,
``watch``, ``timeoutSeconds``, ``sendInitialEvents``, ``includeObject`` and ``dryRun`` into one
value; malformed ones are a BadRequest naming the parameter. Parameters kubectl sends that
change nothing here (``fieldManager``, ``fieldValidation``, ``allowWatchBookmarks``, ...) are
accepted and ignored. This module is pure.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from funcmesh.api.status import BadRequest
from funcmesh.errors import Invalid
from funcmesh.model.objects import RawObject, labels_of, name_of, namespace_of
from funcmesh.model.selectors import Selector, parse_selector

DEFAULT_WATCH_TIMEOUT_S = 1800.0  # Kubernetes closes watches after 30-60 minutes too
_TRUE = frozenset({"true", "1"})
_INCLUDE_OBJECT = frozenset({"None", "Metadata", "Object"})


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldRequirement:
    """``metadata.name=x`` or ``status.phase!=Running``."""

    path: tuple[str, ...]
    value: str
    negate: bool = False

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return (_field_text(obj, self.path) == self.value) != self.negate


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        return all(req.matches(obj) for req in self.requirements)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListOptions:
    label_selector: Selector = field(default_factory=Selector)
    field_selector: FieldSelector = field(default_factory=FieldSelector)
    limit: int | None = None
    continue_token: str | None = None
    resource_version: int | None = None  # None: "from the current state"
    watch: bool = False
    timeout_s: float = DEFAULT_WATCH_TIMEOUT_S
    send_initial_events: bool = False
    include_object: str = "Metadata"
    dry_run: bool = False

    def matches(self, obj: RawObject) -> bool:
        return self.label_selector.matches(labels_of(obj)) and self.field_selector.matches(obj)


def parse_list_options(query: Mapping[str, str]) -> ListOptions:
    include_object = query.get("includeObject") or "Metadata"
    if include_object not in _INCLUDE_OBJECT:
        raise BadRequest(f'includeObject must be None, Metadata or Object, got "{include_object}"')
    timeout_s = _positive_int(query, "timeoutSeconds")
    return ListOptions(
        label_selector=_label_selector(query.get("labelSelector") or ""),
        field_selector=parse_field_selector(query.get("fieldSelector") or ""),
        limit=_positive_int(query, "limit"),
        continue_token=query.get("continue") or None,
        resource_version=_resource_version(query.get("resourceVersion") or ""),
        watch=query.get("watch", "").lower() in _TRUE,
        timeout_s=float(timeout_s) if timeout_s else DEFAULT_WATCH_TIMEOUT_S,
        send_initial_events=query.get("sendInitialEvents", "").lower() in _TRUE,
        include_object=include_object,
        dry_run=bool(query.get("dryRun")),
    )


def _label_selector(text: str) -> Selector:
    try:
        return parse_selector(text)
    except Invalid as exc:
        raise BadRequest(f"labelSelector: {exc}") from exc


def parse_field_selector(text: str) -> FieldSelector:
    clauses = filter(None, (c.strip() for c in text.split(",")))
    return FieldSelector(requirements=tuple(_field_requirement(c) for c in clauses))


def _field_requirement(clause: str) -> FieldRequirement:
    for op, negate in (("!=", True), ("==", False), ("=", False)):
        key, found, value = clause.partition(op)
        if found and key.strip():
            path = tuple(key.strip().split("."))
            return FieldRequirement(path=path, value=value.strip(), negate=negate)
    raise BadRequest(f'fieldSelector: "{clause}" is not of the form field=value')


def _field_text(obj: Mapping[str, Any], path: Sequence[str]) -> str:
    value: Any = obj
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)


def _positive_int(query: Mapping[str, str], name: str) -> int | None:
    text = query.get(name)
    if not text:
        return None
    if not text.isdigit():
        raise BadRequest(f'{name} must be a non-negative integer, got "{text}"')
    return int(text) or None


def _resource_version(text: str) -> int | None:
    if not text:
        return None
    if not text.isdigit():
        raise BadRequest(f'resourceVersion must be a number, got "{text}"')
    return int(text) or None


# pagination


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    items: list[RawObject]
    continue_token: str | None
    remaining: int


def paginate(
    items: list[RawObject], *, limit: int | None, continue_token: str | None, resource_version: str
) -> Page:
    """One page of ``items`` (sorted by namespace and name), and the token for the next one."""
    if continue_token:
        after = _decode_continue(continue_token)
        items = [item for item in items if _key(item) > after]
    if limit is None or len(items) <= limit:
        return Page(items=items, continue_token=None, remaining=0)
    page = items[:limit]
    token = _encode_continue(resource_version, _key(page[-1]))
    return Page(items=page, continue_token=token, remaining=len(items) - limit)


def _key(obj: RawObject) -> tuple[str, str]:
    return namespace_of(obj), name_of(obj)


def _encode_continue(resource_version: str, after: tuple[str, str]) -> str:
    raw = json.dumps({"rv": resource_version, "after": list(after)}).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _decode_continue(token: str) -> tuple[str, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        namespace, name = value["after"]
        return str(namespace), str(name)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise BadRequest("continue: the token is malformed; list again without it") from exc
