"""The normal form of a core v1 Service's ``spec``: its field rules, defaults and values.

:class:`SpecNormaliser` checks each field as Kubernetes' validation does (type, ports and their
``targetPort``/``nodePort``, selector, session affinity, ExternalName, the cluster IP fields,
external IPs), fills in the defaults and collects every bad field as a ``Cause`` rather than
stopping at the first. The metadata and the object as a whole are ``funcmesh.model.services``'.
No I/O here, and no allocation: an empty ``clusterIP`` stays empty for the allocator to fill.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from funcmesh.errors import Cause
from funcmesh.model.names import (
    dns1123_label_error,
    dns1123_subdomain_error,
    label_key_error,
    label_value_error,
)

CLUSTER_IP = "ClusterIP"
NODE_PORT = "NodePort"
LOAD_BALANCER = "LoadBalancer"
EXTERNAL_NAME = "ExternalName"
TYPES = (CLUSTER_IP, NODE_PORT, LOAD_BALANCER, EXTERNAL_NAME)
HEADLESS = "None"  # spec.clusterIP of a headless Service
PROTOCOLS = ("TCP", "UDP", "SCTP")
NO_AFFINITY, CLIENT_IP_AFFINITY = "None", "ClientIP"
DEFAULT_AFFINITY_TIMEOUT_S = 10800  # Kubernetes' default: three hours
MAX_AFFINITY_TIMEOUT_S = 86400
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # IANA_SVC_NAME, without the length


def as_json(value: object) -> str:
    """A value as Kubernetes shows it in an error message (Go's %q for strings)."""
    return json.dumps(value, default=str)


class SpecNormaliser:
    """Builds the normal form of one ``spec``, collecting causes instead of stopping early."""

    def __init__(self, causes: list[Cause]) -> None:
        self._causes = causes

    def fail(self, field: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self._causes.append(Cause(field=f"spec.{field}", message=message, reason=reason))

    def spec(self, spec: Mapping[str, Any], old: Mapping[str, Any] | None) -> dict[str, Any]:
        out = dict(spec)
        service_type = self.service_type(spec.get("type"))
        out["type"] = service_type
        out["ports"] = self.ports(spec.get("ports"), service_type)
        self.selector(out)
        self.session_affinity(out)
        self.external_name(out, service_type)
        self.cluster_ip(out, old, service_type)
        self.external_ips(out)
        publish = out.get("publishNotReadyAddresses")
        if publish is not None and not isinstance(publish, bool):
            self.fail("publishNotReadyAddresses", "must be true or false")
        if not out["ports"]:
            del out["ports"]
            if service_type != EXTERNAL_NAME and out.get("clusterIP") != HEADLESS:
                self.fail("ports", "Required value", reason="FieldValueRequired")
        return out

    def service_type(self, value: object) -> str:
        if value in (None, ""):
            return CLUSTER_IP
        if value not in TYPES:
            supported = ", ".join(f'"{t}"' for t in TYPES)
            self.fail("type", f"Unsupported value: {as_json(value)}: supported values: {supported}")
            return CLUSTER_IP
        return str(value)

    def ports(self, value: object, service_type: str) -> list[dict[str, Any]]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail("ports", "must be a list of ports")
            return []
        ports = [self.port(i, item, service_type) for i, item in enumerate(value)]
        names: set[str] = set()
        pairs: set[str] = set()
        for i, port in enumerate(ports):
            name, pair = port.get("name") or "", f"{port.get('port')}/{port.get('protocol')}"
            if len(ports) > 1 and not name:
                self.fail(f"ports[{i}].name", "Required value", reason="FieldValueRequired")
            elif name in names:
                self.fail(f"ports[{i}].name", f'Duplicate value: "{name}"', _DUPLICATE)
            if pair in pairs:
                self.fail(f"ports[{i}]", f"Duplicate value: {pair}", _DUPLICATE)
            names.add(name)
            pairs.add(pair)
        return ports

    def port(self, i: int, item: object, service_type: str) -> dict[str, Any]:
        where = f"ports[{i}]"
        if not isinstance(item, dict):
            self.fail(where, "must be an object with port")
            return {}
        port = dict(item)
        name = port.get("name")
        if name not in (None, ""):
            if not isinstance(name, str):
                self.fail(f"{where}.name", "must be a string")
            elif error := dns1123_label_error(name):
                self.fail(f"{where}.name", error)
        else:
            port.pop("name", None)
        number = port.get("port")
        if number is None:
            self.fail(f"{where}.port", "Required value", reason="FieldValueRequired")
        elif not _is_port_number(number):
            self.fail(
                f"{where}.port", f"Invalid value: {as_json(number)}: must be between 1 and 65535"
            )
        protocol = port.get("protocol") or "TCP"
        if protocol not in PROTOCOLS:
            supported = ", ".join(f'"{p}"' for p in PROTOCOLS)
            self.fail(
                f"{where}.protocol",
                f"Unsupported value: {as_json(protocol)}: supported: {supported}",
            )
        port["protocol"] = protocol
        port["targetPort"] = self.target_port(where, port.get("targetPort"), number)
        self.node_port(where, port, service_type)
        return port

    def target_port(self, where: str, value: object, port: object) -> object:
        if value in (None, "", 0):
            return port
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        if isinstance(value, str):
            if not _is_port_name(value):
                self.fail(
                    f"{where}.targetPort", f"Invalid value: {as_json(value)}: {_PORT_NAME_RULE}"
                )
            return value
        if not _is_port_number(value):
            self.fail(
                f"{where}.targetPort",
                f"Invalid value: {as_json(value)}: must be between 1 and 65535",
            )
        return value

    def node_port(self, where: str, port: dict[str, Any], service_type: str) -> None:
        node_port = port.get("nodePort")
        if node_port in (None, 0):
            port.pop("nodePort", None)
            return
        if service_type not in (NODE_PORT, LOAD_BALANCER):
            self.fail(f"{where}.nodePort", f"may not be used when `type` is '{service_type}'")
        elif not _is_port_number(node_port):
            self.fail(f"{where}.nodePort", f"Invalid value: {as_json(node_port)}: must be 1-65535")

    def selector(self, out: dict[str, Any]) -> None:
        selector = out.get("selector")
        if selector is None or selector == {}:
            out.pop("selector", None)  # no selector: the user writes the Endpoints
            return
        if not isinstance(selector, dict):
            self.fail("selector", "must be a map of label keys to values")
            return
        for key, value in selector.items():
            error = label_key_error(str(key))
            if error is None:
                error = label_value_error(value) if isinstance(value, str) else "must be a string"
            if error:
                self.fail("selector", error)

    def session_affinity(self, out: dict[str, Any]) -> None:
        affinity = out.get("sessionAffinity") or NO_AFFINITY
        out["sessionAffinity"] = affinity
        config = out.get("sessionAffinityConfig")
        if affinity not in (NO_AFFINITY, CLIENT_IP_AFFINITY):
            self.fail(
                "sessionAffinity", f'Unsupported value: {as_json(affinity)}: "None", "ClientIP"'
            )
            return
        if affinity == NO_AFFINITY:
            if config not in (None, {}):
                self.fail("sessionAffinityConfig", "must not be set when sessionAffinity is None")
            out.pop("sessionAffinityConfig", None)
            return
        client_ip = (config or {}).get("clientIP") if isinstance(config, dict) else None
        timeout = (client_ip or {}).get("timeoutSeconds") if isinstance(client_ip, dict) else None
        if timeout is None:
            timeout = DEFAULT_AFFINITY_TIMEOUT_S
        elif (
            isinstance(timeout, bool)
            or not isinstance(timeout, int)
            or not (0 < timeout <= MAX_AFFINITY_TIMEOUT_S)
        ):
            field = "sessionAffinityConfig.clientIP.timeoutSeconds"
            self.fail(field, f"Invalid value: {as_json(timeout)}: must be > 0 and <= 86400")
        out["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}

    def external_name(self, out: dict[str, Any], service_type: str) -> None:
        name = out.get("externalName")
        if service_type != EXTERNAL_NAME:
            out.pop("externalName", None)
            return
        if not isinstance(name, str) or not name:
            self.fail("externalName", "Required value", reason="FieldValueRequired")
            return
        if dns1123_subdomain_error(name.rstrip(".").lower()):
            self.fail("externalName", f"Invalid value: {as_json(name)}: must be a valid DNS name")

    def cluster_ip(
        self, out: dict[str, Any], old: Mapping[str, Any] | None, service_type: str
    ) -> None:
        wanted = self.requested_cluster_ip(out)
        old_ip = _old_cluster_ip(old)
        if service_type == EXTERNAL_NAME:
            if wanted not in ("", old_ip):
                self.fail("clusterIP", "may not be set for ExternalName services")
            for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                out.pop(field, None)
            return
        if wanted == HEADLESS and service_type in (NODE_PORT, LOAD_BALANCER):
            self.fail("clusterIP", f"may not be set to 'None' for {service_type} services")
        if old_ip and wanted == "":
            wanted = old_ip  # an update that leaves the IP out keeps it (as Kubernetes does)
        elif old_ip and wanted != old_ip:
            self.fail("clusterIP", f"Invalid value: {as_json(wanted)}: field is immutable")
            wanted = old_ip
        out["clusterIP"] = wanted
        out["clusterIPs"] = [wanted] if wanted else []
        if not wanted:
            del out["clusterIPs"]
        family = "IPv6" if ":" in wanted else "IPv4"
        out.setdefault("ipFamilies", [family])
        out.setdefault("ipFamilyPolicy", "SingleStack")
        out.setdefault("internalTrafficPolicy", "Cluster")

    def requested_cluster_ip(self, out: Mapping[str, Any]) -> str:
        """The one cluster IP asked for: ``clusterIP``, or the first of ``clusterIPs``."""
        single, many = out.get("clusterIP"), out.get("clusterIPs")
        if single is not None and not isinstance(single, str):
            self.fail("clusterIP", "must be a string")
            single = ""
        if many not in (None, []) and (
            not isinstance(many, list) or not all(isinstance(ip, str) for ip in many)
        ):
            self.fail("clusterIPs", "must be a list of strings")
            many = None
        listed = list(many or [])
        if len(listed) > 1:
            self.fail("clusterIPs", "dual-stack Services are not supported: give one IP")
        wanted = single or (listed[0] if listed else "")
        if single and listed and listed[0] != single:
            message = (
                f"Invalid value: {as_json(listed)}: element [0] must match clusterIP "
                f"{as_json(single)}"
            )
            self.fail("clusterIPs", message)
        if wanted not in ("", HEADLESS) and not _is_ip(wanted):
            self.fail(
                "clusterIP",
                f'Invalid value: {as_json(wanted)}: must be a valid IP address, "None" or empty',
            )
            return ""
        return wanted

    def external_ips(self, out: dict[str, Any]) -> None:
        ips = out.get("externalIPs")
        if ips in (None, []):
            out.pop("externalIPs", None)
            return
        if not isinstance(ips, list) or not all(isinstance(ip, str) and _is_ip(ip) for ip in ips):
            self.fail(
                "externalIPs", f"Invalid value: {as_json(ips)}: must be a list of IP addresses"
            )


_DUPLICATE = "FieldValueDuplicate"
_PORT_NAME_RULE = (
    "a port name must be at most 15 characters of lower case letters, digits and '-', "
    "with at least one letter, starting and ending with a letter or digit, without '--'"
)


def _old_cluster_ip(old: Mapping[str, Any] | None) -> str:
    if old is None or old.get("type") == EXTERNAL_NAME:
        return ""
    value = old.get("clusterIP")
    return value if isinstance(value, str) else ""


def _is_port_name(text: str) -> bool:
    """IANA_SVC_NAME, the rule for a container port's name."""
    return (
        len(text) <= 15
        and bool(_PORT_NAME.match(text))
        and "--" not in text
        and any(c.isalpha() for c in text)
    )


def _is_port_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _is_ip(text: str) -> bool:
    try:
        return str(ipaddress.ip_address(text)) == text  # canonical text only (no 127.096.0.1)
    except ValueError:
        return False
