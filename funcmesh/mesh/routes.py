"""VirtualService routes compiled for the data plane: which route a request takes, and where to.

``compile_virtual_service`` turns a validated VirtualServiceSpec into ``CompiledRoute`` values,
per host it names; ``HostRoutes`` holds the ordered routes of one host (from one or several
VirtualServices) and answers ``select`` on the raw request parts, without building a request
object: each HTTPMatchRequest is precompiled into a few checks on bytes (uri on the path without
its query, method, port, headers), so a request costs a short loop of comparisons; the header
and query tables are built lazily, once per ``select``, and only when a candidate match needs
them. What ``select`` returns (a ``Selected``) is built once per match at compile time, so
selection allocates nothing but the split of the target.

Envoy's semantics where Istio leaves them to Envoy: header names compare case-insensitively and
values exactly; a header sent several times is matched against its values joined with ","; an
absent header does not match; regexes are full matches (Envoy's safe_regex); query parameters
match the percent-decoded value of their first occurrence ("+" is kept, as Envoy does).
Regexes run on bytes when they are ASCII (RE2's ``\\w`` and ``\\d`` are ASCII too), on the
UTF-8 decoded text otherwise (or when they use a text-only construct such as ``(?u)``).

Retries: Istio's default when ``retries`` is absent is 2 attempts on "connect-failure,
refused-stream,unavailable,cancelled,retriable-status-codes"; funcmesh speaks HTTP/1.1 to its
members, where the gRPC and HTTP/2 conditions never arise, so the default is 2 attempts on
("connect-failure", "reset"); ``attempts: 0`` means no retries (``retries`` None). Nothing
here checks that a destination host or subset exists: the data plane answers 503 for those.
No I/O, no logging, no clock.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TypeVar
from urllib.parse import unquote

from funcmesh.mesh.hosts import qualify, service_of
from funcmesh.model.istio_fields import StringMatch
from funcmesh.model.istio_networking import (
    Destination,
    Fault,
    HeaderOperations,
    HttpMatch,
    HttpRoute,
    Retries,
    VirtualServiceSpec,
)

DEFAULT_RETRIES = Retries(attempts=2, per_try_timeout_s=None, retry_on=("connect-failure", "reset"))

BytesCheck = Callable[[bytes], object]  # truthy when the value matches
TextCheck = Callable[[str], object]
_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True, kw_only=True)
class WeightedDestination:
    """Where a route sends a share of its requests; ``host`` is a full name."""

    host: str
    service: tuple[str, str] | None  # (namespace, name) when host is a cluster Service
    subset: str
    port: int | None
    weight: int  # percent


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledMatch:
    """One HTTPMatchRequest as checks; every one that is set must hold."""

    port: int | None = None
    method: BytesCheck | None = None
    path: BytesCheck | None = None
    uri_prefix: bytes | None = None  # set for a uri prefix match: what a rewrite replaces
    headers: tuple[tuple[bytes, BytesCheck], ...] = ()
    query: tuple[tuple[str, TextCheck], ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledHeaders:
    """A route's header operations as the data plane applies them, in Istio's order: remove,
    then set (replacing every value of the name), then add; names and values encoded once."""

    operations: HeaderOperations  # as the VirtualService gave them
    drop: frozenset[bytes] = field(init=False)  # lower-case names removed (by remove and set)
    append: tuple[tuple[bytes, bytes], ...] = field(init=False)  # set's, then add's
    active: bool = field(init=False)  # False: no operation, the headers pass as they are

    def __post_init__(self) -> None:
        operations = self.operations
        drop = {name.lower().encode() for name in operations.remove}
        drop.update(name.lower().encode() for name, _ in operations.set)
        append = [(n.encode(), v.encode()) for n, v in (*operations.set, *operations.add)]
        object.__setattr__(self, "drop", frozenset(drop))
        object.__setattr__(self, "append", tuple(append))
        object.__setattr__(self, "active", bool(drop or append))

    def apply(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        drop = self.drop
        if drop:
            result = [header for header in headers if header[0].lower() not in drop]
        else:
            result = list(headers)
        result += self.append
        return result


NO_HEADER_OPERATIONS = CompiledHeaders(HeaderOperations())


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRoute:
    """One HTTPRoute of a VirtualService, ready for the data plane."""

    virtual_service: tuple[str, str]  # (namespace, name)
    name: str
    matches: tuple[CompiledMatch, ...]  # empty: every request
    destinations: tuple[WeightedDestination, ...]
    timeout_s: float | None  # None: no timeout ("0s" too, as Istio)
    retries: Retries | None  # None: no retries
    fault: Fault | None
    rewrite_uri: bytes  # b"": the path is kept
    rewrite_authority: str
    request_headers: CompiledHeaders
    response_headers: CompiledHeaders
    mirror: WeightedDestination | None
    mirror_percent: float  # 0-100; 0 when there is no mirror
    _cumulative: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = accumulate(d.weight for d in self.destinations)
        object.__setattr__(self, "_cumulative", tuple(weights))

    def pick(self, draw: float) -> WeightedDestination:
        """The destination for a uniform ``draw`` in [0, 1), by the weights (percentages)."""
        destinations = self.destinations
        if len(destinations) == 1:
            return destinations[0]
        cumulative = self._cumulative
        index = bisect_right(cumulative, draw * cumulative[-1])
        return destinations[min(index, len(destinations) - 1)]


@dataclass(frozen=True, slots=True)
class Selected:
    """The route a request takes, and how its target is rewritten."""

    route: CompiledRoute
    matched_prefix: bytes | None = None  # the uri prefix of the match that held

    def target(self, original: bytes) -> bytes:
        """The request target to send: ``rewrite.uri`` replaces the matched uri prefix, or the
        whole path when the match was exact, regex or had no uri; the query string is kept."""
        rewrite = self.route.rewrite_uri
        if not rewrite:
            return original
        path, mark, query = original.partition(b"?")
        prefix = self.matched_prefix
        if prefix is not None:
            return rewrite + path[len(prefix) :] + mark + query
        return rewrite + mark + query


class HostRoutes:
    """The ordered routes of one host: by (namespace, name) of their VirtualService, then in
    the order the VirtualService lists them."""

    __slots__ = ("_candidates", "routes")

    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self.routes = tuple(sorted(routes, key=lambda route: route.virtual_service))
        candidates: list[tuple[Selected, CompiledMatch | None]] = []
        for route in self.routes:
            if not route.matches:
                candidates.append((Selected(route), None))
            for match in route.matches:
                candidates.append((Selected(route, match.uri_prefix), match))
        self._candidates = tuple(candidates)

    def __repr__(self) -> str:
        names = ", ".join(f"{r.virtual_service[0]}/{r.virtual_service[1]}" for r in self.routes)
        return f"HostRoutes({names})"

    def select(
        self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], port: int
    ) -> Selected | None:
        """The first route with a match that holds (a route without match takes every
        request), or None. ``target`` is origin-form; ``port`` is the port the request
        arrived on (0: unknown, and a match on port fails)."""
        path = target.partition(b"?")[0]
        header_table: dict[bytes, bytes] | None = None
        params: dict[str, str] | None = None
        for selected, match in self._candidates:
            if match is None:
                return selected
            if match.port is not None and match.port != port:
                continue
            if match.method is not None and not match.method(method):
                continue
            if match.path is not None and not match.path(path):
                continue
            if match.headers:
                if header_table is None:
                    header_table = header_table_of(headers)
                if not _all_hold(match.headers, header_table):
                    continue
            if match.query:
                if params is None:
                    params = query_params_of(target)
                if not _all_hold(match.query, params):
                    continue
            return selected
        return None


def _all_hold(
    checks: tuple[tuple[_K, Callable[[_V], object]], ...], values: Mapping[_K, _V]
) -> bool:
    for key, check in checks:
        value = values.get(key)
        if value is None or not check(value):
            return False
    return True


def header_table_of(headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Header values by lower-case name; repeated headers joined with "," (as Envoy)."""
    table: dict[bytes, bytes] = {}
    for name, value in headers:
        key = name.lower()
        old = table.get(key)
        table[key] = value if old is None else old + b"," + value
    return table


def query_params_of(target: bytes) -> dict[str, str]:
    """The percent-decoded value of each query parameter's first occurrence."""
    query = target.partition(b"?")[2]
    params: dict[str, str] = {}
    if not query:
        return params
    for pair in query.decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        key = unquote(name)
        if key and key not in params:
            params[key] = unquote(value)
    return params


# compiling


def compile_virtual_service(spec: VirtualServiceSpec) -> dict[str, list[CompiledRoute]]:
    """The routes of ``spec`` per full host name it names."""
    vs = (spec.namespace, spec.name)
    routes = [compile_route(route, vs) for route in spec.http]
    return {qualify(host, spec.namespace): list(routes) for host in spec.hosts}


def compile_route(route: HttpRoute, virtual_service: tuple[str, str]) -> CompiledRoute:
    namespace = virtual_service[0]
    mirror = route.mirror
    return CompiledRoute(
        virtual_service=virtual_service,
        name=route.name,
        matches=tuple(compile_match(match) for match in route.match),
        destinations=tuple(
            weighted(entry.destination, namespace, entry.weight) for entry in route.route
        ),
        timeout_s=route.timeout_s or None,
        retries=_retries(route.retries),
        fault=route.fault,
        rewrite_uri=route.rewrite_uri.encode(),
        rewrite_authority=route.rewrite_authority,
        request_headers=CompiledHeaders(route.request_headers),
        response_headers=CompiledHeaders(route.response_headers),
        mirror=None if mirror is None else weighted(mirror, namespace, 100),
        mirror_percent=0.0 if mirror is None else route.mirror_percent,
    )


def weighted(destination: Destination, namespace: str, weight: int) -> WeightedDestination:
    host = qualify(destination.host, namespace)
    return WeightedDestination(
        host=host,
        service=service_of(host),
        subset=destination.subset,
        port=destination.port,
        weight=weight,
    )


def _retries(retries: Retries | None) -> Retries | None:
    if retries is None:
        return DEFAULT_RETRIES
    if retries.attempts <= 0:
        return None
    if not retries.retry_on:
        return Retries(
            attempts=retries.attempts,
            per_try_timeout_s=retries.per_try_timeout_s,
            retry_on=DEFAULT_RETRIES.retry_on,
        )
    return retries


def compile_match(match: HttpMatch) -> CompiledMatch:
    uri = match.uri
    return CompiledMatch(
        port=match.port,
        method=None if match.method is None else bytes_check(match.method),
        path=None if uri is None else bytes_check(uri),
        uri_prefix=uri.value.encode() if uri is not None and uri.kind == "prefix" else None,
        headers=tuple((name.encode(), bytes_check(m)) for name, m in match.headers),
        query=tuple((name, text_check(m)) for name, m in match.query_params),
    )


def bytes_check(match: StringMatch) -> BytesCheck:
    if match.kind == "regex":
        if match.value.isascii():
            try:
                return re.compile(match.value.encode()).fullmatch
            except re.error:  # a text-only construct, e.g. the (?u) flag
                pass
        pattern = re.compile(match.value)
        return lambda value: pattern.fullmatch(value.decode("utf-8", "surrogateescape"))
    expected = match.value.encode()
    if match.kind == "prefix":
        return lambda value: value.startswith(expected)
    return expected.__eq__


def text_check(match: StringMatch) -> TextCheck:
    if match.kind == "regex":
        return re.compile(match.value).fullmatch
    expected = match.value
    if match.kind == "prefix":
        return lambda value: value.startswith(expected)
    return expected.__eq__
