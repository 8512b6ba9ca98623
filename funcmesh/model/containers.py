"""The one container of a workload's pod template (``core/v1`` Container), checked and typed.

funcmesh runs a container as a process on this machine, so ``command`` is required (there is no
image to take it from) and ``image`` is only kept, for export to Kubernetes. Parsing records a
Cause per problem, so every mistake of a manifest surfaces at once, and writes Kubernetes's
defaults (port protocol, probe timings) into the raw container, so the stored object says what
funcmesh does. ``$(VAR)`` references in command, args and env values expand as the kubelet
expands them. This module does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from funcmesh.errors import Cause
from funcmesh.model.names import dns1123_label_error, dns1123_subdomain_error

PROTOCOLS = ("TCP", "UDP", "SCTP")
HTTP_SCHEMES = ("HTTP", "HTTPS")
PROBE_DEFAULTS = {
    "initialDelaySeconds": 0,
    "periodSeconds": 10,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 3,
}
PROBE_MINIMUMS = {"periodSeconds": 1, "timeoutSeconds": 1, "successThreshold": 1}
PROBE_ACTIONS = ("httpGet", "tcpSocket", "exec")
UNSUPPORTED_CONTAINER_FIELDS = ("envFrom", "startupProbe", "lifecycle")
DEFAULT_SERVICE_ACCOUNT = "default"  # Kubernetes's, when a pod template names none
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerPort:
    name: str  # "" when unnamed
    port: int
    protocol: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpGet:
    """GET ``scheme://host:port/path``; 200-399 is a success."""

    port: int
    path: str = "/"
    scheme: str = "HTTP"
    host: str | None = None  # None: the pod's IP
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSocket:
    """A TCP connection that opens is a success."""

    port: int
    host: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Exec:
    """A command, run with the container's environment, that exits 0 is a success."""

    command: tuple[str, ...]


ProbeAction = HttpGet | TcpSocket | Exec


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """A readiness or liveness probe with Kubernetes's timing fields (seconds)."""

    action: ProbeAction
    initial_delay_s: int = 0
    period_s: int = 10
    timeout_s: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    """What funcmesh needs to run the container as a process."""

    name: str
    image: str | None
    command: tuple[str, ...]  # command then args, references not yet expanded
    env: tuple[tuple[str, str], ...]
    ports: tuple[ContainerPort, ...]
    working_dir: str | None
    readiness: Probe | None
    liveness: Probe | None

    @property
    def first_port(self) -> int | None:
        return self.ports[0].port if self.ports else None


def expand_references(text: str, lookup: Callable[[str], str | None]) -> str:
    """``$(NAME)`` -> the variable's value (left as written when unknown); ``$$`` -> ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        value = lookup(match.group(2))
        return match.group(0) if value is None else value

    return _REFERENCE.sub(replace, text)


def port_name_error(name: str) -> str | None:
    """Why ``name`` is not an IANA service name (what a container port may be called)."""
    if (
        len(name) > 15
        or not _PORT_NAME.match(name)
        or "--" in name
        or not any(c.isalpha() for c in name)
    ):
        return (
            f'"{name}" must be no more than 15 characters, lower case letters, digits and "-" '
            "(not at either end, never two in a row), with at least one letter"
        )
    return None


def parse_container(raw: Any, field: str, causes: list[Cause]) -> Container | None:
    """The typed container of ``raw``; defaults are written into ``raw``; problems go to
    ``causes``. None when ``raw`` is not even an object."""
    if not isinstance(raw, dict):
        causes.append(Cause(field=field, message="a container must be an object"))
        return None
    parts = _Parts(causes, field)
    for name in UNSUPPORTED_CONTAINER_FIELDS:
        if raw.get(name):
            parts.fail(name, f"{name} is not supported by funcmesh yet", "FieldValueForbidden")
    ports = parts.ports(raw.get("ports"))
    return Container(
        name=parts.container_name(raw.get("name")),
        image=str(raw["image"]) if raw.get("image") else None,
        command=parts.command(raw.get("command"), raw.get("args")),
        env=parts.env(raw.get("env")),
        ports=ports,
        working_dir=parts.working_dir(raw.get("workingDir")),
        readiness=parts.probe("readinessProbe", raw.get("readinessProbe"), ports),
        liveness=parts.probe("livenessProbe", raw.get("livenessProbe"), ports),
    )


class _Parts:
    """Field parsers that record a Cause under ``field`` instead of raising."""

    def __init__(self, causes: list[Cause], field: str) -> None:
        self.causes = causes
        self.field = field

    def fail(self, subfield: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self.causes.append(Cause(field=f"{self.field}.{subfield}", message=message, reason=reason))

    def container_name(self, value: Any) -> str:
        if not isinstance(value, str) or not value:
            self.fail("name", "Required value", "FieldValueRequired")
            return ""
        if error := dns1123_label_error(value):
            self.fail("name", error)
        return value

    def command(self, command: Any, args: Any) -> tuple[str, ...]:
        words = self.strings("command", command) + self.strings("args", args)
        if not command:
            self.fail(
                "command",
                "Required value: funcmesh runs a process, not an image: give the command to "
                "run (e.g. command: [python3, server.py])",
                "FieldValueRequired",
            )
        return tuple(words)

    def strings(self, subfield: str, value: Any) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str | int | float) for v in value):
            self.fail(subfield, f"{subfield} must be a list of strings")
            return []
        return [str(v) for v in value]

    def env(self, value: Any) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail("env", "env must be a list of {name, value}")
            return ()
        pairs: list[tuple[str, str]] = []
        for index, item in enumerate(value):
            where = f"env[{index}]"
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name:
                self.fail(f"{where}.name", "Required value", "FieldValueRequired")
            elif not _ENV_NAME.match(name):
                self.fail(
                    f"{where}.name",
                    f'"{name}" is not a valid environment variable name: letters, digits, '
                    "'_', '-' or '.', not starting with a digit",
                )
            elif "valueFrom" in item:
                self.fail(
                    f"{where}.valueFrom",
                    f'env "{name}": valueFrom is not supported yet; use value',
                    "FieldValueForbidden",
                )
            else:
                pairs.append((name, _text(item.get("value"))))
        return tuple(pairs)

    def ports(self, value: Any) -> tuple[ContainerPort, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail("ports", "ports must be a list of {name, containerPort, protocol}")
            return ()
        ports: list[ContainerPort] = []
        for index, item in enumerate(value):
            port = self.port(f"ports[{index}]", item)
            if port is None:
                continue
            if port.name and any(p.name == port.name for p in ports):
                self.fail(
                    f"ports[{index}].name", f'Duplicate value: "{port.name}"', "FieldValueDuplicate"
                )
            ports.append(port)
        return tuple(ports)

    def port(self, where: str, item: Any) -> ContainerPort | None:
        if not isinstance(item, dict):
            self.fail(where, "a port must be an object")
            return None
        number = item.get("containerPort")
        if not _whole(number) or not 1 <= number <= 65535:
            self.fail(
                f"{where}.containerPort",
                f"Invalid value: {number!r}: must be between 1 and 65535, inclusive",
                "FieldValueRequired" if number is None else "FieldValueInvalid",
            )
            return None
        protocol = item.setdefault("protocol", "TCP")
        if protocol not in PROTOCOLS:
            self.fail(
                f"{where}.protocol",
                f'Unsupported value: "{protocol}": supported values: "TCP", "UDP", "SCTP"',
                "FieldValueNotSupported",
            )
        name = item.get("name") or ""
        if name and (error := port_name_error(str(name))):
            self.fail(f"{where}.name", error)
        return ContainerPort(name=str(name), port=int(number), protocol=str(protocol))

    def working_dir(self, value: Any) -> str | None:
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not value.startswith("/"):
            self.fail("workingDir", f"Invalid value: {value!r}: must be an absolute path")
            return None
        return value

    def probe(self, subfield: str, raw: Any, ports: tuple[ContainerPort, ...]) -> Probe | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            self.fail(subfield, "a probe must be an object")
            return None
        actions = [name for name in PROBE_ACTIONS if raw.get(name) is not None]
        if len(actions) != 1:
            self.fail(
                subfield,
                "must specify exactly one handler: httpGet, tcpSocket or exec"
                + (f" (found {', '.join(actions)})" if actions else ""),
                "FieldValueRequired" if not actions else "FieldValueForbidden",
            )
            return None
        action = self.action(f"{subfield}.{actions[0]}", actions[0], raw[actions[0]], ports)
        timings = self.timings(subfield, raw)
        if subfield == "livenessProbe" and timings["successThreshold"] != 1:
            self.fail(f"{subfield}.successThreshold", "Invalid value: must be 1")
        if action is None:
            return None
        return Probe(
            action=action,
            initial_delay_s=timings["initialDelaySeconds"],
            period_s=timings["periodSeconds"],
            timeout_s=timings["timeoutSeconds"],
            success_threshold=timings["successThreshold"],
            failure_threshold=timings["failureThreshold"],
        )

    def timings(self, subfield: str, raw: dict[str, Any]) -> dict[str, int]:
        timings: dict[str, int] = {}
        for key, default in PROBE_DEFAULTS.items():
            value = raw.setdefault(key, default)
            least = PROBE_MINIMUMS.get(key, 0)
            if not _whole(value) or value < least:
                self.fail(
                    f"{subfield}.{key}", f"Invalid value: {value!r}: must be at least {least}"
                )
                value = default
            timings[key] = int(value)
        return timings

    def action(
        self, where: str, kind: str, raw: Any, ports: tuple[ContainerPort, ...]
    ) -> ProbeAction | None:
        if not isinstance(raw, dict):
            self.fail(where, f"{kind} must be an object")
            return None
        if kind == "exec":
            command = self.strings(f"{where}.command", raw.get("command"))
            if not command:
                self.fail(f"{where}.command", "Required value", "FieldValueRequired")
                return None
            return Exec(command=tuple(command))
        port = self.probe_port(f"{where}.port", raw.get("port"), ports)
        host = str(raw["host"]) if raw.get("host") else None
        if kind == "tcpSocket":
            return TcpSocket(port=port, host=host) if port else None
        scheme = raw.setdefault("scheme", "HTTP")
        if scheme not in HTTP_SCHEMES:
            self.fail(
                f"{where}.scheme",
                f'Unsupported value: "{scheme}": supported values: "HTTP", "HTTPS"',
                "FieldValueNotSupported",
            )
        path = raw.setdefault("path", "/")
        headers = tuple(
            (str(h.get("name")), _text(h.get("value")))
            for h in raw.get("httpHeaders") or []
            if isinstance(h, dict) and h.get("name")
        )
        if not port:
            return None
        return HttpGet(
            port=port, path=str(path) or "/", scheme=str(scheme), host=host, headers=headers
        )

    def probe_port(self, where: str, value: Any, ports: tuple[ContainerPort, ...]) -> int:
        """A probe's port by number, or by the name of a port the container declares."""
        if _whole(value) and 1 <= value <= 65535:
            return int(value)
        if isinstance(value, str) and value:
            if value.isdigit() and 1 <= int(value) <= 65535:
                return int(value)
            for port in ports:
                if port.name == value:
                    return port.port
            declared = ", ".join(f'"{p.name}"' for p in ports if p.name) or "none"
            self.fail(
                where,
                f'Invalid value: "{value}": the container declares no port of that name '
                f"(named ports: {declared})",
                "FieldValueNotFound",
            )
            return 0
        self.fail(
            where,
            f"Invalid value: {value!r}: must be a port number (1-65535) or a container port's name",
            "FieldValueRequired" if value is None else "FieldValueInvalid",
        )
        return 0


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: Any) -> str:
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def environment_of(container: Container, base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the container's env on top; each value may refer to ``base`` and to the
    variables before it with ``$(NAME)``, as in Kubernetes."""
    env = dict(base)
    for name, value in container.env:
        env[name] = expand_references(value, env.get)
    return env


def command_line(container: Container, env: Mapping[str, str]) -> tuple[str, ...]:
    """Command and args with ``$(NAME)`` references to ``env`` expanded."""
    return tuple(expand_references(word, env.get) for word in container.command)


def service_account_of(pod_spec: Mapping[str, Any], field: str, causes: list[Cause]) -> str:
    """The pod template's ``serviceAccountName`` (``field`` names it in a Cause): the
    ``serviceAccount`` part of the pod's mesh identity, ``default`` when none is named. funcmesh
    has no ServiceAccount objects: any DNS-1123 subdomain is accepted."""
    value = pod_spec.get("serviceAccountName")
    if value in (None, ""):
        return DEFAULT_SERVICE_ACCOUNT
    error = dns1123_subdomain_error(value) if isinstance(value, str) else "must be a string"
    if error:
        causes.append(Cause(field=field, message=error))
        return DEFAULT_SERVICE_ACCOUNT
    return str(value)
