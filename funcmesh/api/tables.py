"""Server-side printing: ``meta.k8s.io`` Tables that kubectl renders for ``kubectl get``.

Each kind has its columns (priority 1 ones show only with ``-o wide``); kinds without their own
columns get NAME and AGE, formatted exactly like kubectl by ``funcmesh.api.ages``. This module
is pure: the caller passes the current time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.api.ages import age_since
from funcmesh.model.conditions import function_status_text
from funcmesh.model.kinds import (
    AUTHORIZATION_POLICY,
    DEPLOYMENT,
    DESTINATION_RULE,
    ENDPOINTS,
    EVENT,
    FUNCTION,
    GATEWAY,
    HTTP_TRIGGER,
    NAMESPACE,
    PEER_AUTHENTICATION,
    POD,
    SECRET,
    SERVICE,
    VIRTUAL_SERVICE,
    ResourceType,
)
from funcmesh.model.objects import RawObject, metadata_of, name_of

Cell = str | int


@dataclass(frozen=True, slots=True, kw_only=True)
class Column:
    name: str
    cell: Callable[[Mapping[str, Any], float], Cell]  # (object, now in Unix seconds)
    type: str = "string"
    format: str = ""
    description: str = ""
    priority: int = 0

    def definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        }


def table(
    rt: ResourceType,
    objects: list[RawObject],
    *,
    now_s: float,
    include_object: str = "Metadata",
    with_columns: bool = True,
    table_version: str = "v1",
    list_metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Table with one row per object."""
    columns = COLUMNS.get(rt.key, DEFAULT_COLUMNS)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{table_version}",
        "metadata": dict(list_metadata or {}),
        "columnDefinitions": [c.definition() for c in columns] if with_columns else [],
        "rows": [_row(columns, obj, now_s, include_object, table_version) for obj in objects],
    }


def _row(
    columns: tuple[Column, ...], obj: RawObject, now_s: float, include_object: str, version: str
) -> dict[str, Any]:
    row: dict[str, Any] = {"cells": [column.cell(obj, now_s) for column in columns]}
    if include_object == "Object":
        row["object"] = obj
    elif include_object == "Metadata":
        row["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": f"meta.k8s.io/{version}",
            "metadata": metadata_of(obj),
        }
    return row


# cells


def _name(obj: Mapping[str, Any], _now_s: float) -> Cell:
    return name_of(obj)


def _age(obj: Mapping[str, Any], now_s: float) -> Cell:
    return age_since(metadata_of(obj).get("creationTimestamp"), now_s)


def _field(*path: str, default: str = "") -> Callable[[Mapping[str, Any], float], Cell]:
    def cell(obj: Mapping[str, Any], _now_s: float) -> Cell:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        return default if value in (None, "") else str(value)

    return cell


def _function_status(obj: Mapping[str, Any], _now_s: float) -> Cell:
    return function_status_text(obj)


def _container_statuses(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return [s for s in statuses if isinstance(s, Mapping)]


def _pod_ready(obj: Mapping[str, Any], _now_s: float) -> Cell:
    containers = (obj.get("spec") or {}).get("containers") or []
    statuses = _container_statuses(obj)
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{max(len(containers), len(statuses))}"


def _pod_status(obj: Mapping[str, Any], _now_s: float) -> Cell:
    if metadata_of(obj).get("deletionTimestamp"):
        return "Terminating"
    for status in _container_statuses(obj):
        for state in ("waiting", "terminated"):
            reason = ((status.get("state") or {}).get(state) or {}).get("reason")
            if reason:
                return str(reason)
    pod_status = obj.get("status") or {}
    return str(pod_status.get("reason") or pod_status.get("phase") or "Unknown")


def _pod_restarts(obj: Mapping[str, Any], _now_s: float) -> Cell:
    return sum(int(s.get("restartCount") or 0) for s in _container_statuses(obj))


def _event_last_seen(obj: Mapping[str, Any], now_s: float) -> Cell:
    """``4s``, or ``4s (x300 over 5m)`` for a merged series, as kubectl prints it."""
    created = metadata_of(obj).get("creationTimestamp")
    last = age_since(obj.get("lastTimestamp") or obj.get("eventTime") or created, now_s)
    count = obj.get("count")
    if isinstance(count, int) and count > 1:
        first = age_since(obj.get("firstTimestamp") or created, now_s)
        return f"{last} (x{count} over {first})"
    return last


def _event_object(obj: Mapping[str, Any], _now_s: float) -> Cell:
    involved = obj.get("involvedObject") or {}
    return f"{str(involved.get('kind') or '').lower()}/{involved.get('name') or ''}"


def _secret_data_count(obj: Mapping[str, Any], _now_s: float) -> Cell:
    data = obj.get("data")
    return len(data) if isinstance(data, Mapping) else 0  # how many keys: never the values


def _http_trigger_path(obj: Mapping[str, Any], _now_s: float) -> Cell:
    path = str((obj.get("spec") or {}).get("path") or "")
    return path if path.startswith("/") else "/" + path


def _service_cluster_ip(obj: Mapping[str, Any], _now_s: float) -> Cell:
    ips = (obj.get("spec") or {}).get("clusterIPs")
    return str(ips[0]) if isinstance(ips, list) and ips else "<none>"


def _service_external_ip(obj: Mapping[str, Any], _now_s: float) -> Cell:
    """kubectl's ``getServiceExternalIP`` (the unwide form)."""
    spec = obj.get("spec") or {}
    external_ips = [str(ip) for ip in spec.get("externalIPs") or ()]
    service_type = spec.get("type") or "ClusterIP"
    if service_type in ("ClusterIP", "NodePort"):
        return ",".join(external_ips) or "<none>"
    if service_type == "ExternalName":
        return str(spec.get("externalName") or "")
    if service_type == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
        balancers = ",".join(str(i.get("ip") or i.get("hostname") or "") for i in ingress)
        if len(balancers) > 16:
            balancers = balancers[:13] + "..."
        if external_ips:
            return ",".join([*([balancers] if balancers else []), *external_ips])
        return balancers or "<pending>"
    return "<unknown>"


def _service_ports(obj: Mapping[str, Any], _now_s: float) -> Cell:
    """kubectl's ``makePortString``: ``80/TCP``, ``80:30080/TCP`` with a node port."""
    pieces = []
    for port in (obj.get("spec") or {}).get("ports") or ():
        node_port = f":{port['nodePort']}" if port.get("nodePort") else ""
        pieces.append(f"{port.get('port')}{node_port}/{port.get('protocol') or 'TCP'}")
    return ",".join(pieces) or "<none>"


def _service_selector(obj: Mapping[str, Any], _now_s: float) -> Cell:
    selector = (obj.get("spec") or {}).get("selector") or {}
    return ",".join(f"{key}={selector[key]}" for key in sorted(selector)) or "<none>"


def _endpoints(obj: Mapping[str, Any], _now_s: float) -> Cell:
    """kubectl's ``formatEndpoints``: the first three ``ip:port``, then ``+ N more...``."""
    subsets = obj.get("subsets") or ()
    if not subsets:
        return "<none>"
    shown: list[str] = []
    count, most = 0, 3
    for subset in subsets:
        addresses = [str(a.get("ip")) for a in subset.get("addresses") or ()]
        ports = subset.get("ports") or ()
        for port in ports or (None,):
            count += len(addresses)
            for ip in addresses:
                if len(shown) == most:
                    break
                host = f"[{ip}]" if ":" in ip else ip  # net.JoinHostPort
                shown.append(ip if port is None else f"{host}:{port.get('port')}")
    text = ",".join(shown)
    return f"{text} + {count - most} more..." if count > most else text


def _deployment_ready(obj: Mapping[str, Any], _now_s: float) -> Cell:
    desired = (obj.get("spec") or {}).get("replicas", 1)
    return f"{(obj.get('status') or {}).get('readyReplicas') or 0}/{desired}"


def _status_count(key: str) -> Callable[[Mapping[str, Any], float], Cell]:
    def cell(obj: Mapping[str, Any], _now_s: float) -> Cell:
        value = (obj.get("status") or {}).get(key)
        return value if isinstance(value, int) else 0

    return cell


def _template_containers(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [c for c in spec.get("containers") or () if isinstance(c, Mapping)]


def _deployment_containers(obj: Mapping[str, Any], _now_s: float) -> Cell:
    return ",".join(str(c.get("name") or "") for c in _template_containers(obj))


def _deployment_images(obj: Mapping[str, Any], _now_s: float) -> Cell:
    return ",".join(str(c.get("image") or "<none>") for c in _template_containers(obj))


def _label_selector(obj: Mapping[str, Any], _now_s: float) -> Cell:
    """kubectl's ``FormatLabelSelector``: ``app=web,tier in (a,b)``."""
    selector = (obj.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels") or {}
    parts = [f"{key}={labels[key]}" for key in sorted(labels)]
    operators = {"In": "in", "NotIn": "notin"}
    for expression in selector.get("matchExpressions") or ():
        key, operator = expression.get("key"), expression.get("operator")
        if operator in operators:
            values = ",".join(sorted(str(v) for v in expression.get("values") or ()))
            parts.append(f"{key} {operators[operator]} ({values})")
        else:
            parts.append(str(key) if operator == "Exists" else f"!{key}")
    return ",".join(parts) or "<none>"


def _list_field(key: str) -> Callable[[Mapping[str, Any], float], Cell]:
    """A list of strings in the spec as Istio's printer columns show it: ``["a","b"]``."""

    def cell(obj: Mapping[str, Any], _now_s: float) -> Cell:
        spec = obj.get("spec")
        items = spec.get(key) if isinstance(spec, Mapping) else None
        if not isinstance(items, list) or not items:
            return ""
        return "[" + ",".join(f'"{item}"' for item in items) + "]"

    return cell


_NAME = Column(name="Name", cell=_name, format="name", description="Name of the object")
_AGE = Column(name="Age", cell=_age, description="Time since the object was created")

DEFAULT_COLUMNS = (_NAME, _AGE)
COLUMNS: dict[str, tuple[Column, ...]] = {
    FUNCTION.key: (
        _NAME,
        Column(name="Runtime", cell=_field("spec", "runtime"), description="Runtime id"),
        Column(name="Handler", cell=_field("spec", "handler"), description="module.function"),
        Column(name="Status", cell=_function_status, description="Ready, or why not"),
        _AGE,
    ),
    POD.key: (
        _NAME,
        Column(name="Ready", cell=_pod_ready, description="Ready containers of all"),
        Column(name="Status", cell=_pod_status, description="Phase or container state"),
        Column(name="Restarts", cell=_pod_restarts, type="integer", description="Restarts"),
        _AGE,
        Column(name="IP", cell=_field("status", "podIP", default="<none>"), priority=1),
        Column(name="Node", cell=_field("spec", "nodeName", default="<none>"), priority=1),
    ),
    NAMESPACE.key: (
        _NAME,
        Column(name="Status", cell=_field("status", "phase", default="Active")),
        _AGE,
    ),
    EVENT.key: (
        Column(name="Last Seen", cell=_event_last_seen, description="Time of the last occurrence"),
        Column(name="Type", cell=_field("type")),
        Column(name="Reason", cell=_field("reason")),
        Column(name="Object", cell=_event_object),
        Column(name="Message", cell=_field("message")),
    ),
    SECRET.key: (
        _NAME,
        Column(name="Type", cell=_field("type", default="Opaque"), description="Secret type"),
        Column(name="Data", cell=_secret_data_count, type="integer", description="Keys"),
        _AGE,
    ),
    HTTP_TRIGGER.key: (
        _NAME,
        Column(name="Function", cell=_field("spec", "function-name"), description="Function"),
        Column(name="Host", cell=_field("spec", "host-name", default="*"), description="Host"),
        Column(name="Path", cell=_http_trigger_path, description="Path prefix"),
        _AGE,
    ),
    SERVICE.key: (
        _NAME,
        Column(name="Type", cell=_field("spec", "type", default="ClusterIP"), description="Type"),
        Column(name="Cluster-IP", cell=_service_cluster_ip, description="The virtual IP"),
        Column(name="External-IP", cell=_service_external_ip, description="External addresses"),
        Column(name="Port(s)", cell=_service_ports, description="Ports of the Service"),
        _AGE,
        Column(name="Selector", cell=_service_selector, description="Pod labels", priority=1),
    ),
    ENDPOINTS.key: (
        _NAME,
        Column(name="Endpoints", cell=_endpoints, description="Ready addresses and ports"),
        _AGE,
    ),
    DEPLOYMENT.key: (
        _NAME,
        Column(name="Ready", cell=_deployment_ready, description="Ready pods of the desired"),
        Column(
            name="Up-to-date",
            cell=_status_count("updatedReplicas"),
            type="integer",
            description="Pods of the current template",
        ),
        Column(
            name="Available",
            cell=_status_count("availableReplicas"),
            type="integer",
            description="Pods ready for at least minReadySeconds",
        ),
        _AGE,
        Column(name="Containers", cell=_deployment_containers, priority=1),
        Column(name="Images", cell=_deployment_images, priority=1),
        Column(name="Selector", cell=_label_selector, priority=1),
    ),
    # Istio's additionalPrinterColumns
    VIRTUAL_SERVICE.key: (
        _NAME,
        Column(name="Gateways", cell=_list_field("gateways"), description="Gateways bound"),
        Column(name="Hosts", cell=_list_field("hosts"), description="Destination hosts"),
        _AGE,
    ),
    DESTINATION_RULE.key: (
        _NAME,
        Column(name="Host", cell=_field("spec", "host"), description="The rule's host"),
        _AGE,
    ),
    GATEWAY.key: (_NAME, _AGE),
    AUTHORIZATION_POLICY.key: (
        _NAME,
        Column(name="Action", cell=_field("spec", "action", default="ALLOW"), description="Action"),
        _AGE,
    ),
    PEER_AUTHENTICATION.key: (
        _NAME,
        Column(name="Mode", cell=_field("spec", "mtls", "mode"), description="mTLS mode"),
        _AGE,
    ),
}
