"""Core v1 Services: admission's normal form and the typed view controllers and discovery read.

``normalise_service`` checks a Service as Kubernetes' validation does and fills in its defaults:
``type`` ClusterIP, each port's ``protocol`` TCP and ``targetPort`` its ``port``,
``sessionAffinity`` None (ClientIP gets ``timeoutSeconds`` 10800), ``clusterIPs`` mirroring
``clusterIP``. On update the cluster IP is immutable (an empty one keeps the old value). It does
not allocate: a ``clusterIP`` left empty is the allocator's (controllers.service_ips) to fill,
and whether a given IP is inside the service range and free is the allocator's to say too.
The field-by-field rules of the spec are ``funcmesh.model.service_specs``'. ``parse_service`` is
the typed view of a stored Service. No I/O here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Cause
from funcmesh.model.kinds import SERVICE
from funcmesh.model.objects import (
    RawObject,
    labels_of,
    metadata_causes,
    metadata_of,
    name_of,
    namespace_of,
    raise_if_causes,
)
from funcmesh.model.service_specs import (
    CLUSTER_IP,
    DEFAULT_AFFINITY_TIMEOUT_S,
    HEADLESS,
    SpecNormaliser,
)

FUNCTION_OWNER_KIND = "Function"
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ServicePort:
    """One entry of ``spec.ports``; ``target_port`` is a number or a container port's name."""

    name: str
    protocol: str
    port: int
    target_port: int | str
    node_port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceSpec:
    """A stored Service, typed. ``cluster_ip`` is None for headless and ExternalName Services."""

    namespace: str
    name: str
    type: str
    cluster_ip: str | None
    headless: bool
    ports: tuple[ServicePort, ...]
    selector: tuple[tuple[str, str], ...] | None  # None: the user writes the Endpoints
    external_name: str | None
    session_affinity: str
    affinity_timeout_s: float
    publish_not_ready: bool
    labels: Mapping[str, str]
    function: str | None  # the Function that owns it (the Service every Function gets)

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether a pod with these labels is one of this Service's (never without selector)."""
        if self.selector is None:
            return False
        return all(labels.get(key) == value for key, value in self.selector)


def normalise_service(obj: RawObject, old: RawObject | None) -> RawObject:
    """``obj`` in normal form, or Invalid naming every bad field; ``old`` is the stored Service
    on update. ``spec.clusterIP`` comes out as an IP, ``"None"``, ``""`` (to be allocated) or,
    for ExternalName, absent."""
    causes = metadata_causes(obj, SERVICE)
    name = name_of(obj)
    if name and (error := _dns1035_error(name)):
        causes.append(Cause(field="metadata.name", message=error))
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(Cause(field="spec", message="spec is required", reason="FieldValueRequired"))
        raise_if_causes(causes, kind=SERVICE.kind, name=name)
        raise AssertionError("unreachable")
    spec = SpecNormaliser(causes).spec(spec, _old_spec(old))
    raise_if_causes(causes, kind=SERVICE.kind, name=name)
    obj["spec"] = spec
    status = obj.get("status")
    if not isinstance(status, dict) or not status:
        obj["status"] = {"loadBalancer": {}}
    return obj


def cluster_ip_of(obj: Mapping[str, Any]) -> str:
    """``spec.clusterIP`` as stored ("" when absent)."""
    spec = obj.get("spec")
    value = spec.get("clusterIP") if isinstance(spec, Mapping) else None
    return value if isinstance(value, str) else ""


def type_of(obj: Mapping[str, Any]) -> str:
    spec = obj.get("spec")
    value = spec.get("type") if isinstance(spec, Mapping) else None
    return value if isinstance(value, str) and value else CLUSTER_IP


def parse_service(obj: Mapping[str, Any]) -> ServiceSpec:
    """The typed view of a Service (admitted ones always parse), or Invalid."""
    normal = normalise_service(copy.deepcopy(dict(obj)), None)
    spec = normal["spec"]
    cluster_ip = cluster_ip_of(normal)
    selector = spec.get("selector")
    affinity = spec.get("sessionAffinityConfig") or {}
    return ServiceSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        type=spec["type"],
        cluster_ip=cluster_ip if cluster_ip not in ("", HEADLESS) else None,
        headless=cluster_ip == HEADLESS,
        ports=tuple(_typed_port(port) for port in spec.get("ports") or ()),
        selector=tuple(sorted(selector.items())) if selector else None,
        external_name=spec.get("externalName") or None,
        session_affinity=spec["sessionAffinity"],
        affinity_timeout_s=float(
            (affinity.get("clientIP") or {}).get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT_S
        ),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        labels=dict(labels_of(obj)),
        function=function_owner_of(obj),
    )


def function_owner_of(obj: Mapping[str, Any]) -> str | None:
    """The name of the Function in ``ownerReferences``, if a Function owns the object."""
    for owner in metadata_of(obj).get("ownerReferences") or ():
        if (
            isinstance(owner, Mapping)
            and owner.get("kind") == FUNCTION_OWNER_KIND
            and str(owner.get("apiVersion") or "").startswith("kubeless.io/")
            and isinstance(owner.get("name"), str)
        ):
            return str(owner["name"])
    return None


def _typed_port(port: Mapping[str, Any]) -> ServicePort:
    return ServicePort(
        name=port.get("name") or "",
        protocol=port["protocol"],
        port=port["port"],
        target_port=port["targetPort"],
        node_port=port.get("nodePort") or None,
    )


def _old_spec(old: RawObject | None) -> Mapping[str, Any] | None:
    spec = old.get("spec") if old is not None else None
    return spec if isinstance(spec, Mapping) else None


def _dns1035_error(name: str) -> str | None:
    if len(name) <= 63 and not _DNS1035_LABEL.match(name):
        return (
            f'"{name}" is not a valid Service name: a DNS-1035 label must consist of lower case '
            "alphanumeric characters or '-', start with an alphabetic character, and end with "
            "an alphanumeric character (e.g. 'my-name', or 'abc-123')"
        )
    return None
