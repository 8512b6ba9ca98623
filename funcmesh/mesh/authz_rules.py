"""AuthorizationPolicy rules compiled for the per-request check.

``compile_policy`` turns a validated AuthorizationPolicySpec into a ``CompiledPolicy`` whose
``matches(peer, request)`` runs a short loop of precompiled checks: string sets, prefix and
suffix tuples, port sets, CIDR blocks as integers; nothing is parsed per request but the
caller's address (cached).

Istio's semantics (security/v1beta1/authorization_policy.proto):

- A rule matches when one of its sources, one of its operations and all its conditions match;
  a rule without any is always matched. Fields of a source or operation are ANDed; a field
  matches when the value is among ``values`` (or those are empty) and not among its ``not``
  twin.
- Strings match exactly, by prefix ("abc*"), by suffix ("*abc") or by presence ("*": any
  non-empty value). An absent value (no principal when the caller presented no mesh
  certificate, a missing header) matches no pattern, so ``principals: ["*"]`` means "any
  authenticated caller" and ``notPrincipals: ["*"]`` "any unauthenticated one".
- A path with the ``{*}`` or ``{**}`` operator is an Envoy URI template: ``{*}`` is one path
  segment, ``{**}`` any text including slashes, and must be the last operator (Istio 1.22).
- ``ipBlocks`` and ``source.ip`` compare the caller's address with single addresses and CIDR
  blocks (an IPv4-mapped IPv6 address counts as its IPv4 address).
- ``when`` keys: ``request.headers[NAME]`` (strings), ``source.ip`` (blocks),
  ``source.namespace`` and ``source.principal`` (strings), ``destination.port`` (numbers);
  the parser refuses the others.

No I/O, no logging, no clock.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from funcmesh.mesh.authz_facts import Peer, RequestFacts
from funcmesh.model.istio_security import (
    AuthorizationPolicySpec,
    Condition,
    Rule,
    Values,
    path_template,
)

_T = TypeVar("_T")
_HEADER_KEY = re.compile(r"request\.headers\[([^\]]+)\]")


# matchers


class Patterns:
    """Istio's string matching over a list of values: exact, "prefix*", "*suffix", "*"
    (present), and for paths ``{*}``/``{**}`` URI templates."""

    __slots__ = ("exact", "prefixes", "present", "suffixes", "templates")

    def __init__(self, values: Iterable[str], *, paths: bool = False) -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        templates: list[Callable[[str], object]] = []
        self.present = False
        for value in values:
            template = path_template(value) if paths else None
            if template is not None:
                templates.append(template.fullmatch)
            elif value == "*":
                self.present = True
            elif value.startswith("*"):  # Istio checks the leading "*" first
                suffixes.append(value[1:])
            elif value.endswith("*"):
                prefixes.append(value[:-1])
            else:
                exact.add(value)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.templates = tuple(templates)

    def matches(self, value: str) -> bool:
        if not value:
            return False
        if self.present or value in self.exact:
            return True
        if value.startswith(self.prefixes) or value.endswith(self.suffixes):
            return True
        return any(template(value) for template in self.templates)


class CidrBlocks:
    """Single addresses and CIDR blocks; a value that does not parse never matches (the
    parser refuses those in ``ipBlocks``)."""

    __slots__ = ("blocks",)

    def __init__(self, values: Iterable[str]) -> None:
        blocks = []
        for value in values:
            try:
                network = ipaddress.ip_network(value.strip(), strict=False)
            except ValueError:
                continue
            mask = int(network.netmask)
            blocks.append((network.version, int(network.network_address) & mask, mask))
        self.blocks = tuple(blocks)

    def matches(self, ip: str) -> bool:
        address = _address(ip)
        if address is None:
            return False
        version, number = address
        for block_version, network, mask in self.blocks:
            if version == block_version and number & mask == network:
                return True
        return False


@lru_cache(maxsize=4096)
def _address(ip: str) -> tuple[int, int] | None:
    """(IP version, address as an integer) of ``ip``, or None ("" or not an address)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.version, int(address)


def _ports(values: Iterable[str]) -> frozenset[int]:
    return frozenset(int(value) for value in values if value.strip().isdigit())


# compiled rules

Check = Callable[[Peer, RequestFacts], bool]
Getter = Callable[[Peer, RequestFacts], _T]


def _principal(peer: Peer, request: RequestFacts) -> str:
    return peer.principal


def _namespace(peer: Peer, request: RequestFacts) -> str:
    return peer.namespace


def _ip(peer: Peer, request: RequestFacts) -> str:
    return peer.ip


def _method(peer: Peer, request: RequestFacts) -> str:
    return request.method


def _path(peer: Peer, request: RequestFacts) -> str:
    return request.path


def _port(peer: Peer, request: RequestFacts) -> int:
    return request.port


def _header(name: str) -> Getter[str]:
    return lambda peer, request: request.header(name)


def _twin_checks(
    get: Getter[_T], values: Values, matcher: Callable[[Iterable[str]], Callable[[_T], bool]]
) -> list[Check]:
    """The checks of a field and its ``not`` twin (none when both are empty)."""
    checks: list[Check] = []
    if values.values:
        match = matcher(values.values)
        checks.append(lambda peer, request: match(get(peer, request)))
    if values.not_values:
        not_match = matcher(values.not_values)
        checks.append(lambda peer, request: not not_match(get(peer, request)))
    return checks


def _strings(values: Iterable[str]) -> Callable[[str], bool]:
    return Patterns(values).matches


def _paths(values: Iterable[str]) -> Callable[[str], bool]:
    return Patterns(values, paths=True).matches


def _ips(values: Iterable[str]) -> Callable[[str], bool]:
    return CidrBlocks(values).matches


def _port_set(values: Iterable[str]) -> Callable[[int], bool]:
    return _ports(values).__contains__


def _condition_checks(condition: Condition) -> list[Check]:
    key, values = condition.key, condition.values
    header = _HEADER_KEY.fullmatch(key)
    if header is not None:
        return _twin_checks(_header(header[1].lower()), values, _strings)
    if key == "source.ip":
        return _twin_checks(_ip, values, _ips)
    if key == "source.namespace":
        return _twin_checks(_namespace, values, _strings)
    if key == "source.principal":
        return _twin_checks(_principal, values, _strings)
    if key == "destination.port":
        return _twin_checks(_port, values, _port_set)
    raise ValueError(f'"when" key {key!r} is not supported (the parser refuses it)')


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule as checks: any source group, any operation group, every condition."""

    sources: tuple[tuple[Check, ...], ...]  # empty: any source
    operations: tuple[tuple[Check, ...], ...]  # empty: any operation
    conditions: tuple[Check, ...]

    def matches(self, peer: Peer, request: RequestFacts) -> bool:
        if self.sources and not _any_group_holds(self.sources, peer, request):
            return False
        if self.operations and not _any_group_holds(self.operations, peer, request):
            return False
        return _all_hold(self.conditions, peer, request)


def _all_hold(checks: tuple[Check, ...], peer: Peer, request: RequestFacts) -> bool:
    for check in checks:  # noqa: SIM110 (a loop: no generator per request)
        if not check(peer, request):
            return False
    return True


def _any_group_holds(
    groups: tuple[tuple[Check, ...], ...], peer: Peer, request: RequestFacts
) -> bool:
    for checks in groups:  # noqa: SIM110 (a loop: no generator per request)
        if _all_hold(checks, peer, request):
            return True
    return False


def compile_rule(rule: Rule) -> CompiledRule:
    sources = tuple(
        tuple(
            _twin_checks(_principal, source.principals, _strings)
            + _twin_checks(_namespace, source.namespaces, _strings)
            + _twin_checks(_ip, source.ip_blocks, _ips)
        )
        for source in rule.sources
    )
    operations = tuple(
        tuple(
            _twin_checks(_method, operation.methods, _strings)
            + _twin_checks(_path, operation.paths, _paths)
            + _twin_checks(_port, operation.ports, _port_set)
        )
        for operation in rule.operations
    )
    conditions = tuple(check for c in rule.conditions for check in _condition_checks(c))
    return CompiledRule(sources=sources, operations=operations, conditions=conditions)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledPolicy:
    """An AuthorizationPolicy ready for the data plane; ``name`` is "namespace.name"."""

    spec: AuthorizationPolicySpec
    name: str
    deny: bool
    rules: tuple[CompiledRule, ...]  # none: the policy matches nothing

    def matches(self, peer: Peer, request: RequestFacts) -> bool:
        for rule in self.rules:  # noqa: SIM110 (a loop: no generator per request)
            if rule.matches(peer, request):
                return True
        return False


def compile_policy(spec: AuthorizationPolicySpec) -> CompiledPolicy:
    return CompiledPolicy(
        spec=spec,
        name=f"{spec.namespace}.{spec.name}",
        deny=spec.action == "DENY",
        rules=tuple(compile_rule(rule) for rule in spec.rules),
    )
