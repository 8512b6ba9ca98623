"""Discovery documents like a real API server: ``/version``, ``/api``, ``/apis``, per group/version
resource lists and aggregated discovery (``apidiscovery.k8s.io`` v2 and v2beta1).

Everything is derived from the kinds registry plus the subresources this server serves. kubectl's
dispatcher picks its binary from ``/version``, so the server claims Kubernetes 1.32. This module
is pure.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from typing import Any

from funcmesh import __version__
from funcmesh.model.kinds import (
    ALL,
    DEPLOYMENT,
    FUNCTION,
    NAMESPACE,
    POD,
    ResourceType,
    served_under,
)

KUBERNETES_MAJOR = "1"
KUBERNETES_MINOR = "32"
KUBERNETES_VERSION = f"v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0"
STATUS_VERBS = ("get", "patch", "update")

# Subresources served per kind: name -> verbs. ``log`` and ``stats`` are funcmesh extensions
# for functions; ``pods/log`` is what ``kubectl logs`` reads.
SUBRESOURCES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    FUNCTION.key: (("status", STATUS_VERBS), ("log", ("get",)), ("stats", ("get",))),
    NAMESPACE.key: (("status", STATUS_VERBS),),
    POD.key: (("log", ("get",)),),
    DEPLOYMENT.key: (("scale", STATUS_VERBS),),
}
# Subresources whose objects are of another kind than their resource's (what kubectl scale reads)
SUBRESOURCE_KINDS = {
    (DEPLOYMENT.key, "scale"): {"group": "autoscaling", "version": "v1", "kind": "Scale"},
}
CATEGORIES: dict[str, tuple[str, ...]] = {FUNCTION.key: ("all",), POD.key: ("all",)}


def version_info() -> dict[str, str]:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)
    return {
        "major": KUBERNETES_MAJOR,
        "minor": KUBERNETES_MINOR,
        "gitVersion": KUBERNETES_VERSION,
        "gitCommit": f"funcmesh-{__version__}",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": f"python{platform.python_version()}",
        "compiler": "cpython",
        "platform": f"{platform.system().lower()}/{arch}",
    }


def group_versions() -> dict[str, list[str]]:
    """Served versions per group, in registry order (the first is preferred: a kind's storage
    version comes before the older versions it is also served under)."""
    groups: dict[str, list[str]] = {}
    for rt in ALL:
        versions = groups.setdefault(rt.group, [])
        versions.extend(version for version in rt.versions if version not in versions)
    return groups


def api_versions(server_address: str) -> dict[str, Any]:
    """``/api``: the versions of the core group."""
    return {
        "kind": "APIVersions",
        "versions": group_versions().get("", []),
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def api_group(group: str) -> dict[str, Any] | None:
    """``/apis/{group}``, or None when the group is not served."""
    versions = group_versions().get(group) if group else None
    if not versions:
        return None
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list() -> dict[str, Any]:
    """``/apis``: every named group."""
    groups = [api_group(group) for group in group_versions() if group]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """``/api/v1`` or ``/apis/{group}/{version}``, or None when not served."""
    kinds = served_under(group, version)
    if not kinds:
        return None
    resources: list[dict[str, Any]] = []
    for rt in kinds:
        resources.append(_api_resource(rt))
        resources.extend(
            {
                "name": f"{rt.plural}/{sub}",
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(verbs),
                **SUBRESOURCE_KINDS.get((rt.key, sub), {}),
            }
            for sub, verbs in SUBRESOURCES.get(rt.key, ())
        )
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def _api_resource(rt: ResourceType) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "name": rt.plural,
        "singularName": rt.singular,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        resource["shortNames"] = list(rt.short_names)
    if rt.key in CATEGORIES:
        resource["categories"] = list(CATEGORIES[rt.key])
    return resource


def aggregated_discovery(*, core: bool, version: str) -> dict[str, Any]:
    """``APIGroupDiscoveryList`` for ``/api`` (core) or ``/apis`` (named groups)."""
    items = [
        {"metadata": {"name": group}, "versions": [_version_entry(group, v) for v in versions]}
        for group, versions in group_versions().items()
        if (group == "") == core
    ]
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": items,
    }


def discovery_content_type(version: str) -> str:
    return f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"


def _version_entry(group: str, version: str) -> dict[str, Any]:
    return {
        "version": version,
        "resources": list(_discovery_resources(served_under(group, version), version)),
        "freshness": "Current",
    }


def _discovery_resources(kinds: Iterable[ResourceType], version: str) -> Iterable[dict[str, Any]]:
    for rt in kinds:
        response_kind = {"group": rt.group, "version": version, "kind": rt.kind}
        resource: dict[str, Any] = {
            "resource": rt.plural,
            "responseKind": response_kind,
            "scope": "Namespaced" if rt.namespaced else "Cluster",
            "singularResource": rt.singular,
            "verbs": list(rt.verbs),
        }
        if rt.short_names:
            resource["shortNames"] = list(rt.short_names)
        if rt.key in CATEGORIES:
            resource["categories"] = list(CATEGORIES[rt.key])
        subresources = SUBRESOURCES.get(rt.key, ())
        if subresources:
            resource["subresources"] = [
                {
                    "subresource": sub,
                    "responseKind": SUBRESOURCE_KINDS.get((rt.key, sub), response_kind),
                    "verbs": list(verbs),
                }
                for sub, verbs in subresources
            ]
        yield resource
