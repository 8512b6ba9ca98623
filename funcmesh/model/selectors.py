"""Label selectors: the ``-l`` syntax and ``matchLabels``/``matchExpressions``, and matching."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Invalid


@dataclass(frozen=True, slots=True, kw_only=True)
class Requirement:
    """One clause: ``key op values`` with op in =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        match self.op:
            case "exists":
                return present
            case "!exists":
                return not present
            case "in" | "=":
                return present and labels[self.key] in self.values
            case _:  # "notin" and "!="
                return not present or labels[self.key] not in self.values


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """All requirements must hold; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(req.matches(labels) for req in self.requirements)


_SET_CLAUSE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def parse_selector(text: str) -> Selector:
    """Parse ``app=web,tier!=db,env in (a,b),!legacy``."""
    requirements = [_parse_clause(clause) for clause in _split_clauses(text) if clause.strip()]
    return Selector(requirements=tuple(requirements))


def _split_clauses(text: str) -> list[str]:
    clauses: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            clauses.append("".join(current))
            current = []
        else:
            current.append(char)
    clauses.append("".join(current))
    return clauses


def _parse_clause(clause: str) -> Requirement:
    if match := _SET_CLAUSE.match(clause):
        values = frozenset(v.strip() for v in match.group(3).split(",") if v.strip())
        return Requirement(key=match.group(1), op=match.group(2), values=values)
    for op, name in (("!=", "!="), ("==", "="), ("=", "=")):
        if op in clause:
            key, _, value = clause.partition(op)
            return Requirement(key=key.strip(), op=name, values=frozenset({value.strip()}))
    key = clause.strip()
    if key.startswith("!"):
        return Requirement(key=key[1:], op="!exists")
    if not key or " " in key:
        raise Invalid(f'unable to parse requirement "{clause}" of the label selector')
    return Requirement(key=key, op="exists")


def selector_from_spec(spec: Mapping[str, Any]) -> Selector:
    """Build a selector from a Kubernetes ``LabelSelector`` (matchLabels + matchExpressions)."""
    requirements = [
        Requirement(key=key, op="=", values=frozenset({str(value)}))
        for key, value in (spec.get("matchLabels") or {}).items()
    ]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in spec.get("matchExpressions") or []:
        if expr.get("operator") not in ops:
            raise Invalid(f'unknown label selector operator "{expr.get("operator")}"')
        values = frozenset(str(v) for v in expr.get("values") or [])
        requirements.append(Requirement(key=expr["key"], op=ops[expr["operator"]], values=values))
    return Selector(requirements=tuple(requirements))
