"""What Istio's objects have in common: the schema of known fields, and the value rules.

funcmesh serves a subset of Istio's API. Each kind describes the fields it implements as a
shape (objects, lists, maps, typed leaves); ``shape_causes`` walks an object against it and
names every field that is not implemented (``spec.http[0].corsPolicy is not supported by
funcmesh``) or has the wrong type, so nothing the user wrote is silently ignored. The per-kind
parsers then check values (durations, percentages, regexes, enums) with the helpers below and
collect one Cause per problem. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from funcmesh.errors import Cause
from funcmesh.model.durations import parse_duration_s
from funcmesh.model.kinds import ResourceType
from funcmesh.model.objects import metadata_causes, name_of, raise_if_causes


@dataclass(frozen=True, slots=True)
class Leaf:
    """A scalar: ``string``, ``integer``, ``number`` or ``boolean``."""

    type: str


@dataclass(frozen=True, slots=True)
class Obj:
    fields: Mapping[str, Shape]


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Shape


@dataclass(frozen=True, slots=True)
class MapOf:
    value: Shape


Shape = Union[Leaf, Obj, ListOf, MapOf]  # noqa: UP007 (a runtime alias, used in annotations)

STRING = Leaf("string")
INTEGER = Leaf("integer")
NUMBER = Leaf("number")
BOOLEAN = Leaf("boolean")
STRINGS = ListOf(STRING)
LABELS = MapOf(STRING)
PERCENT = Obj({"value": NUMBER})  # Istio's Percent message
STRING_MATCH = Obj({"exact": STRING, "prefix": STRING, "regex": STRING})
WORKLOAD_SELECTOR = Obj({"matchLabels": LABELS})

_TYPE_CHECKS: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
_TYPE_NAMES = {Obj: "an object", ListOf: "a list", MapOf: "a map"}
_DURATION = re.compile(r"(\d+(\.\d+)?(h|m|s|ms|us|µs|ns))+")
_MIN_DURATION_S = 0.001  # Istio refuses durations under a millisecond


def shape_causes(value: object, shape: Shape, path: str) -> list[Cause]:
    """Every field of ``value`` that ``shape`` does not know, and every value of the wrong
    type; ``None`` stands for an absent field (as in YAML ``field:`` with nothing after it)."""
    if value is None:
        return []
    if isinstance(shape, Leaf):
        if _TYPE_CHECKS[shape.type](value):
            return []
        return [Cause(field=path, message=f"must be a {shape.type}, got {value!r}")]
    wanted = dict if isinstance(shape, Obj | MapOf) else list
    if not isinstance(value, wanted):
        message = f"must be {_TYPE_NAMES[type(shape)]}, got {value!r}"
        return [Cause(field=path, message=message)]
    if isinstance(shape, ListOf):
        assert isinstance(value, list)
        return [
            c
            for i, item in enumerate(value)
            for c in shape_causes(item, shape.item, f"{path}[{i}]")
        ]
    assert isinstance(value, dict)
    if isinstance(shape, MapOf):
        return [c for k, v in value.items() for c in shape_causes(v, shape.value, f"{path}[{k}]")]
    causes = []
    for key, item in value.items():
        field = f"{path}.{key}"
        if key not in shape.fields:
            causes.append(_unsupported(field))
        else:
            causes.extend(shape_causes(item, shape.fields[key], field))
    return causes


def _unsupported(field: str) -> Cause:
    message = "field not supported by funcmesh (docs/mesh.md lists the fields it serves)"
    return Cause(field=field, message=message, reason="FieldValueNotSupported")


class Problems:
    """The causes found so far, and checks that add to them and return the parsed value."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def add(self, field: str, message: str, *, reason: str = "FieldValueInvalid") -> None:
        self.causes.append(Cause(field=field, message=message, reason=reason))

    def required(self, field: str, what: str = "") -> None:
        self.add(field, f"{what or 'a value'} is required", reason="FieldValueRequired")

    def duration_s(
        self, value: object, field: str, *, minimum_s: float = _MIN_DURATION_S
    ) -> float | None:
        """Seconds of an Istio duration (``1.5s``, ``100ms``, ``1m30s``), or None."""
        if not isinstance(value, str):
            return None  # absent, or already reported by shape_causes
        if not _DURATION.fullmatch(value):
            self.add(field, f'"{value}" is not a duration: write it with a unit, e.g. 1.5s, 100ms')
            return None
        seconds = _duration_s(value)
        if seconds < minimum_s:
            self.add(field, f'"{value}" is too short: the least is {minimum_s * 1000:g}ms')
            return None
        return seconds

    def percent(self, value: object, field: str) -> float | None:
        """The ``value`` of an Istio Percent (0-100), or None when absent or bad."""
        number = value.get("value") if isinstance(value, dict) else None
        if not isinstance(number, int | float) or isinstance(number, bool):
            return None
        if not 0 <= number <= 100:
            self.add(f"{field}.value", f"{number} is not a percentage between 0 and 100")
            return None
        return float(number)

    def one_of(
        self, value: object, field: str, allowed: tuple[str, ...], *, later: tuple[str, ...] = ()
    ) -> str | None:
        """``value`` when it is one of ``allowed``; Istio values funcmesh refuses are ``later``."""
        if not isinstance(value, str):
            return None
        if value in allowed:
            return value
        if value in later:
            self.add(field, f"{value} not supported by funcmesh", reason="FieldValueNotSupported")
        else:
            self.add(
                field,
                f'unknown value "{value}": use one of {", ".join(allowed)}',
                reason="FieldValueNotSupported",
            )
        return None

    def count(
        self, value: object, field: str, *, minimum: int = 0, maximum: int | None = None
    ) -> int | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if value < minimum or (maximum is not None and value > maximum):
            bound = (
                f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            )
            self.add(field, f"{value} must be {bound}")
            return None
        return value

    def port(self, value: object, field: str) -> int | None:
        return self.count(value, field, minimum=1, maximum=65535)

    def regex(self, value: str, field: str) -> None:
        try:
            re.compile(value)
        except re.error as exc:
            self.add(field, f'"{value}" is not a valid regular expression: {exc}')


def _duration_s(text: str) -> float:
    micro = text.replace("µs", "us")
    extra = {"us": 1e-6, "ns": 1e-9}
    total = 0.0
    for number, _, unit in re.findall(r"(\d+(\.\d+)?)(h|ms|m|s|us|ns)", micro):
        if unit in extra:
            total += float(number) * extra[unit]
        else:
            total += parse_duration_s(number + unit, what="duration")
    return total


def field_of(value: object, key: str) -> Any:
    """``value[key]`` when ``value`` is an object, else None (bad types are reported by
    ``shape_causes``; the value checks skip them)."""
    return value.get(key) if isinstance(value, dict) else None


def dict_of(value: object, key: str) -> dict[str, Any]:
    item = field_of(value, key)
    return item if isinstance(item, dict) else {}


def list_of(value: object, key: str) -> list[Any]:
    item = field_of(value, key)
    return item if isinstance(item, list) else []


def str_of(value: object, key: str) -> str:
    item = field_of(value, key)
    return item if isinstance(item, str) else ""


def strings_of(value: object, key: str) -> tuple[str, ...]:
    return tuple(item for item in list_of(value, key) if isinstance(item, str))


def labels_of_map(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, str)}


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    """Istio's StringMatch: one of exact, prefix or regex (Python ``re``, not RE2)."""

    kind: str  # "exact", "prefix" or "regex"
    value: str


def string_match(value: object, field: str, problems: Problems) -> StringMatch | None:
    if not isinstance(value, dict):
        return None
    kinds = [key for key in ("exact", "prefix", "regex") if isinstance(value.get(key), str)]
    if len(kinds) != 1:
        problems.add(field, "must have exactly one of exact, prefix or regex")
        return None
    text = value[kinds[0]]
    if kinds[0] == "regex":
        problems.regex(text, f"{field}.regex")
    return StringMatch(kind=kinds[0], value=text)


def spec_problems(
    obj: Mapping[str, Any], rt: ResourceType, shape: Obj
) -> tuple[dict[str, Any], Problems]:
    """The spec of ``obj`` and the problems of its envelope and of its fields' shapes. Any
    served version of the kind is accepted (they share one schema)."""
    envelope = {**obj, "apiVersion": None} if obj.get("apiVersion") in rt.api_versions else obj
    problems = Problems()
    problems.causes.extend(metadata_causes(envelope, rt))
    spec = obj.get("spec")
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        problems.causes.append(Cause(field="spec", message="spec must be an object"))
        return {}, problems
    problems.causes.extend(shape_causes(spec, shape, "spec"))
    return spec, problems


def raise_problems(problems: Problems, obj: Mapping[str, Any], rt: ResourceType) -> None:
    raise_if_causes(problems.causes, kind=rt.kind, name=name_of(obj))
