"""The composition root: builds every part of ``funcmesh up``, starts them, stops them.

This is the only place that knows all the parts. Start order: state directory and lock, store,
ClusterIPs and the service table, the DNS server (workloads' resolv.conf names it), runtimes,
PKI and kubeconfig, pools, controllers, then the servers (gateway, API); ``/readyz`` turns 200
when all serve. Stop order is the reverse, draining in-flight calls first and killing
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
import resource
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
from funcmesh.controllers.deployments import DeploymentController, service_environment
from funcmesh.controllers.endpoints import EndpointsController
from funcmesh.controllers.function_services import FunctionServices
from funcmesh.controllers.functions import FunctionController
from funcmesh.controllers.invoker import Invoker
from funcmesh.controllers.nats import NatsTriggerController
from funcmesh.controllers.service_ips import ClusterIPs, ensure_kube_dns
from funcmesh.discovery.routes import HttpRouteFeed, RouteTable
from funcmesh.discovery.service_feed import ServiceFeed
from funcmesh.discovery.services import ServiceTable
from funcmesh.discovery.tls import Certificates
from funcmesh.errors import FuncmeshError, Unavailable
from funcmesh.gateway.server import Gateway
from funcmesh.gateway.vip_nat import TOOLS_PATH, NatTable, open_nat_table
from funcmesh.gateway.vips import VipListeners
from funcmesh.model.objects import RawObject
from funcmesh.nameserver.server import NameServer, start_nameserver
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.builds import DependencyBuilder
from funcmesh.runtime.catalog import RuntimeCatalog
from funcmesh.runtime.instances import Instance
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.node import NodeStarter
from funcmesh.runtime.node_processes import install_shim
from funcmesh.runtime.pod_sources import PodDirectory
from funcmesh.runtime.pool import PoolContext
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.replicas import WorkloadContext
from funcmesh.runtime.secret_files import SecretFiles
from funcmesh.runtime.starters import WorkerStarter
from funcmesh.runtime.stats import Metrics
from funcmesh.runtime.workload_dns import ClusterDns, pod_nameserver
from funcmesh.runtime.workloads import Workloads
from funcmesh.settings import DNS_PORT, DaemonSettings
from funcmesh.store.calls import CallStore
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)
POD_DRAIN_WAIT_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Where the running daemon serves, for the banner and for tests."""

    api_url: str
    gateway_url: str
    gateway_tls_address: str
    kubeconfig: Path
    dns_addresses: tuple[str, ...] = ()  # HOST:PORT of the DNS server (UDP and TCP), first = main


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


class PodsDrainedFirst:
    """The API's pods: deleting one first takes its address out of the kernel's VIP rules, as
    a terminating pod leaves kube-proxy's before its SIGTERM, so that no new connection through
    a VIP meets the dying process (bounded: a slow kernel update never holds up the delete)."""

    def __init__(self, pods: PodDirectory, vips: VipListeners) -> None:
        self._pods = pods
        self._vips = vips

    def list_pods(self, namespace: str | None) -> list[RawObject]:
        return self._pods.list_pods(namespace)

    def get_pod(self, namespace: str, name: str) -> RawObject:
        return self._pods.get_pod(namespace, name)

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, RawObject]]:
        return self._pods.watch_pods(namespace)

    async def delete_pod(self, namespace: str, name: str) -> RawObject:
        ip = (self._pods.get_pod(namespace, name).get("status") or {}).get("podIP")
        if ip:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._vips.drain(str(ip)), POD_DRAIN_WAIT_S)
        return await self._pods.delete_pod(namespace, name)


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
        home = _prepare_home(settings.home)
        work_dir = _prepare_work_dir(settings)
        stack.enter_context(_exclusive_lock(home))
        _private_database(settings.db_path)
        _raise_open_file_limit()  # a listening socket per Service VIP port, per function
        store = await Store.open(settings.db_path)
        stack.push_async_callback(store.close)
        service_ips = ClusterIPs(settings.runtime.service_cidr)  # admission allocates them
        await service_ips.start(store)
        stack.push_async_callback(service_ips.close)
        await ensure_kube_dns(store, service_ips)
        service_table = ServiceTable()  # Services and Endpoints: read by the DNS server and VIPs
        service_feed = ServiceFeed(store, service_table)
        stack.push_async_callback(service_feed.close)
        await service_feed.start()
        nameserver = await _serving_dns(  # before the workloads: their resolv.conf names it
            settings, service_table, kube_dns_ip=service_ips.range.dns_ip
        )
        stack.push_async_callback(nameserver.close)
        dns_addresses = tuple(f"{_url_host(host)}:{port}" for host, port in nameserver.addresses)
        cluster_dns = await asyncio.to_thread(
            _cluster_dns, nameserver, kube_dns_ip=service_ips.range.dns_ip, work_dir=work_dir
        )
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
        secret_files = SecretFiles(  # after the pools stop: mount points nothing uses go
            root=work_dir / "secrets", private_mounts=_worker_identity()[0] is not None
        )
        await asyncio.to_thread(secret_files.start)
        stack.push_async_callback(asyncio.to_thread, secret_files.close)
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
                services=service_table,
            ),
            metrics=Metrics(registry),
            pod_events=pod_events,
        )
        stack.push_async_callback(pools.close)
        pools.start()
        workloads = Workloads(  # Deployments' replicas: processes on pod IPs of the same pool
            _workload_context(
                settings,
                logbook,
                pod_events,
                addresses=addresses,
                work_dir=work_dir,
                dns=cluster_dns,
            )
        )
        stack.push_async_callback(workloads.close)
        pods = PodDirectory(functions=pools, workloads=workloads, events=pod_events)
        controller = FunctionController(
            store=store,
            catalog=catalog,
            builder=builder,
            pools=pools,
            logbook=logbook,
            code_root=work_dir / "code",
            secret_files=secret_files,
        )
        stack.push_async_callback(controller.close)
        await controller.start()
        function_services = FunctionServices(  # every Function has a Service of its name
            store=store, ips=service_ips, target_port=settings.runtime.worker_port
        )
        stack.push_async_callback(function_services.close)
        await function_services.start()
        endpoints_controller = EndpointsController(store=store, pods=pods)
        stack.push_async_callback(endpoints_controller.close)
        await endpoints_controller.start()
        deployments = DeploymentController(store=store, workloads=workloads, services=service_table)
        stack.push_async_callback(deployments.close)
        await deployments.start()

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
        nat = await _kernel_nat(settings, env)  # plain Services' VIPs in the kernel, if it may
        if nat is not None:
            stack.push_async_callback(nat.close)  # after the listeners: the table goes last
        vips = VipListeners(service_table, functions=gateway, kernel=nat)  # kube-proxy
        vips.start()
        stack.push_async_callback(vips.close)  # before the gateway drains its connections
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
                admission=Admission(catalog, objects=StoreLookup(store), service_ips=service_ips),
                pods=PodsDrainedFirst(pods, vips),  # no new VIP connection meets a dying pod
                logs=logbook,
                stats=pools,
                config=ServerConfig(catalog, dns_address=dns_addresses[0]),
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
            dns_addresses=dns_addresses,
        )
        ready = False


def _workload_context(
    settings: DaemonSettings,
    logbook: LogBook,
    pod_events: PodEvents,
    *,
    addresses: AddressPool,
    work_dir: Path,
    dns: ClusterDns,
) -> WorkloadContext:
    """Replicas run as the workers do (nobody under a root daemon), at home in work_dir/pods."""
    uid, gid = _worker_identity()
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
    )


def _cluster_dns(nameserver: NameServer, *, kube_dns_ip: str, work_dir: Path) -> ClusterDns:
    """How workloads find Services by name. A root daemon gives each pod a resolv.conf naming
    where the DNS server answers on port 53 (the kube-dns Service's address) and keeps the pods'
    /etc files in work_dir/pod-etc (emptied here: pods of an earlier run are gone). With no
    such address pods keep the machine's resolv.conf, as they do under any other user."""
    host, port = nameserver.addresses[0]
    server = f"{_url_host(host)}:{port}"
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


def _pool_context(
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
        dns_server=str(settings.dns_addr),
        service_env=lambda namespace: service_environment(services, namespace),
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


def _raise_open_file_limit(wanted: int = 1 << 16) -> None:
    """Lift the soft limit on open files towards ``wanted`` (within the hard limit): every
    function's Service VIP is a listening socket, and the usual soft limit of 1024 would run
    out at about a thousand functions. Not higher: some programs close every descriptor up to
    the limit, and workers inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


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


async def _serving_dns(
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


async def _kernel_nat(settings: DaemonSettings, env: Mapping[str, str]) -> NatTable | None:
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


async def _listening(start: Any, what: str, flag: str) -> None:
    try:
        await start
    except OSError as exc:
        raise Unavailable(
            f"cannot listen for the {what}: {exc.strerror or exc} (see {flag})"
        ) from exc


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
