"""Cluster DNS for the pods of workloads: their own ``/etc/resolv.conf`` and ``/etc/hosts``.

A Kubernetes pod finds ``web`` because its resolv.conf names the cluster DNS and the search list
``<ns>.svc.cluster.local svc.cluster.local cluster.local`` with ``ndots:5``. funcmesh pods are
processes of this machine, so a root daemon writes each pod a resolv.conf and a hosts file here,
under its work directory, and the launcher (``shims/_funcmesh_workload.py``) bind-mounts them
over ``/etc``'s in a private mount namespace, with the pod's host name in a UTS namespace of its
own. A resolv.conf cannot name a port: it names an address where the daemon's DNS server answers
on port 53, the kube-dns Service's. Without one (the daemon is not root, or that address was
taken) pods keep the machine's files, since a resolv.conf naming nobody would break every
lookup. Every pod also gets ``FUNCMESH_DNS_SERVER`` and ``FUNCMESH_DNS_SEARCH``, as function
workers do.

Must not: enter namespaces (the launcher does), or block the event loop (``PodEtc.write`` and
``remove`` are for a thread).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from funcmesh.model.pod_dns import (
    CLUSTER_DOMAIN,
    cluster_first_config,
    pod_hostname,
    pod_hosts,
    resolv_conf,
    search_domains,
)

DNS_PORT: Final = 53  # the only port a resolv.conf can name
WILDCARD_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True, slots=True, kw_only=True)
class PodEtc:
    """A pod's own ``/etc`` files and host name, and where the files are written."""

    directory: Path
    dns_config: Mapping[str, Any]  # what the Pod shows as spec.dnsConfig
    hosts: str
    hostname: str

    def write(self) -> None:
        """Write ``resolv.conf`` and ``hosts``, readable by the pod's user (blocking)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, text in (("resolv.conf", resolv_conf(self.dns_config)), ("hosts", self.hosts)):
            path = self.directory / name
            path.write_text(text)
            path.chmod(0o644)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDns:
    """How the pods of workloads reach the daemon's DNS server."""

    server: str  # HOST:PORT of the DNS server: FUNCMESH_DNS_SERVER
    nameserver: str | None = None  # an IP where it answers on port 53, for resolv.conf
    etc_root: Path | None = None  # where pods' /etc files go; None: none (the daemon is not root)
    zone: str = CLUSTER_DOMAIN

    def environment(self, namespace: str) -> dict[str, str]:
        """The variables the function shims read, for code that wants to use them."""
        return {
            "FUNCMESH_DNS_SERVER": self.server,
            "FUNCMESH_DNS_SEARCH": " ".join(search_domains(namespace, self.zone)),
        }

    def pod_etc(
        self,
        *,
        namespace: str,
        pod: str,
        ip: str,
        hostname: str | None = None,
        subdomain: str | None = None,
    ) -> PodEtc | None:
        """The pod's own ``/etc`` files; None when pods keep the machine's."""
        if self.nameserver is None or self.etc_root is None:
            return None
        return PodEtc(
            directory=self.etc_root / f"{namespace}_{pod}",
            dns_config=cluster_first_config(namespace, self.nameserver, self.zone),
            hosts=pod_hosts(
                ip=ip,
                pod_name=pod,
                namespace=namespace,
                hostname=hostname,
                subdomain=subdomain,
                zone=self.zone,
            ),
            hostname=pod_hostname(pod, hostname),
        )


def pod_nameserver(addresses: Iterable[tuple[str, int]], *, kube_dns_ip: str) -> str | None:
    """The address a pod's resolv.conf names, of those the DNS server listens on: the kube-dns
    Service's when it is served, else any served on port 53; None when none is."""
    served = [WILDCARD_LOOPBACK.get(host, host) for host, port in addresses if port == DNS_PORT]
    if kube_dns_ip in served:
        return kube_dns_ip
    return served[0] if served else None
