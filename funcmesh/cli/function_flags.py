"""``function deploy``/``update`` flags to a Function object, or to a JSON merge patch.

The object has the shape ``kubeless function deploy`` writes (kubeless.md 1.2): labels
``created-by: kubeless`` and ``function: NAME`` plus ``--label``; env and resources (requests and
limits alike) on ``spec.deployment.spec.template.spec.containers[0]``; per ``--secrets S`` a
volume ``S-vol`` (secret ``S``) and a volumeMount of it at ``/S``; the service port 8080 named
``http-function-port``. An update patch names only what a flag gives (the fix of Kubeless
bug 7.1: no silent reset of timeout or port). Pure functions: no I/O, no click.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.cli.sources import FunctionSource
from funcmesh.errors import Cause, Invalid
from funcmesh.model.durations import parse_duration_s
from funcmesh.model.kinds import FUNCTION
from funcmesh.model.names import (
    dns1123_label_error,
    dns1123_subdomain_error,
    label_key_error,
    label_value_error,
)
from funcmesh.model.objects import RawObject, labels_of, metadata_of, name_of
from funcmesh.model.quantity import parse_memory_bytes, parse_quantity

DEFAULT_TIMEOUT = "180"
DEFAULT_PORT = 8080
PORT_NAME = "http-function-port"
SECRET_VOLUME_SUFFIX = "-vol"
_RUNTIME_ID = re.compile(r"^[a-zA-Z_-]+[0-9.]+$")
_HANDLER = re.compile(r"^[^.\s]+\.[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionFlags:
    """What the flags ask for; None means "not given" (an update keeps that field)."""

    runtime: str | None = None
    handler: str | None = None
    source: FunctionSource | None = None
    deps: str | None = None
    env: Pairs | None = None
    labels: Pairs | None = None
    timeout: str | None = None
    memory: str | None = None
    cpu: str | None = None
    port: int | None = None
    secrets: tuple[str, ...] | None = None  # Secret names; () removes every secret volume


def parse_pairs(values: Iterable[str], *, flag: str) -> Pairs:
    """``k=v,k2:v2`` (repeatable): split at the first ``=`` or ``:``; a bare ``k`` means ""."""
    pairs: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            if not item.strip():
                continue
            cut = min((i for i in (item.find("="), item.find(":")) if i >= 0), default=-1)
            key, text = (item, "") if cut < 0 else (item[:cut], item[cut + 1 :])
            if not key.strip():
                raise Invalid(f'{flag} "{item}": the name before "=" is missing')
            pairs[key.strip()] = text
    return tuple(pairs.items())


def parse_names(values: Iterable[str]) -> tuple[str, ...]:
    """``a,b`` (repeatable), in order, each once; blanks are skipped."""
    names = (name.strip() for value in values for name in value.split(","))
    return tuple(dict.fromkeys(name for name in names if name))


def normalize_timeout(text: str) -> str:
    """Seconds as Kubeless stores them (``"180"``), from ``180``, ``30s`` or ``1.5m``."""
    seconds = parse_duration_s(text, what="--timeout")
    if seconds <= 0:
        raise Invalid(f'--timeout "{text}" must be more than 0 seconds')
    return f"{seconds:g}"


def check_flags(name: str, flags: FunctionFlags) -> None:
    """Raise Invalid naming the first bad flag (and listing the others), before any request."""
    problems = flag_problems(name, flags)
    if problems:
        raise Invalid(problems[0], [Cause(field="", message=problem) for problem in problems])


def flag_problems(name: str, flags: FunctionFlags) -> list[str]:
    problems = []
    if error := dns1123_label_error(name):
        problems.append(f"function name {error}")
    if flags.runtime is not None and not _RUNTIME_ID.match(flags.runtime):
        problems.append(
            f'--runtime "{flags.runtime}" is not a runtime id: use e.g. python3.11 or nodejs20 '
            "(funcmesh get-server-config lists them)"
        )
    if flags.handler is not None and not _HANDLER.match(flags.handler):
        problems.append(
            f'--handler "{flags.handler}" must be module_name.handler_name (e.g. hello.handler)'
        )
    problems += _quantity_problems(flags)
    if flags.port is not None and not 1 <= flags.port <= 65535:
        problems.append(f"--port {flags.port} is not a valid port number: use 1-65535")
    for key, _ in flags.env or ():
        if not _ENV_NAME.match(key):
            problems.append(f'--env "{key}" is not a valid environment variable name')
    for key, value in flags.labels or ():
        if error := label_key_error(key) or label_value_error(value):
            problems.append(f"--label {error}")
    for secret in flags.secrets or ():
        if error := dns1123_subdomain_error(secret):
            problems.append(f"--secrets: Secret name {error}")
    return problems


def _quantity_problems(flags: FunctionFlags) -> list[str]:
    problems = []
    for flag, value, parse in (
        ("--memory", flags.memory, parse_memory_bytes),
        ("--cpu", flags.cpu, parse_quantity),
    ):
        if value is None:
            continue
        try:
            parse(value)
        except Invalid as exc:
            problems.append(f"{flag}: {exc}")
    return problems


def require_deploy_flags(
    *, runtime: str | None, handler: str | None, from_file: str | None
) -> None:
    if not runtime:
        raise Invalid(
            "--runtime is required, e.g. --runtime python3.11 "
            "(funcmesh get-server-config lists the runtimes)"
        )
    if not handler:
        raise Invalid(
            "--handler is required: module_name.handler_name, e.g. --handler hello.handler"
        )
    if not from_file:
        raise Invalid("--from-file is required: the function's code (a file, a .zip or a URL)")


def build_function(*, name: str, namespace: str, flags: FunctionFlags) -> RawObject:
    """The Function ``kubeless function deploy`` would create."""
    if flags.runtime is None or flags.handler is None or flags.source is None:
        raise Invalid("--runtime, --handler and --from-file are required")
    labels = {"created-by": "kubeless", "function": name, **dict(flags.labels or ())}
    port = flags.port or DEFAULT_PORT
    return {
        "apiVersion": FUNCTION.api_version,
        "kind": FUNCTION.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runtime": flags.runtime,
            "handler": flags.handler,
            "function": flags.source.content,
            "function-content-type": flags.source.content_type,
            "checksum": flags.source.checksum,
            "deps": flags.deps or "",
            "timeout": flags.timeout or DEFAULT_TIMEOUT,
            "deployment": _deployment([_container({}, flags)], _volumes([], flags) or None),
            "service": {
                "ports": [_port({}, port)],
                "selector": dict(labels),
                "type": "ClusterIP",
            },
        },
    }


def build_update_patch(current: RawObject, flags: FunctionFlags) -> dict[str, Any]:
    """A merge patch changing only what the flags give, conditional on the read version."""
    current_spec = current.get("spec") or {}
    spec: dict[str, Any] = {
        key: value
        for key, value in (
            ("runtime", flags.runtime),
            ("handler", flags.handler),
            ("deps", flags.deps),
            ("timeout", flags.timeout),
        )
        if value is not None
    }
    if flags.source is not None:
        spec["function"] = flags.source.content
        spec["function-content-type"] = flags.source.content_type
        spec["checksum"] = flags.source.checksum
    if any(x is not None for x in (flags.env, flags.memory, flags.cpu, flags.secrets)):
        first, *others = _containers(current_spec) or [{}]
        current_volumes = _pod_spec(current_spec).get("volumes")
        container = _container(first, flags, secret_volumes=_secret_volume_names(current_volumes))
        volumes = _volumes(current_volumes, flags)
        spec["deployment"] = _deployment([container, *others], volumes)
    if flags.port is not None:
        spec["service"] = {"ports": _ports(current_spec, flags.port)}
    metadata: dict[str, Any] = {"resourceVersion": metadata_of(current).get("resourceVersion")}
    if flags.labels is not None:
        old = labels_of(current)
        new = {k: old[k] for k in ("created-by",) if k in old} | {"function": name_of(current)}
        new |= dict(flags.labels)
        metadata["labels"] = _map_patch(old, new)
        selector = (current_spec.get("service") or {}).get("selector")
        if isinstance(selector, dict):
            spec.setdefault("service", {})["selector"] = _map_patch(selector, new)
    if not spec and "labels" not in metadata:
        raise _nothing_to_update()
    return {"metadata": metadata, "spec": spec} if spec else {"metadata": metadata}


def require_changes(flags: FunctionFlags) -> None:
    """An update must name at least one thing to change."""
    if flags == FunctionFlags():
        raise _nothing_to_update()


def _nothing_to_update() -> Invalid:
    return Invalid("nothing to update: give at least one flag, e.g. --timeout 60")


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: what the server will make of ``patch`` (for ``--dryrun`` and validation)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def _pod_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        pod_spec = spec["deployment"]["spec"]["template"]["spec"]
    except (KeyError, TypeError):
        return {}
    return pod_spec if isinstance(pod_spec, dict) else {}


def _containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    containers = _pod_spec(spec).get("containers")
    return [c for c in containers if isinstance(c, dict)] if isinstance(containers, list) else []


def _container(
    base: Mapping[str, Any], flags: FunctionFlags, *, secret_volumes: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``base`` with the flags applied; ``--secrets`` replaces the mounts of ``secret_volumes``."""
    container = copy.deepcopy(dict(base))
    container.setdefault("name", "")
    resources = container.setdefault("resources", {})
    for key, value in (("memory", flags.memory), ("cpu", flags.cpu)):
        if value is not None:
            resources.setdefault("limits", {})[key] = value
            resources.setdefault("requests", {})[key] = value
    if flags.env is not None:
        # env from Secrets (valueFrom) is kept: --env names plain values only
        kept = [item for item in container.get("env") or [] if _from_secret(item)]
        container["env"] = [
            *[{"name": key, "value": value} for key, value in flags.env],
            *[item for item in kept if item.get("name") not in dict(flags.env)],
        ]
    if flags.secrets is not None:
        mounts = [
            mount
            for mount in container.get("volumeMounts") or []
            if not isinstance(mount, dict) or mount.get("name") not in secret_volumes
        ]
        mounts += [
            {"name": secret + SECRET_VOLUME_SUFFIX, "mountPath": "/" + secret}
            for secret in flags.secrets
        ]
        if mounts:
            container["volumeMounts"] = mounts
        else:
            container.pop("volumeMounts", None)
    return container


def _volumes(current: Any, flags: FunctionFlags) -> list[dict[str, Any]] | None:
    """The pod's volumes with ``--secrets`` applied (secret volumes replaced), or None when
    the flag is not given."""
    if flags.secrets is None:
        return None
    volumes = [v for v in current or [] if isinstance(v, dict) and "secret" not in v]
    return volumes + [
        {"name": secret + SECRET_VOLUME_SUFFIX, "secret": {"secretName": secret}}
        for secret in flags.secrets
    ]


def _from_secret(item: Any) -> bool:
    return isinstance(item, dict) and "valueFrom" in item


def _secret_volume_names(volumes: Any) -> frozenset[str]:
    if not isinstance(volumes, list):
        return frozenset()
    return frozenset(str(v.get("name")) for v in volumes if isinstance(v, dict) and "secret" in v)


def _deployment(
    containers: list[dict[str, Any]], volumes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": containers}
    if volumes is not None:
        pod_spec["volumes"] = volumes if volumes else None  # null: a merge patch removes it
    return {"spec": {"template": {"spec": pod_spec}}}


def _port(base: Mapping[str, Any], port: int) -> dict[str, Any]:
    return {"name": PORT_NAME, "protocol": "TCP", **base, "port": port, "targetPort": port}


def _ports(spec: Mapping[str, Any], port: int) -> list[dict[str, Any]]:
    ports = (spec.get("service") or {}).get("ports")
    if not isinstance(ports, list) or not ports or not isinstance(ports[0], dict):
        return [_port({}, port)]
    return [_port(ports[0], port), *ports[1:]]


def _map_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning map ``old`` into ``new``: removed keys become null."""
    return {**{key: None for key in old if key not in new}, **new}
