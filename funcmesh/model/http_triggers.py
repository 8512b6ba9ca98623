"""The Kubeless HTTPTrigger: validation and the typed view the gateway's route table needs.

Wire fields are Kubeless's exactly (``function-name``, ``host-name``, ``path``,
``basic-auth-secret``, ``tls-secret``, ``cors-enable``, ``gateway``). A trigger without a host
matches every host; its path is a prefix, normalised to start with ``/``. No I/O here: whether
the function and the secrets exist is admission's business.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Cause
from funcmesh.model.kinds import HTTP_TRIGGER
from funcmesh.model.names import dns1123_label_error
from funcmesh.model.objects import (
    metadata_causes,
    name_of,
    namespace_of,
    raise_if_causes,
)

ANY_HOST = ""
_HOST = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PATH_FORBIDDEN = re.compile(r"[\s?#]")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpTriggerSpec:
    """One HTTPTrigger: requests for ``host`` (any host when empty) under ``path`` call the
    function; optional basic auth and TLS come from Secrets of the trigger's namespace."""

    namespace: str
    name: str
    function_name: str
    host: str
    path: str
    basic_auth_secret: str
    tls_secret: str
    cors_enable: bool


def parse_http_trigger(obj: Mapping[str, Any]) -> HttpTriggerSpec:
    """The typed view of an HTTPTrigger, or Invalid naming every bad field."""
    spec = obj.get("spec")
    causes = metadata_causes(obj, HTTP_TRIGGER) + _spec_causes(spec)
    raise_if_causes(causes, kind=HTTP_TRIGGER.kind, name=name_of(obj))
    assert isinstance(spec, dict)
    return HttpTriggerSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        function_name=spec["function-name"],
        host=normalise_host(spec.get("host-name") or ""),
        path=normalise_path(spec.get("path") or ""),
        basic_auth_secret=spec.get("basic-auth-secret") or "",
        tls_secret=spec.get("tls-secret") or "",
        cors_enable=bool(spec.get("cors-enable")),
    )


def normalise_host(host: str) -> str:
    """Lower case, without a port: what a Host header is matched against."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def normalise_path(path: str) -> str:
    """A path prefix that starts with ``/`` (Kubeless wrote ``path: echo`` without one)."""
    return path if path.startswith("/") else "/" + path


def _spec_causes(spec: object) -> list[Cause]:
    if not isinstance(spec, dict):
        return [Cause(field="spec", message="spec must be an object with function-name")]
    causes: list[Cause] = []
    function = spec.get("function-name")
    if not isinstance(function, str) or not function:
        message = "function-name is required"
        causes.append(
            Cause(field="spec.function-name", message=message, reason="FieldValueRequired")
        )
    elif error := dns1123_label_error(function):
        causes.append(Cause(field="spec.function-name", message=error))
    causes += _string_causes(
        spec, ("host-name", "path", "basic-auth-secret", "tls-secret", "gateway")
    )
    host = spec.get("host-name")
    if isinstance(host, str) and host and not _HOST.fullmatch(normalise_host(host)):
        causes.append(Cause(field="spec.host-name", message=f"{host!r} is not a DNS host name"))
    path = spec.get("path")
    if isinstance(path, str) and _PATH_FORBIDDEN.search(path):
        message = "a path must not contain whitespace, '?' or '#'"
        causes.append(Cause(field="spec.path", message=message))
    if not isinstance(spec.get("cors-enable", False), bool):
        causes.append(Cause(field="spec.cors-enable", message="cors-enable must be true or false"))
    return causes


def _string_causes(spec: Mapping[str, Any], fields: tuple[str, ...]) -> list[Cause]:
    return [
        Cause(field=f"spec.{field}", message=f"{field} must be a string")
        for field in fields
        if spec.get(field) is not None and not isinstance(spec.get(field), str)
    ]
