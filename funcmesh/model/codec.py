"""Manifests in and out: multi-document YAML or JSON to raw objects, and back.

The YAML library lives here (and in cli/k8s); everything else works on plain dicts.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from funcmesh.errors import Invalid
from funcmesh.model.objects import RawObject


def load_manifests(text: str, *, source: str = "<input>") -> list[RawObject]:
    """Every object in ``text``: YAML documents (``---``), JSON, and ``kind: List`` items."""
    try:
        documents = list(yaml.load_all(text, Loader=_PlainLoader))  # SafeLoader subclass
    except yaml.YAMLError as exc:
        raise Invalid(f"{source}: invalid YAML or JSON: {_describe_yaml_error(exc)}") from exc
    objects: list[RawObject] = []
    for index, document in enumerate(documents):
        if document is None:
            continue
        if not isinstance(document, dict):
            raise Invalid(
                f"{source}: document {index + 1} is not an object (got {type(document).__name__})"
            )
        if document.get("kind") == "List" or (
            str(document.get("kind", "")).endswith("List") and "items" in document
        ):
            objects.extend(_list_items(document, source))
        else:
            objects.append(_check_envelope(document, source, index))
    return objects


def _list_items(document: dict[str, Any], source: str) -> list[RawObject]:
    items = document.get("items") or []
    if not isinstance(items, list):
        raise Invalid(f"{source}: items of a List must be a list")
    return [_check_envelope(item, source, i) for i, item in enumerate(items)]


def _check_envelope(document: Any, source: str, index: int) -> RawObject:
    if not isinstance(document, dict):
        raise Invalid(f"{source}: item {index + 1} is not an object")
    for field in ("apiVersion", "kind"):
        if not isinstance(document.get(field), str) or not document[field]:
            raise Invalid(f"{source}: document {index + 1} has no {field}")
    return document


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def load_json_object(text: str | bytes, *, source: str = "request body") -> RawObject:
    """One JSON object, or Invalid saying what is wrong with it."""
    try:
        value = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(f"{source} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise Invalid(f"{source} must be a JSON object")
    return value


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so function code stays readable in ``-o yaml``."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # no &id001 anchors when two fields share one value


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(value: Any) -> str:
    return yaml.dump(value, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


def dump_yaml_documents(values: list[Any]) -> str:
    return "---\n".join(dump_yaml(value) for value in values)


def dump_json(value: Any) -> str:
    return json.dumps(value, indent=2)


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader without the timestamp rule: ``2021-05-03T11:31:53Z`` stays a string, as in
    Kubernetes, instead of becoming a datetime that JSON cannot carry."""


_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml_object(text: str | bytes, *, source: str = "request body") -> RawObject:
    """One YAML (or JSON) mapping, or Invalid saying what is wrong with it."""
    try:
        value = yaml.load(text, Loader=_PlainLoader)  # a SafeLoader subclass: no arbitrary tags
    except yaml.YAMLError as exc:
        raise Invalid(f"{source} is not valid YAML: {_describe_yaml_error(exc)}") from exc
    if not isinstance(value, dict):
        raise Invalid(f"{source} must be a YAML mapping, got {type(value).__name__}")
    return value
