"""Core v1 Endpoints: admission's normal form, the typed view, and the subsets a Service's pods
give (what Kubernetes' endpoints controller computes).

An Endpoints object lists, in ``subsets``, addresses that serve the same ports: ready ones in
``addresses``, the others in ``notReadyAddresses``. ``normalise_endpoints`` checks what a user
writes (Services without a selector); ``subsets_for`` builds the subsets of a Service with a
selector from its pods, in one canonical order so that an unchanged result compares equal and
is not written again. Only Kubernetes Pod fields are read: metadata name/namespace/uid/labels,
spec.hostname/subdomain/nodeName, spec.containers[].ports[], status.podIP/phase/conditions.
No I/O here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Cause
from funcmesh.model.kinds import ENDPOINTS
from funcmesh.model.names import dns1123_label_error
from funcmesh.model.objects import (
    RawObject,
    labels_of,
    metadata_causes,
    metadata_of,
    name_of,
    namespace_of,
    raise_if_causes,
)
from funcmesh.model.service_specs import PROTOCOLS, as_json
from funcmesh.model.services import ServicePort, ServiceSpec

ENDED_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointAddress:
    ip: str
    hostname: str | None = None
    pod: str | None = None  # targetRef name when it is a Pod


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointSubset:
    ready: tuple[EndpointAddress, ...]
    not_ready: tuple[EndpointAddress, ...]
    ports: tuple[EndpointPort, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointsSpec:
    namespace: str
    name: str
    subsets: tuple[EndpointSubset, ...]


def normalise_endpoints(obj: RawObject) -> RawObject:
    """``obj`` with ``subsets`` checked and each port's protocol defaulted, or Invalid."""
    causes = metadata_causes(obj, ENDPOINTS)
    subsets = obj.get("subsets")
    if subsets is None:
        subsets = []
    if not isinstance(subsets, list):
        causes.append(Cause(field="subsets", message="subsets must be a list"))
        subsets = []
    obj["subsets"] = [_subset(f"subsets[{i}]", s, causes) for i, s in enumerate(subsets)]
    if not obj["subsets"]:
        del obj["subsets"]
    raise_if_causes(causes, kind=ENDPOINTS.kind, name=name_of(obj))
    return obj


def parse_endpoints(obj: Mapping[str, Any]) -> EndpointsSpec:
    """The typed view of an Endpoints object (admitted ones always parse), or Invalid."""
    normal = normalise_endpoints({**obj, "metadata": dict(metadata_of(obj))})
    return EndpointsSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        subsets=tuple(
            EndpointSubset(
                ready=tuple(_typed_address(a) for a in subset.get("addresses") or ()),
                not_ready=tuple(_typed_address(a) for a in subset.get("notReadyAddresses") or ()),
                ports=tuple(
                    EndpointPort(name=p.get("name") or "", port=p["port"], protocol=p["protocol"])
                    for p in subset.get("ports") or ()
                ),
            )
            for subset in normal.get("subsets") or ()
        ),
    )


def _typed_address(address: Mapping[str, Any]) -> EndpointAddress:
    ref = address.get("targetRef")
    pod = ref.get("name") if isinstance(ref, Mapping) and ref.get("kind") == "Pod" else None
    return EndpointAddress(ip=address["ip"], hostname=address.get("hostname") or None, pod=pod)


def _subset(where: str, subset: object, causes: list[Cause]) -> dict[str, Any]:
    if not isinstance(subset, dict):
        causes.append(Cause(field=where, message="must be an object with addresses and ports"))
        return {}
    out = dict(subset)
    for field in ("addresses", "notReadyAddresses"):
        addresses = out.get(field)
        if addresses in (None, []):
            out.pop(field, None)
        elif not isinstance(addresses, list):
            causes.append(Cause(field=f"{where}.{field}", message="must be a list"))
        else:
            for i, address in enumerate(addresses):
                _check_address(f"{where}.{field}[{i}]", address, causes)
    if "addresses" not in out and "notReadyAddresses" not in out:
        message = "must specify `addresses` or `notReadyAddresses`"
        causes.append(Cause(field=where, message=message, reason="FieldValueRequired"))
    ports = out.get("ports")
    if ports in (None, []):
        out.pop("ports", None)
    elif not isinstance(ports, list):
        causes.append(Cause(field=f"{where}.ports", message="must be a list"))
    else:
        out["ports"] = [
            _port(f"{where}.ports[{i}]", p, len(ports), causes) for i, p in enumerate(ports)
        ]
        names = [p.get("name") or "" for p in out["ports"]]
        if len(set(names)) != len(names):
            message = "port names must be unique"
            causes.append(
                Cause(field=f"{where}.ports", message=message, reason="FieldValueDuplicate")
            )
    return out


def _check_address(where: str, address: object, causes: list[Cause]) -> None:
    if not isinstance(address, dict):
        causes.append(Cause(field=where, message="must be an object with ip"))
        return
    ip = address.get("ip")
    if not isinstance(ip, str) or not ip:
        causes.append(
            Cause(field=f"{where}.ip", message="Required value", reason="FieldValueRequired")
        )
    elif not _is_ip(ip):
        causes.append(
            Cause(
                field=f"{where}.ip",
                message=f"Invalid value: {as_json(ip)}: must be a valid IP address",
            )
        )
    hostname = address.get("hostname")
    if hostname not in (None, "") and (
        not isinstance(hostname, str) or dns1123_label_error(hostname)
    ):
        message = f"Invalid value: {as_json(hostname)}: must be a DNS-1123 label"
        causes.append(Cause(field=f"{where}.hostname", message=message))


def _port(where: str, port: object, count: int, causes: list[Cause]) -> dict[str, Any]:
    if not isinstance(port, dict):
        causes.append(Cause(field=where, message="must be an object with port"))
        return {}
    out = dict(port)
    name = out.get("name")
    if name in (None, ""):
        out.pop("name", None)
        if count > 1:
            causes.append(
                Cause(field=f"{where}.name", message="Required value", reason="FieldValueRequired")
            )
    elif not isinstance(name, str) or dns1123_label_error(name):
        causes.append(
            Cause(
                field=f"{where}.name",
                message=f"Invalid value: {as_json(name)}: must be a DNS-1123 label",
            )
        )
    number = out.get("port")
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
        causes.append(
            Cause(
                field=f"{where}.port",
                message=f"Invalid value: {as_json(number)}: must be between 1 and 65535",
            )
        )
    protocol = out.get("protocol") or "TCP"
    if protocol not in PROTOCOLS:
        causes.append(
            Cause(field=f"{where}.protocol", message=f"Unsupported value: {as_json(protocol)}")
        )
    out["protocol"] = protocol
    return out


def _is_ip(text: str) -> bool:
    try:
        return str(ipaddress.ip_address(text)) == text
    except ValueError:
        return False


# What the endpoints controller computes


def subsets_for(
    service: ServiceSpec, pods: Iterable[Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], frozenset[str]]:
    """The canonical ``subsets`` of a Service with a selector, and the names of the pods in it.

    Ready pods go to ``addresses``, the others to ``notReadyAddresses`` (all to ``addresses``
    with ``publishNotReadyAddresses``). A port whose ``targetPort`` is a name takes each pod's
    container port of that name and protocol; a pod that declares no such port is left out of
    that port, as Kubernetes does. As Kubernetes' ``RepackSubsets``, ports served by the same
    addresses share a subset.
    """
    by_port: dict[tuple[str, int, str], dict[str, tuple[dict[str, Any], bool]]] = {}
    portless: dict[str, tuple[dict[str, Any], bool]] = {}
    members: set[str] = set()
    for pod in pods:
        if namespace_of(pod) != service.namespace or not service.selects(labels_of(pod)):
            continue
        if not _in_endpoints(pod, service.publish_not_ready):
            continue
        address = _address(pod, service)
        ready = service.publish_not_ready or pod_ready(pod)
        members.add(name_of(pod))
        if not service.ports:
            if service.headless:
                portless[address["ip"]] = (address, ready)
            continue
        for service_port in service.ports:
            number = container_port(pod, service_port)
            if number is not None:
                key = (service_port.name, number, service_port.protocol)
                by_port.setdefault(key, {})[address["ip"]] = (address, ready)
    subsets = _packed(by_port)
    if portless:
        subsets.append(_subset_of(portless, []))
    return subsets, frozenset(members)


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Whether the pod's ``Ready`` condition is True."""
    status = pod.get("status")
    for condition in (status.get("conditions") if isinstance(status, Mapping) else None) or ():
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True"
    return False


def container_port(pod: Mapping[str, Any], service_port: ServicePort) -> int | None:
    """The port a Service port reaches on this pod, or None when the pod has no such name."""
    target = service_port.target_port
    if isinstance(target, int):
        return target
    spec = pod.get("spec")
    for container in (spec.get("containers") if isinstance(spec, Mapping) else None) or ():
        for port in (container.get("ports") if isinstance(container, Mapping) else None) or ():
            if (
                isinstance(port, Mapping)
                and port.get("name") == target
                and (port.get("protocol") or "TCP") == service_port.protocol
                and isinstance(port.get("containerPort"), int)
            ):
                return int(port["containerPort"])
    return None


def _in_endpoints(pod: Mapping[str, Any], include_terminating: bool) -> bool:
    status = pod.get("status")
    status = status if isinstance(status, Mapping) else {}
    if not status.get("podIP") or status.get("phase") in ENDED_PHASES:
        return False
    return include_terminating or not metadata_of(pod).get("deletionTimestamp")


def _address(pod: Mapping[str, Any], service: ServiceSpec) -> dict[str, Any]:
    meta, spec = metadata_of(pod), pod.get("spec")
    spec = spec if isinstance(spec, Mapping) else {}
    address: dict[str, Any] = {"ip": str(pod["status"]["podIP"])}
    if spec.get("hostname") and spec.get("subdomain") == service.name:
        address["hostname"] = str(spec["hostname"])
    if spec.get("nodeName"):
        address["nodeName"] = str(spec["nodeName"])
    address["targetRef"] = {
        "kind": "Pod",
        "namespace": namespace_of(pod),
        "name": name_of(pod),
        "uid": str(meta.get("uid") or ""),
    }
    return address


def _packed(
    by_port: Mapping[tuple[str, int, str], Mapping[str, tuple[dict[str, Any], bool]]],
) -> list[dict[str, Any]]:
    """One subset per distinct set of (address, ready), holding every port it serves."""
    groups: dict[frozenset[tuple[str, bool]], list[tuple[str, int, str]]] = {}
    addresses: dict[frozenset[tuple[str, bool]], Mapping[str, tuple[dict[str, Any], bool]]] = {}
    for port, served in by_port.items():
        key = frozenset((ip, ready) for ip, (_, ready) in served.items())
        groups.setdefault(key, []).append(port)
        addresses[key] = served
    subsets = [_subset_of(addresses[key], ports) for key, ports in groups.items()]
    return sorted(subsets, key=_subset_order)


def _subset_of(
    served: Mapping[str, tuple[dict[str, Any], bool]], ports: list[tuple[str, int, str]]
) -> dict[str, Any]:
    ordered = sorted(served.values(), key=lambda item: ipaddress.ip_address(item[0]["ip"]))
    subset: dict[str, Any] = {}
    ready = [address for address, is_ready in ordered if is_ready]
    not_ready = [address for address, is_ready in ordered if not is_ready]
    if ready:
        subset["addresses"] = ready
    if not_ready:
        subset["notReadyAddresses"] = not_ready
    if ports:
        subset["ports"] = [
            {**({"name": name} if name else {}), "port": number, "protocol": protocol}
            for name, number, protocol in sorted(ports)
        ]
    return subset


def _subset_order(subset: Mapping[str, Any]) -> tuple[str, ...]:
    ports = subset.get("ports") or ()
    return tuple(f"{p.get('name', '')}/{p['port']}/{p['protocol']}" for p in ports)
