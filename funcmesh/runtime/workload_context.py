"""What every workload replica shares, and how one takes its pod IP.

:class:`WorkloadContext` is built once, by the composition root, and handed to every replica
(``funcmesh.runtime.replicas``) through ``funcmesh.runtime.workloads``.

Must not: start processes, or know about Deployments beyond the name of their log.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from funcmesh.errors import Unavailable
from funcmesh.model.objects import RawObject
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.mesh_credentials import MeshCredentials
from funcmesh.runtime.workload_dns import ClusterDns

BIND_ATTEMPTS: Final = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadContext:
    """What every replica shares: addresses, logs, identities and timings."""

    addresses: AddressPool
    logbook: LogBook
    scratch_root: Path  # each pod's HOME (and working directory unless it names one)
    on_pod_change: Callable[[str, RawObject], None]  # (ADDED|MODIFIED|DELETED, pod)
    worker_uid: int | None = None
    worker_gid: int | None = None
    restart_backoff_s: float = 10.0
    python: str = sys.executable  # the interpreter of the launcher shim
    dns: ClusterDns | None = None  # how pods find Services by name
    # Awaited with a pod's IP before a replica that is going away gets SIGTERM: takes the
    # address out of the Service VIPs first, as a terminating pod leaves kube-proxy's rules.
    before_stop: Callable[[str], Awaitable[None]] | None = None
    before_stop_wait_s: float = 1.0
    # the mesh certificates of the pods' identities (None: no FUNCMESH_MESH_CERTS_DIR)
    mesh_credentials: MeshCredentials | None = None


def deployment_log_name(deployment: str) -> str:
    """The LogBook's key for the lines of all of a Deployment's pods."""
    return f"deployment/{deployment}"


def take_pod_address(addresses: AddressPool, port: int) -> str:
    """A pod IP where ``port`` is free (another daemon or a lingering process may hold one)."""
    for _ in range(BIND_ATTEMPTS):
        ip = addresses.take()
        try:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((ip, port))
        except OSError:
            addresses.give_back(ip)
            continue
        return ip
    raise Unavailable(f"no pod address with port {port} free in the pod network")
