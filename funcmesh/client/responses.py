"""Typed views of the API's answers: lists, Tables, watch events, proxy answers, stats, config.

Each parser takes the decoded JSON of one answer and returns a frozen value, or raises
FuncmeshError when the answer does not have the shape the API promises. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import FuncmeshError
from funcmesh.model.objects import RawObject

RawObjects = list[RawObject]


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectList:
    """The items of a list answer and the resourceVersion to watch from."""

    items: RawObjects
    resource_version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TableColumn:
    name: str
    priority: int = 0
    type: str = "string"


@dataclass(frozen=True, slots=True, kw_only=True)
class TableRow:
    cells: tuple[Any, ...]
    object: RawObject


@dataclass(frozen=True, slots=True, kw_only=True)
class Table:
    """A ``meta.k8s.io/v1`` Table: what the server says a human should see."""

    columns: tuple[TableColumn, ...]
    rows: tuple[TableRow, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEvent:
    type: str
    object: RawObject


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyResponse:
    """A function's answer through the API service proxy, as the function gave it."""

    status: int
    reason_phrase: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionStats:
    calls: int
    failures: int
    p50_ms: float | None
    p99_ms: float | None
    instances: int
    cold_starts: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeInfo:
    id: str
    language: str
    version: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    version: str
    runtimes: tuple[RuntimeInfo, ...]
    dns_address: str = ""  # HOST:PORT of the daemon's DNS server ("" from older daemons)


def parse_object(value: Any, *, what: str) -> RawObject:
    if not isinstance(value, dict):
        raise _malformed(what, "an object")
    return value


def parse_list(value: Any, *, what: str) -> ObjectList:
    body = parse_object(value, what=what)
    items = body.get("items")
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise _malformed(what, "a list with items")
    meta = body.get("metadata") or {}
    return ObjectList(items=items, resource_version=str(meta.get("resourceVersion") or ""))


def parse_table(value: Any, *, what: str) -> Table:
    body = parse_object(value, what=what)
    if body.get("kind") != "Table":
        raise _malformed(what, "a meta.k8s.io Table")
    columns = tuple(
        TableColumn(
            name=str(column.get("name") or ""),
            priority=int(column.get("priority") or 0),
            type=str(column.get("type") or "string"),
        )
        for column in body.get("columnDefinitions") or []
        if isinstance(column, dict)
    )
    rows = tuple(
        TableRow(cells=tuple(row.get("cells") or ()), object=row.get("object") or {})
        for row in body.get("rows") or []
        if isinstance(row, dict)
    )
    return Table(columns=columns, rows=rows)


def parse_watch_event(value: Any) -> WatchEvent:
    body = parse_object(value, what="watch event")
    return WatchEvent(type=str(body.get("type") or ""), object=body.get("object") or {})


def parse_function_stats(value: Any, *, what: str) -> FunctionStats:
    body = parse_object(value, what=what)
    return FunctionStats(
        calls=int(body.get("calls") or 0),
        failures=int(body.get("failures") or 0),
        p50_ms=_optional_float(body.get("p50_ms")),
        p99_ms=_optional_float(body.get("p99_ms")),
        instances=int(body.get("instances") or 0),
        cold_starts=int(body.get("coldStarts") or 0),
    )


def parse_server_config(value: Any) -> ServerConfig:
    body = parse_object(value, what="server config")
    runtimes = tuple(
        RuntimeInfo(
            id=str(item.get("id") or ""),
            language=str(item.get("language") or ""),
            version=str(item.get("version") or ""),
        )
        for item in body.get("runtimes") or []
        if isinstance(item, dict)
    )
    return ServerConfig(
        version=str(body.get("version") or ""),
        runtimes=runtimes,
        dns_address=str(body.get("dnsAddress") or ""),
    )


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _malformed(what: str, expected: str) -> FuncmeshError:
    return FuncmeshError(f"the funcmesh API answered {what} with something other than {expected}")
