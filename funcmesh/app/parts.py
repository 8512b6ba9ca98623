"""The parts the composition root wires together that need a little code of their own: the
contexts of function pools and workloads, the DNS server and the cluster DNS settings of pods,
Node.js starters, kernel NAT for Service VIPs, and what the API shows of the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from funcmesh import __version__
from funcmesh.app.host import worker_identity
from funcmesh.discovery.service_env import ServiceEnvironments
from funcmesh.discovery.services import ServiceTable
from funcmesh.errors import Unavailable
from funcmesh.gateway.vip_nat import TOOLS_PATH, NatTable, open_nat_table
from funcmesh.nameserver.server import NameServer, start_nameserver
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.catalog import RuntimeCatalog
from funcmesh.runtime.instances import Instance
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.node import NodeStarter
from funcmesh.runtime.node_processes import install_shim
from funcmesh.runtime.pool import PoolContext
from funcmesh.runtime.pools import PodEvents, Zygotes
from funcmesh.runtime.starters import WorkerStarter
from funcmesh.runtime.workload_context import WorkloadContext
from funcmesh.runtime.workload_dns import ClusterDns, pod_nameserver
from funcmesh.settings import DNS_PORT, DaemonSettings

logger = logging.getLogger(__name__)


class ServerConfig:
    """``get-server-config``: the runtimes this machine can run, and where its DNS answers."""

    def __init__(self, catalog: RuntimeCatalog, *, dns_address: str = "") -> None:
        self._catalog = catalog
        self._dns_address = dns_address

    def server_config(self) -> Mapping[str, Any]:
        runtimes = [
            {
                "id": runtime.id,
                "language": runtime.language,
                "version": ".".join(map(str, runtime.version)),
            }
            for runtime in self._catalog.runtimes
        ]
        return {"runtimes": runtimes, "version": __version__, "dnsAddress": self._dns_address}


def workload_context(
    settings: DaemonSettings,
    logbook: LogBook,
    pod_events: PodEvents,
    *,
    addresses: AddressPool,
    work_dir: Path,
    dns: ClusterDns,
    before_stop: Callable[[str], Awaitable[None]],
) -> WorkloadContext:
    """Replicas run as the workers do (nobody under a root daemon), at home in work_dir/pods."""
    uid, gid = worker_identity()
    scratch = work_dir / "pods"
    scratch.mkdir(exist_ok=True)
    scratch.chmod(0o711)
    return WorkloadContext(
        addresses=addresses,
        logbook=logbook,
        scratch_root=scratch,
        on_pod_change=pod_events.publish,
        worker_uid=uid,
        worker_gid=gid,
        restart_backoff_s=settings.runtime.restart_backoff_s,
        dns=dns,
        before_stop=before_stop,
    )


def cluster_dns(nameserver: NameServer, *, kube_dns_ip: str, work_dir: Path) -> ClusterDns:
    """How workloads find Services by name. A root daemon gives each pod a resolv.conf naming
    where the DNS server answers on port 53 (the kube-dns Service's address) and keeps the pods'
    /etc files in work_dir/pod-etc (emptied here: pods of an earlier run are gone). With no
    such address pods keep the machine's resolv.conf, as they do under any other user."""
    host, port = nameserver.addresses[0]
    server = f"{url_host(host)}:{port}"
    if os.geteuid() != 0:
        return ClusterDns(server=server)
    address = pod_nameserver(nameserver.addresses, kube_dns_ip=kube_dns_ip)
    if address is None:
        logger.warning(
            "workloads keep the machine's /etc/resolv.conf: the DNS server answers on no "
            "port 53 (the kube-dns address %s:%d is not served)",
            kube_dns_ip,
            DNS_PORT,
        )
        return ClusterDns(server=server)
    etc_root = work_dir / "pod-etc"
    shutil.rmtree(etc_root, ignore_errors=True)
    etc_root.mkdir(mode=0o700)
    return ClusterDns(server=server, nameserver=address, etc_root=etc_root)


def pool_context(
    settings: DaemonSettings,
    zygotes: Zygotes,
    logbook: LogBook,
    pod_events: PodEvents,
    *,
    addresses: AddressPool,
    limiter: MemoryLimiter,
    starters: Mapping[str, WorkerStarter],
    services: ServiceTable,
) -> PoolContext:
    uid, gid = worker_identity()

    def publish(kind: str, instance: Instance) -> None:
        pod_events.publish(kind, instance.pod_object())

    return PoolContext(
        addresses=addresses,
        zygotes=zygotes,
        limiter=limiter,
        logbook=logbook,
        worker_port=settings.runtime.worker_port,
        max_queue=settings.runtime.max_queue_per_function,
        queue_wait_s=settings.runtime.queue_wait_s,
        worker_uid=uid,
        worker_gid=gid,
        on_pod_change=publish,
        starters=starters,
        dns_server=str(settings.dns_addr),
        service_env=ServiceEnvironments(services),
    )


async def node_starter(
    settings: DaemonSettings,
    env: Mapping[str, str],
    work_dir: Path,
    *,
    addresses: AddressPool,
    limiter: MemoryLimiter,
) -> NodeStarter:
    """Node.js instances: spares started from a copy of the shim that workers can read."""
    uid, gid = worker_identity()
    return NodeStarter(
        addresses=addresses,
        port=settings.runtime.worker_port,
        shim=await asyncio.to_thread(install_shim, work_dir / "runtime"),
        uid=uid,
        gid=gid,
        setpriv=shutil.which("setpriv", path=env.get("PATH", os.defpath)),
        heap_limits=not limiter.uses_cgroups,
    )


async def serving_dns(
    settings: DaemonSettings, table: ServiceTable, *, kube_dns_ip: str
) -> NameServer:
    """The DNS server on ``--dns-addr``, and on the kube-dns Service's address (the service
    CIDR's base + 10), port 53, where the daemon may bind it: that is the address the
    resolv.conf of workloads names. Each daemon's service CIDR is its own, so is that address."""
    upstream = settings.dns_upstream
    try:
        return await start_nameserver(
            table,
            address=(settings.dns_addr.host, settings.dns_addr.port),
            upstream=None if upstream is None else [(a.host, a.port) for a in upstream],
            kube_dns=(kube_dns_ip, DNS_PORT),
        )
    except OSError as exc:
        raise Unavailable(
            f"cannot listen for the DNS server on {settings.dns_addr}: {exc.strerror or exc} "
            "(see --dns-addr)"
        ) from exc


async def kernel_nat(settings: DaemonSettings, env: Mapping[str, str]) -> NatTable | None:
    """The nftables table that forwards plain Services' VIPs by kernel NAT (a leftover of a
    killed predecessor replaced), where the daemon may: root, nft working, FUNCMESH_VIP_NAT not
    off. Else None: every VIP is a listener in the daemon."""
    if not settings.vip_nat:
        logger.info("Service VIPs are forwarded by the daemon (FUNCMESH_VIP_NAT=off)")
        return None
    try:
        nat = await open_nat_table(
            settings.runtime.service_cidr,
            search_path=f"{env.get('PATH', os.defpath)}:{TOOLS_PATH}",
        )
    except Unavailable as exc:
        logger.info("Service VIPs are forwarded by the daemon: %s", exc)
        return None
    logger.info(
        "plain Service VIPs (%s) are forwarded by kernel NAT: nft list table ip %s",
        "/".join(sorted(nat.protocols)),
        nat.name,
    )
    return nat


async def listening(start: Any, what: str, flag: str) -> None:
    try:
        await start
    except OSError as exc:
        raise Unavailable(
            f"cannot listen for the {what}: {exc.strerror or exc} (see {flag})"
        ) from exc


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
