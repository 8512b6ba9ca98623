"""The composition root: builds every part of ``funcmesh up``, starts them, stops them.

This is the only place that knows all the parts. Start order: state directory and lock, store,
runtimes, PKI and kubeconfig, pools, controllers, then the servers (gateway, API); ``/readyz``
turns 200 when all serve. Stop order is the reverse, draining in-flight calls first and killing
every worker last, so a SIGTERM loses no accepted call and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import hashlib
import logging
import os
import pwd
import shutil
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import uvloop
from prometheus_client import CollectorRegistry

from funcmesh import __version__
from funcmesh.api.pki import ensure_kubeconfig, ensure_pki
from funcmesh.api.providers import ApiProviders
from funcmesh.api.server import ApiServer
from funcmesh.controllers.admission import Admission, StoreLookup
from funcmesh.controllers.async_calls import AsyncCallRunner
from funcmesh.controllers.cascade import TriggerCascade
from funcmesh.controllers.cron import CronTriggerController
from funcmesh.controllers.functions import FunctionController
from funcmesh.controllers.invoker import Invoker
from funcmesh.controllers.nats import NatsTriggerController
from funcmesh.discovery.routes import HttpRouteFeed, RouteTable
from funcmesh.discovery.tls import Certificates
from funcmesh.errors import FuncmeshError, Unavailable
from funcmesh.gateway.server import Gateway
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.builds import DependencyBuilder
from funcmesh.runtime.catalog import RuntimeCatalog
from funcmesh.runtime.instances import Instance
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.node import NodeStarter
from funcmesh.runtime.node_processes import install_shim
from funcmesh.runtime.pool import PoolContext
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.starters import WorkerStarter
from funcmesh.runtime.stats import Metrics
from funcmesh.settings import DaemonSettings
from funcmesh.store.calls import CallStore
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Where the running daemon serves, for the banner and for tests."""

    api_url: str
    gateway_url: str
    gateway_tls_address: str
    kubeconfig: Path


class ServerConfig:
    """``get-server-config``: the runtimes this machine can run."""

    def __init__(self, catalog: RuntimeCatalog) -> None:
        self._catalog = catalog

    def server_config(self) -> Mapping[str, Any]:
        runtimes = [
            {
                "id": runtime.id,
                "language": runtime.language,
                "version": ".".join(map(str, runtime.version)),
            }
            for runtime in self._catalog.runtimes
        ]
        return {"runtimes": runtimes, "version": __version__}


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
            f"  kubeconfig: {endpoints.kubeconfig}",
            flush=True,
        )
        await stop.wait()
        logger.info("stopping: draining in-flight calls")


@contextlib.asynccontextmanager
async def serve(settings: DaemonSettings, env: Mapping[str, str]) -> AsyncIterator[Endpoints]:
    """Start everything; on exit stop everything, in reverse order."""
    async with contextlib.AsyncExitStack() as stack:
        home = _prepare_home(settings.home)
        work_dir = _prepare_work_dir(settings)
        stack.enter_context(_exclusive_lock(home))
        _private_database(settings.db_path)
        store = await Store.open(settings.db_path)
        stack.push_async_callback(store.close)
        catalog = await asyncio.to_thread(
            RuntimeCatalog.discover, path_env=env.get("PATH", os.defpath)
        )
        api_url = f"https://{_url_host(settings.api_addr.host)}:{settings.api_addr.port}"
        identity = await asyncio.to_thread(
            ensure_pki, settings.pki_dir, hosts=[settings.api_addr.host]
        )
        token = await asyncio.to_thread(
            ensure_kubeconfig,
            settings.kubeconfig_path,
            server_url=api_url,
            ca_pem=identity.ca_pem,
        )

        registry = CollectorRegistry()
        logbook = LogBook(function_budget_bytes=settings.runtime.log_bytes_per_function)
        stack.callback(logbook.close)
        zygotes = Zygotes()
        stack.push_async_callback(zygotes.close)
        addresses, limiter = AddressPool(settings.runtime.pod_cidr), MemoryLimiter()
        node = await _node_starter(settings, env, work_dir, addresses=addresses, limiter=limiter)
        stack.push_async_callback(node.close)
        builder = DependencyBuilder(root=work_dir / "deps")
        stack.push_async_callback(builder.aclose)
        pod_events = PodEvents()
        pools = Pools(
            context=_pool_context(
                settings,
                zygotes,
                logbook,
                pod_events,
                addresses=addresses,
                limiter=limiter,
                starters={"nodejs": node},
            ),
            metrics=Metrics(registry),
            pod_events=pod_events,
        )
        stack.push_async_callback(pools.close)
        pools.start()
        controller = FunctionController(
            store=store,
            catalog=catalog,
            builder=builder,
            pools=pools,
            logbook=logbook,
            code_root=work_dir / "code",
        )
        stack.push_async_callback(controller.close)
        await controller.start()

        ready = False
        async_calls = AsyncCallRunner(CallStore(store))
        await async_calls.prepare()
        certificates = Certificates()  # the TLS listener's certificate per host, by SNI
        http_routes = HttpRouteFeed(store, RouteTable(), certificates)  # read by the gateway
        stack.push_async_callback(http_routes.close)
        cascade = TriggerCascade(store)  # HTTPTriggers go with their Function
        stack.push_async_callback(cascade.close)
        await cascade.start()
        await http_routes.start()
        gateway = Gateway(
            pools,
            host=settings.gateway_addr.host,
            port=settings.gateway_addr.port,
            max_body_bytes=settings.max_body_bytes,
            async_calls=async_calls,
            http_routes=http_routes.table,
            tls_host=settings.gateway_tls_addr.host,
            tls_port=settings.gateway_tls_addr.port,
            tls_context=certificates.server_context(),
        )
        await _listening(gateway.start(), f"gateway on {settings.gateway_addr}", "--gateway-addr")
        stack.push_async_callback(gateway.close, settings.drain_s)
        await _listening(
            gateway.start_tls(),
            f"gateway TLS on {settings.gateway_tls_addr}",
            "--gateway-tls-addr",
        )
        gateway_url = f"http://{_url_host(settings.gateway_addr.host)}:{gateway.address[1]}"
        invoker = Invoker(gateway_url)  # how every trigger calls functions
        stack.push_async_callback(invoker.close)
        async_calls.start(invoker)
        stack.push_async_callback(async_calls.close, settings.drain_s)
        nats_triggers = NatsTriggerController(
            store=store, invoker=invoker, nats_url=settings.nats_url, registry=registry
        )
        stack.push_async_callback(nats_triggers.close)
        await nats_triggers.start()
        cron_triggers = CronTriggerController(store=store, caller=invoker)
        stack.push_async_callback(cron_triggers.close, settings.drain_s)
        await cron_triggers.start()
        api = ApiServer(
            store=store,
            providers=ApiProviders(
                admission=Admission(catalog, objects=StoreLookup(store)),
                pods=pools,
                logs=logbook,
                stats=pools,
                config=ServerConfig(catalog),
            ),
            token=token,
            ssl_context=identity.server_ssl_context(),
            host=settings.api_addr.host,
            port=settings.api_addr.port,
            gateway_url=gateway_url,
            metrics_registry=registry,
            is_ready=lambda: ready,
        )
        await _listening(api.start(), f"API on {settings.api_addr}", "--api-addr")
        stack.push_async_callback(api.close)
        ready = True
        gc.freeze()  # what start-up built lives as long as the daemon: keep it out of GC scans
        yield Endpoints(
            api_url=api_url,
            gateway_url=gateway_url,
            gateway_tls_address=f"{_url_host(settings.gateway_tls_addr.host)}:{gateway.tls_address[1]}",
            kubeconfig=settings.kubeconfig_path,
        )
        ready = False


def _pool_context(
    settings: DaemonSettings,
    zygotes: Zygotes,
    logbook: LogBook,
    pod_events: PodEvents,
    *,
    addresses: AddressPool,
    limiter: MemoryLimiter,
    starters: Mapping[str, WorkerStarter],
) -> PoolContext:
    uid, gid = _worker_identity()

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
    )


async def _node_starter(
    settings: DaemonSettings,
    env: Mapping[str, str],
    work_dir: Path,
    *,
    addresses: AddressPool,
    limiter: MemoryLimiter,
) -> NodeStarter:
    """Node.js instances: spares started from a copy of the shim that workers can read."""
    uid, gid = _worker_identity()
    return NodeStarter(
        addresses=addresses,
        port=settings.runtime.worker_port,
        shim=await asyncio.to_thread(install_shim, work_dir / "runtime"),
        uid=uid,
        gid=gid,
        setpriv=shutil.which("setpriv", path=env.get("PATH", os.defpath)),
        heap_limits=not limiter.uses_cgroups,
    )


def _worker_identity() -> tuple[int | None, int | None]:
    """As root, workers run as ``nobody`` so they cannot read the daemon's state."""
    if os.geteuid() != 0:
        return None, None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return 65534, 65534
    return nobody.pw_uid, nobody.pw_gid


def _prepare_home(home: Path) -> Path:
    """The state directory; its secrets (kubeconfig, pki, state.db) stay 0600/0700."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)
    return home


def _prepare_work_dir(settings: DaemonSettings) -> Path:
    """Where prepared code and dependency environments live, readable by the workers.

    Workers of a root daemon run as nobody, who must be able to reach this directory: under
    ``$FUNCMESH_HOME`` when every directory above it lets others through (/root does not),
    else ``/var/lib/funcmesh/<hash of the home>``. ``FUNCMESH_WORK_DIR`` overrides both.
    """
    work_dir = settings.work_dir or settings.home
    if settings.work_dir is None and os.geteuid() == 0 and not _traversable(settings.home):
        digest = hashlib.sha256(str(settings.home.resolve()).encode()).hexdigest()[:16]
        work_dir = Path("/var/lib/funcmesh") / digest
    for public in (work_dir, work_dir / "code", work_dir / "deps"):
        public.mkdir(parents=True, exist_ok=True)
        public.chmod(0o711 if public == work_dir else 0o755)
    return work_dir


def _traversable(path: Path) -> bool:
    """Whether any user may pass through every directory down to ``path``."""
    return all(p.stat().st_mode & 0o001 for p in [path.resolve(), *path.resolve().parents])


def _private_database(db_path: Path) -> None:
    """SQLite gives the WAL and shared-memory files the database's mode: make it 0600 first."""
    db_path.touch(mode=0o600)
    for path in (
        db_path,
        db_path.with_name(db_path.name + "-wal"),
        db_path.with_name(db_path.name + "-shm"),
    ):
        if path.exists():
            path.chmod(0o600)


@contextlib.contextmanager
def _exclusive_lock(home: Path) -> Any:
    lock_path = home / "daemon.lock"
    handle: IO[str] = open(lock_path, "a+")  # noqa: SIM115 - held for the daemon's lifetime
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise Unavailable(
                f"another funcmesh daemon (pid {handle.read().strip() or '?'}) is running "
                f"with FUNCMESH_HOME={home}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()


async def _listening(start: Any, what: str, flag: str) -> None:
    try:
        await start
    except OSError as exc:
        raise Unavailable(
            f"cannot listen for the {what}: {exc.strerror or exc} (see {flag})"
        ) from exc


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
