"""The composition root: builds every part of ``funcmesh up``, starts them, stops them.

This package is the only place that knows all the parts. ``serve`` runs the phases of
``phases.Daemon`` in order: state (directory, lock, store, ClusterIPs, the service table), names
(the DNS server: workloads' resolv.conf names it), identity (runtimes, PKI, kubeconfig), runtime
(pools, workloads), controllers, data plane (gateway, Service VIPs, triggers), then the API;
``/readyz`` turns 200 when all serve. Stop order is the reverse, draining in-flight calls first
and killing every worker last, so a SIGTERM loses no accepted call and leaves no process behind.
``host`` prepares the machine side, ``parts`` holds the wiring that needs code of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import uvloop

from funcmesh import __version__
from funcmesh.app.parts import url_host
from funcmesh.app.phases import Daemon
from funcmesh.errors import FuncmeshError
from funcmesh.settings import DaemonSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Where the running daemon serves, for the banner and for tests."""

    api_url: str
    gateway_url: str
    gateway_tls_address: str
    kubeconfig: Path
    dns_addresses: tuple[str, ...] = ()  # HOST:PORT of the DNS server (UDP and TCP), first = main


def run(settings: DaemonSettings, env: Mapping[str, str]) -> int:
    """Run the daemon until SIGTERM or SIGINT; the exit status of ``funcmesh up``."""
    try:
        uvloop.run(_serve_until_signalled(settings, env))
    except FuncmeshError as exc:
        logger.error("%s", exc)
        return 1
    return 0


async def _serve_until_signalled(settings: DaemonSettings, env: Mapping[str, str]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(settings, env) as endpoints:
        print(
            f"funcmesh {__version__} is up\n"
            f"  API:        {endpoints.api_url}\n"
            f"  gateway:    {endpoints.gateway_url} (TLS for HTTP triggers: "
            f"{endpoints.gateway_tls_address})\n"
            f"  DNS:        {', '.join(endpoints.dns_addresses)} (UDP and TCP, cluster.local)\n"
            f"  kubeconfig: {endpoints.kubeconfig}",
            flush=True,
        )
        await stop.wait()
        logger.info("stopping: draining in-flight calls")


@contextlib.asynccontextmanager
async def serve(settings: DaemonSettings, env: Mapping[str, str]) -> AsyncIterator[Endpoints]:
    """Start everything; on exit stop everything, in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        daemon = Daemon(settings, env, stack)
        await daemon.start()
        gc.freeze()  # what start-up built lives as long as the daemon: keep it out of GC scans
        tls_host = url_host(settings.gateway_tls_addr.host)
        yield Endpoints(
            api_url=daemon.api_url,
            gateway_url=daemon.gateway_url,
            gateway_tls_address=f"{tls_host}:{daemon.gateway.tls_address[1]}",
            kubeconfig=settings.kubeconfig_path,
            dns_addresses=daemon.dns_addresses,
        )
        daemon.ready = False
