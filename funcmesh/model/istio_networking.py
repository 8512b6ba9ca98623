"""Istio's VirtualService: the subset funcmesh serves, validated field by field, as typed values.

Field names are Istio's (networking.istio.io, VirtualService/HTTPRoute/HTTPMatchRequest). A
field funcmesh does not implement is refused by name (istio_fields.shape_causes), never ignored.
Value rules follow Istio's validation: at least one host; with more than one destination the
weights must sum to 100 (a single destination may omit its weight); durations carry a unit;
percentages are 0-100; regexes must compile (Python's ``re``, which is close to, not the same
as, Envoy's RE2). Whether a destination host exists is not checked here: a VirtualService may
name a host before it exists, as in Istio. No I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.model.istio_fields import (
    INTEGER,
    LABELS,
    PERCENT,
    STRING,
    STRING_MATCH,
    STRINGS,
    ListOf,
    MapOf,
    Obj,
    Problems,
    StringMatch,
    dict_of,
    field_of,
    list_of,
    raise_problems,
    spec_problems,
    str_of,
    string_match,
    strings_of,
)
from funcmesh.model.kinds import VIRTUAL_SERVICE
from funcmesh.model.objects import name_of, namespace_of

# Envoy's x-envoy-retry-on conditions funcmesh implements (numeric status codes are accepted too)
RETRY_CONDITIONS = ("5xx", "gateway-error", "connect-failure", "reset", "retriable-4xx")
_LATER_RETRY_CONDITIONS = (
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)

DESTINATION = Obj({"host": STRING, "subset": STRING, "port": Obj({"number": INTEGER})})
_HEADER_OPERATIONS = Obj({"set": LABELS, "add": LABELS, "remove": STRINGS})
_MATCH = Obj(
    {
        "name": STRING,
        "uri": STRING_MATCH,
        "method": STRING_MATCH,
        "headers": MapOf(STRING_MATCH),
        "queryParams": MapOf(STRING_MATCH),
        "port": INTEGER,
    }
)
_HTTP_ROUTE = Obj(
    {
        "name": STRING,
        "match": ListOf(_MATCH),
        "route": ListOf(Obj({"destination": DESTINATION, "weight": INTEGER})),
        "timeout": STRING,
        "retries": Obj({"attempts": INTEGER, "perTryTimeout": STRING, "retryOn": STRING}),
        "fault": Obj(
            {
                "delay": Obj({"fixedDelay": STRING, "percentage": PERCENT}),
                "abort": Obj({"httpStatus": INTEGER, "percentage": PERCENT}),
            }
        ),
        "rewrite": Obj({"uri": STRING, "authority": STRING}),
        "headers": Obj({"request": _HEADER_OPERATIONS, "response": _HEADER_OPERATIONS}),
        "mirror": DESTINATION,
        "mirrorPercentage": PERCENT,
    }
)
VIRTUAL_SERVICE_SHAPE = Obj({"hosts": STRINGS, "gateways": STRINGS, "http": ListOf(_HTTP_ROUTE)})


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDestination:
    destination: Destination
    weight: int  # 100 for a lone destination


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpMatch:
    """One match block: its conditions are ANDed (blocks of a route are ORed)."""

    uri: StringMatch | None = None
    method: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # names in lower case
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    attempts: int
    per_try_timeout_s: float | None
    retry_on: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    delay_s: float | None = None
    delay_percent: float = 100.0
    abort_status: int | None = None
    abort_percent: float = 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderOperations:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRoute:
    name: str
    match: tuple[HttpMatch, ...]  # empty: every request
    route: tuple[RouteDestination, ...]
    timeout_s: float | None  # None or 0 ("0s"): no timeout, Istio's default
    retries: Retries | None
    fault: Fault | None
    rewrite_uri: str
    rewrite_authority: str
    request_headers: HeaderOperations
    response_headers: HeaderOperations
    mirror: Destination | None
    mirror_percent: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualServiceSpec:
    namespace: str
    name: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]  # empty: "mesh" (the Services' VIPs and the service proxy)
    http: tuple[HttpRoute, ...]


def parse_virtual_service(obj: Mapping[str, Any]) -> VirtualServiceSpec:
    """The typed view of a VirtualService, or Invalid with one cause per problem."""
    spec, problems = spec_problems(obj, VIRTUAL_SERVICE, VIRTUAL_SERVICE_SHAPE)
    hosts = strings_of(spec, "hosts")
    if not hosts:
        problems.required("spec.hosts", "at least one host")
    if not list_of(spec, "http"):
        problems.required("spec.http", "at least one http route")
    routes = tuple(
        _http_route(route, f"spec.http[{i}]", problems)
        for i, route in enumerate(list_of(spec, "http"))
    )
    raise_problems(problems, obj, VIRTUAL_SERVICE)
    return VirtualServiceSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        hosts=hosts,
        gateways=strings_of(spec, "gateways"),
        http=routes,
    )


def _http_route(route: object, field: str, problems: Problems) -> HttpRoute:
    headers = dict_of(route, "headers")
    mirror = field_of(route, "mirror")
    return HttpRoute(
        name=str_of(route, "name"),
        match=tuple(
            _match(match, f"{field}.match[{i}]", problems)
            for i, match in enumerate(list_of(route, "match"))
        ),
        route=_destinations(list_of(route, "route"), f"{field}.route", problems),
        timeout_s=problems.duration_s(field_of(route, "timeout"), f"{field}.timeout", minimum_s=0),
        retries=_retries(field_of(route, "retries"), f"{field}.retries", problems),
        fault=_fault(field_of(route, "fault"), f"{field}.fault", problems),
        rewrite_uri=str_of(field_of(route, "rewrite"), "uri"),
        rewrite_authority=str_of(field_of(route, "rewrite"), "authority"),
        request_headers=_header_operations(headers.get("request")),
        response_headers=_header_operations(headers.get("response")),
        mirror=_destination(mirror, f"{field}.mirror", problems) if mirror is not None else None,
        mirror_percent=_mirror_percent(route, field, problems),
    )


def _mirror_percent(route: object, field: str, problems: Problems) -> float:
    value = field_of(route, "mirrorPercentage")
    if value is not None and field_of(route, "mirror") is None:
        problems.add(f"{field}.mirrorPercentage", "needs a mirror")
    percent = problems.percent(value, f"{field}.mirrorPercentage")
    return 100.0 if percent is None else percent


def _match(match: object, field: str, problems: Problems) -> HttpMatch:
    def matches(key: str) -> tuple[tuple[str, StringMatch], ...]:
        found = []
        for name, value in dict_of(match, key).items():
            parsed = string_match(value, f"{field}.{key}[{name}]", problems)
            if parsed is not None:
                found.append((name.lower() if key == "headers" else name, parsed))
        return tuple(found)

    uri, method = field_of(match, "uri"), field_of(match, "method")
    return HttpMatch(
        uri=string_match(uri, f"{field}.uri", problems),
        method=string_match(method, f"{field}.method", problems),
        headers=matches("headers"),
        query_params=matches("queryParams"),
        port=problems.port(field_of(match, "port"), f"{field}.port"),
    )


def _destinations(
    entries: list[Any], field: str, problems: Problems
) -> tuple[RouteDestination, ...]:
    if not entries:
        problems.required(field, "at least one destination")
        return ()
    weights = [field_of(entry, "weight") for entry in entries]
    for i, weight in enumerate(weights):
        problems.count(weight, f"{field}[{i}].weight", maximum=100)
    numbers = [w if isinstance(w, int) and not isinstance(w, bool) else 0 for w in weights]
    if len(entries) > 1 and sum(numbers) != 100:
        problems.add(
            f"{field}[*].weight",
            f"the weights of the destinations sum to {sum(numbers)}, not 100",
        )
    return tuple(
        RouteDestination(
            destination=_destination(
                field_of(entry, "destination"), f"{field}[{i}].destination", problems
            ),
            weight=100 if len(entries) == 1 else numbers[i],
        )
        for i, entry in enumerate(entries)
    )


def _destination(value: object, field: str, problems: Problems) -> Destination:
    host = str_of(value, "host")
    if not host:
        problems.required(f"{field}.host", "a host")
    port = field_of(field_of(value, "port"), "number")
    return Destination(
        host=host,
        subset=str_of(value, "subset"),
        port=problems.port(port, f"{field}.port.number"),
    )


def _retries(value: object, field: str, problems: Problems) -> Retries | None:
    if not isinstance(value, dict):
        return None
    attempts = problems.count(value.get("attempts"), f"{field}.attempts")
    conditions = tuple(c.strip() for c in str_of(value, "retryOn").split(",") if c.strip())
    for condition in conditions:
        if not condition.isdigit():
            problems.one_of(
                condition, f"{field}.retryOn", RETRY_CONDITIONS, later=_LATER_RETRY_CONDITIONS
            )
        elif not 100 <= int(condition) <= 599:
            problems.add(f"{field}.retryOn", f"{condition} is not an HTTP status code")
    return Retries(
        attempts=attempts or 0,
        per_try_timeout_s=problems.duration_s(value.get("perTryTimeout"), f"{field}.perTryTimeout"),
        retry_on=conditions,
    )


def _fault(value: object, field: str, problems: Problems) -> Fault | None:
    if not isinstance(value, dict):
        return None
    delay, abort = dict_of(value, "delay"), dict_of(value, "abort")
    if not delay and not abort:
        problems.add(field, "needs a delay or an abort")
    if delay and "fixedDelay" not in delay:
        problems.required(f"{field}.delay.fixedDelay", "a fixedDelay")
    if abort and "httpStatus" not in abort:
        problems.required(f"{field}.abort.httpStatus", "an httpStatus")
    delay_percent = problems.percent(delay.get("percentage"), f"{field}.delay.percentage")
    abort_percent = problems.percent(abort.get("percentage"), f"{field}.abort.percentage")
    return Fault(
        delay_s=problems.duration_s(delay.get("fixedDelay"), f"{field}.delay.fixedDelay"),
        delay_percent=100.0 if delay_percent is None else delay_percent,
        abort_status=problems.count(
            abort.get("httpStatus"), f"{field}.abort.httpStatus", minimum=200, maximum=599
        ),
        abort_percent=100.0 if abort_percent is None else abort_percent,
    )


def _header_operations(value: object) -> HeaderOperations:
    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        return tuple((k.lower(), v) for k, v in dict_of(value, key).items() if isinstance(v, str))

    return HeaderOperations(
        set=pairs("set"),
        add=pairs("add"),
        remove=tuple(name.lower() for name in strings_of(value, "remove")),
    )
