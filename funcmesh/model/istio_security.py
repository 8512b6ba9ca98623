"""Istio's AuthorizationPolicy and PeerAuthentication: the subset funcmesh serves, typed.

An AuthorizationPolicy ALLOWs or DENYs requests to the workloads its selector picks (every
workload of its namespace without one; of the mesh in ``istio-system``) when a rule matches:
sources (principals, namespaces, IP blocks), operations (methods, paths, ports) and ``when``
conditions, each with its ``not`` twin. CUSTOM and AUDIT are refused. A PeerAuthentication sets
the mTLS mode (STRICT, PERMISSIVE, DISABLE; UNSET inherits) of workloads, per port if asked.
A namespace a policy names need not exist (the policy then matches nothing). Unknown fields
are refused by name (istio_fields). No I/O here.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.model.istio_fields import (
    STRING,
    STRINGS,
    WORKLOAD_SELECTOR,
    ListOf,
    MapOf,
    Obj,
    Problems,
    dict_of,
    field_of,
    labels_of_map,
    list_of,
    raise_problems,
    spec_problems,
    str_of,
    strings_of,
)
from funcmesh.model.kinds import AUTHORIZATION_POLICY, PEER_AUTHENTICATION
from funcmesh.model.objects import name_of, namespace_of

ACTIONS = ("ALLOW", "DENY")
_LATER_ACTIONS = ("CUSTOM", "AUDIT")
MTLS_MODES = ("UNSET", "STRICT", "PERMISSIVE", "DISABLE")
# ``when`` keys funcmesh evaluates; request.headers[NAME] takes any header name
WHEN_KEYS = ("source.ip", "source.namespace", "source.principal", "destination.port")
_HEADER_KEY = re.compile(r"request\.headers\[([^\]]+)\]")
# Envoy's URI template characters (RFC 3986 pchar without "*" and "=")
_TEMPLATE_CHARS = r"[a-zA-Z0-9\-._~%!$&'()+,;:@]"
_SEGMENT = _TEMPLATE_CHARS + "+"  # {*}
_TEXT = _TEMPLATE_CHARS[:-1] + "/]*"  # {**}


def _twins(names: tuple[str, ...]) -> dict[str, Any]:
    """Each field and its ``not`` twin (``paths`` and ``notPaths``), all string lists."""
    return {key: STRINGS for name in names for key in (name, "not" + name[0].upper() + name[1:])}


_SOURCE_FIELDS = ("principals", "namespaces", "ipBlocks")
_OPERATION_FIELDS = ("methods", "paths", "ports")
AUTHORIZATION_POLICY_SHAPE = Obj(
    {
        "selector": WORKLOAD_SELECTOR,
        "action": STRING,
        "rules": ListOf(
            Obj(
                {
                    "from": ListOf(Obj({"source": Obj(_twins(_SOURCE_FIELDS))})),
                    "to": ListOf(Obj({"operation": Obj(_twins(_OPERATION_FIELDS))})),
                    "when": ListOf(Obj({"key": STRING, "values": STRINGS, "notValues": STRINGS})),
                }
            )
        ),
    }
)
_MTLS = Obj({"mode": STRING})
PEER_AUTHENTICATION_SHAPE = Obj(
    {"selector": WORKLOAD_SELECTOR, "mtls": _MTLS, "portLevelMtls": MapOf(_MTLS)}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Values:
    """A field and its ``not`` twin: matches when it is in ``values`` (or they are empty) and
    not in ``not_values``."""

    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    principals: Values
    namespaces: Values
    ip_blocks: Values


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    methods: Values
    paths: Values
    ports: Values


@dataclass(frozen=True, slots=True, kw_only=True)
class Condition:
    key: str
    values: Values


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """Matches when any source, any operation and every condition match (empty: any)."""

    sources: tuple[Source, ...]
    operations: tuple[Operation, ...]
    conditions: tuple[Condition, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationPolicySpec:
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]  # empty: every workload in scope
    action: str  # ALLOW or DENY
    rules: tuple[Rule, ...]  # ALLOW without rules allows nothing; DENY without rules denies nothing


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAuthenticationSpec:
    namespace: str
    name: str
    selector: tuple[tuple[str, str], ...]
    mode: str  # UNSET, STRICT, PERMISSIVE or DISABLE
    port_modes: tuple[tuple[int, str], ...]


def parse_authorization_policy(obj: Mapping[str, Any]) -> AuthorizationPolicySpec:
    """The typed view of an AuthorizationPolicy, or Invalid with one cause per problem."""
    spec, problems = spec_problems(obj, AUTHORIZATION_POLICY, AUTHORIZATION_POLICY_SHAPE)
    action = problems.one_of(
        spec.get("action", "ALLOW"), "spec.action", ACTIONS, later=_LATER_ACTIONS
    )
    rules = tuple(
        _rule(rule, f"spec.rules[{i}]", problems) for i, rule in enumerate(list_of(spec, "rules"))
    )
    raise_problems(problems, obj, AUTHORIZATION_POLICY)
    return AuthorizationPolicySpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        selector=_selector(spec),
        action=action or "ALLOW",
        rules=rules,
    )


def _selector(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels_of_map(field_of(spec.get("selector"), "matchLabels")).items()))


def _rule(rule: object, field: str, problems: Problems) -> Rule:
    sources = []
    for i, entry in enumerate(list_of(rule, "from")):
        source = dict_of(entry, "source")
        if not any(source.values()):
            problems.add(f"{field}.from[{i}].source", "must not be empty")
        for j, block in enumerate(_twin(source, "ipBlocks").values):
            _check_ip_block(block, f"{field}.from[{i}].source.ipBlocks[{j}]", problems)
        for j, block in enumerate(_twin(source, "ipBlocks").not_values):
            _check_ip_block(block, f"{field}.from[{i}].source.notIpBlocks[{j}]", problems)
        sources.append(
            Source(
                principals=_twin(source, "principals"),
                namespaces=_twin(source, "namespaces"),
                ip_blocks=_twin(source, "ipBlocks"),
            )
        )
    operations = []
    for i, entry in enumerate(list_of(rule, "to")):
        operation = dict_of(entry, "operation")
        if not any(operation.values()):
            problems.add(f"{field}.to[{i}].operation", "must not be empty")
        at = f"{field}.to[{i}].operation"
        paths = _twin(operation, "paths")
        for name, values in (("paths", paths.values), ("notPaths", paths.not_values)):
            for j, path in enumerate(values):
                if ("{*}" in path or "{**}" in path) and path_template(path) is None:
                    problems.add(
                        f"{at}.{name}[{j}]",
                        f'"{path}" is not a valid path template ({{*}} or {{**}} as whole '
                        "segments, nothing after {**} but text)",
                    )
        ports = _twin(operation, "ports")
        for name, values in (("ports", ports.values), ("notPorts", ports.not_values)):
            for j, port in enumerate(values):
                if not port.isdigit() or not 1 <= int(port) <= 65535:
                    problems.add(f"{at}.{name}[{j}]", f'"{port}" is not a port')
        operations.append(
            Operation(
                methods=_twin(operation, "methods"), paths=_twin(operation, "paths"), ports=ports
            )
        )
    conditions = tuple(
        _condition(entry, f"{field}.when[{i}]", problems)
        for i, entry in enumerate(list_of(rule, "when"))
    )
    return Rule(sources=tuple(sources), operations=tuple(operations), conditions=conditions)


def _twin(value: object, name: str) -> Values:
    return Values(
        values=strings_of(value, name),
        not_values=strings_of(value, "not" + name[0].upper() + name[1:]),
    )


def _check_ip_block(block: str, field: str, problems: Problems) -> None:
    try:
        ipaddress.ip_network(block, strict=False)
    except ValueError:
        problems.add(field, f'"{block}" is not an IP address or CIDR block')


def _condition(entry: object, field: str, problems: Problems) -> Condition:
    key = str_of(entry, "key")
    if not key:
        problems.required(f"{field}.key", "a key")
    elif key not in WHEN_KEYS and not _HEADER_KEY.fullmatch(key):
        problems.add(
            f"{field}.key",
            f'"{key}" not supported by funcmesh: use request.headers[NAME] or one of '
            + ", ".join(WHEN_KEYS),
            reason="FieldValueNotSupported",
        )
    values = Values(values=strings_of(entry, "values"), not_values=strings_of(entry, "notValues"))
    if not values.values and not values.not_values:
        problems.required(f"{field}.values", "values or notValues")
    for j, value in enumerate((*values.values, *values.not_values)):
        if key == "source.ip":
            _check_ip_block(value, f"{field}.values[{j}]", problems)
        elif key == "destination.port" and not (value.isdigit() and 1 <= int(value) <= 65535):
            problems.add(f"{field}.values[{j}]", f'"{value}" is not a port')
    header = _HEADER_KEY.fullmatch(key)
    return Condition(key=f"request.headers[{header[1].lower()}]" if header else key, values=values)


def parse_peer_authentication(obj: Mapping[str, Any]) -> PeerAuthenticationSpec:
    """The typed view of a PeerAuthentication, or Invalid with one cause per problem."""
    spec, problems = spec_problems(obj, PEER_AUTHENTICATION, PEER_AUTHENTICATION_SHAPE)
    mode = problems.one_of(field_of(spec.get("mtls"), "mode"), "spec.mtls.mode", MTLS_MODES)
    port_modes = []
    for port, value in dict_of(spec, "portLevelMtls").items():
        field = f"spec.portLevelMtls[{port}]"
        number = int(port) if str(port).isdigit() else None
        if number is None or not 1 <= number <= 65535:
            problems.add(field, f'"{port}" is not a port number')
        port_mode = problems.one_of(field_of(value, "mode"), f"{field}.mode", MTLS_MODES)
        if number is not None and port_mode is not None:
            port_modes.append((number, port_mode))
    selector = _selector(spec)
    if port_modes and not selector:
        problems.add("spec.portLevelMtls", "needs a selector: ports belong to workloads")
    raise_problems(problems, obj, PEER_AUTHENTICATION)
    return PeerAuthenticationSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        selector=selector,
        mode=mode or "UNSET",
        port_modes=tuple(sorted(port_modes)),
    )


def path_template(path: str) -> re.Pattern[str] | None:
    """The regex of a path written as an Envoy URI template ("/foo/{*}/bar/{**}"), None when
    ``path`` has no template operator or is not a valid template (Istio refuses those: "*",
    "{" or "}" outside an operator, another character in an operator's segment, an operator
    after ``{**}``); such a path is then matched as a plain path."""
    if "{*}" not in path and "{**}" not in path:
        return None
    if not path.startswith("/"):
        return None
    pieces = []
    text_glob_seen = False
    for segment in path[1:].split("/"):
        if segment in ("{*}", "{**}"):
            if text_glob_seen:
                return None
            text_glob_seen = segment == "{**}"
            pieces.append(_TEXT if text_glob_seen else _SEGMENT)
        elif "*" in segment or "{" in segment or "}" in segment:
            return None
        else:
            pieces.append(re.escape(segment))
    return re.compile("/" + "/".join(pieces))
