"""``funcmesh up`` built phase by phase: state, names, identity, runtime, controllers, data
plane, API. Each phase starts its parts and pushes their stops on the exit stack, so leaving
the stack stops everything in the reverse order: the API first, then the data plane drains its
calls, the controllers stop, and the workers are killed last.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry

from funcmesh.api.pki import ServingIdentity, ensure_kubeconfig, ensure_pki
from funcmesh.api.providers import ApiProviders
from funcmesh.api.server import ApiServer
from funcmesh.app.host import (
    exclusive_lock,
    prepare_home,
    prepare_work_dir,
    private_database,
    raise_open_file_limit,
    worker_identity,
)
from funcmesh.app.parts import (
    ServerConfig,
    cluster_dns,
    kernel_nat,
    listening,
    node_starter,
    pool_context,
    serving_dns,
    url_host,
    workload_context,
)
from funcmesh.controllers.admission import Admission, StoreLookup
from funcmesh.controllers.async_calls import AsyncCallRunner
from funcmesh.controllers.cascade import TriggerCascade
from funcmesh.controllers.cron import CronTriggerController
from funcmesh.controllers.deployments import DeploymentController
from funcmesh.controllers.endpoints import EndpointsController
from funcmesh.controllers.function_services import FunctionServices
from funcmesh.controllers.functions import FunctionController
from funcmesh.controllers.invoker import Invoker
from funcmesh.controllers.mesh_status import VirtualServiceStatus
from funcmesh.controllers.nats import NatsTriggerController
from funcmesh.controllers.service_ips import ClusterIPs, ensure_kube_dns
from funcmesh.discovery.routes import HttpRouteFeed, RouteTable
from funcmesh.discovery.service_feed import ServiceFeed
from funcmesh.discovery.services import ServiceTable
from funcmesh.discovery.tls import Certificates
from funcmesh.gateway.server import Gateway
from funcmesh.gateway.vip_tls import VipSecurity
from funcmesh.gateway.vips import VipListeners
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.authz import Authorizer
from funcmesh.mesh.feed import MeshFeed
from funcmesh.mesh.identity import MeshIdentity
from funcmesh.mesh.sources import PodAddresses
from funcmesh.mesh.table import MeshTable
from funcmesh.mesh.telemetry import Telemetry
from funcmesh.mesh.trace_store import TraceStore
from funcmesh.mesh.tracing import Tracer
from funcmesh.mesh.tracing_export import OtlpExporter
from funcmesh.nameserver.server import NameServer
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.builds import DependencyBuilder
from funcmesh.runtime.catalog import RuntimeCatalog
from funcmesh.runtime.limits import MemoryLimiter
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.mesh_credentials import MeshCredentials
from funcmesh.runtime.pod_sources import PodDirectory
from funcmesh.runtime.pools import PodEvents, Pools, Zygotes
from funcmesh.runtime.secret_files import SecretFiles
from funcmesh.runtime.stats import Metrics
from funcmesh.runtime.workload_dns import ClusterDns
from funcmesh.runtime.workloads import Workloads
from funcmesh.settings import DaemonSettings
from funcmesh.store.calls import CallStore
from funcmesh.store.sqlite import Store


class Daemon:
    """The running parts of one ``funcmesh up``; the phases fill them in, in order."""

    # state
    work_dir: Path
    store: Store
    service_ips: ClusterIPs
    service_table: ServiceTable
    mesh: MeshTable
    mesh_identity: MeshIdentity  # the mesh CA: workload certificates, the VIPs' mTLS
    authorizer: Authorizer  # AuthorizationPolicy and PeerAuthentication decisions
    access_log: AccessLog | None
    telemetry: Telemetry
    traces: TraceStore
    tracer: Tracer | None
    # names
    nameserver: NameServer
    pod_dns: ClusterDns
    # identity
    catalog: RuntimeCatalog
    api_url: str
    identity: ServingIdentity
    token: str
    # runtime
    registry: CollectorRegistry
    logbook: LogBook
    pools: Pools
    workloads: Workloads
    pods: PodDirectory
    secret_files: SecretFiles
    builder: DependencyBuilder
    # data plane
    async_calls: AsyncCallRunner
    http_routes: HttpRouteFeed
    gateway: Gateway
    gateway_url: str
    vips: VipListeners

    def __init__(
        self, settings: DaemonSettings, env: Mapping[str, str], stack: contextlib.AsyncExitStack
    ) -> None:
        self.settings = settings
        self.env = env
        self.stack = stack
        self.ready = False  # /readyz: true once every server listens
        self._vips: VipListeners | None = None  # once the data plane runs

    async def start(self) -> None:
        for phase in (
            self.open_state,
            self.start_names,
            self.load_identity,
            self.start_runtime,
            self.start_controllers,
            self.start_data_plane,
            self.start_api,
        ):
            await phase()
        self.ready = True

    @property
    def dns_addresses(self) -> tuple[str, ...]:
        return tuple(f"{url_host(host)}:{port}" for host, port in self.nameserver.addresses)

    async def open_state(self) -> None:
        """The state directory (locked: one daemon per home), the store, the ClusterIPs and the
        in-memory table of Services that the DNS server and the VIPs read."""
        settings, stack = self.settings, self.stack
        home = prepare_home(settings.home)
        self.work_dir = prepare_work_dir(settings)
        stack.enter_context(exclusive_lock(home))
        private_database(settings.db_path)
        raise_open_file_limit()  # a listening socket per Service VIP port, per function
        self.store = await Store.open(settings.db_path)
        stack.push_async_callback(self.store.close)
        self.service_ips = ClusterIPs(settings.runtime.service_cidr)  # admission allocates them
        await self.service_ips.start(self.store)
        stack.push_async_callback(self.service_ips.close)
        await ensure_kube_dns(self.store, self.service_ips)
        self.service_table = ServiceTable()
        feed = ServiceFeed(self.store, self.service_table)
        stack.push_async_callback(feed.close)
        await feed.start()
        self.mesh = MeshTable()
        mesh_feed = MeshFeed(self.store, self.mesh)
        stack.push_async_callback(mesh_feed.close)
        await mesh_feed.start()
        self.authorizer = Authorizer(self.mesh)
        self.mesh_identity = await asyncio.to_thread(MeshIdentity.open, settings.pki_dir / "mesh")

    async def start_names(self) -> None:
        """The DNS server, before the workloads: their resolv.conf names it."""
        kube_dns_ip = self.service_ips.range.dns_ip
        self.nameserver = await serving_dns(
            self.settings, self.service_table, kube_dns_ip=kube_dns_ip
        )
        self.stack.push_async_callback(self.nameserver.close)
        self.pod_dns = await asyncio.to_thread(
            cluster_dns, self.nameserver, kube_dns_ip=kube_dns_ip, work_dir=self.work_dir
        )

    async def load_identity(self) -> None:
        """The runtimes this machine has, the API's certificates and the kubeconfig token."""
        settings = self.settings
        self.catalog = await asyncio.to_thread(
            RuntimeCatalog.discover, path_env=self.env.get("PATH", os.defpath)
        )
        self.api_url = f"https://{url_host(settings.api_addr.host)}:{settings.api_addr.port}"
        self.identity = await asyncio.to_thread(
            ensure_pki, settings.pki_dir, hosts=[settings.api_addr.host]
        )
        self.token = await asyncio.to_thread(
            ensure_kubeconfig,
            settings.kubeconfig_path,
            server_url=self.api_url,
            ca_pem=self.identity.ca_pem,
        )

    async def start_runtime(self) -> None:
        """Zygotes, Node.js spares, dependency builds, Secret files, the function pools and the
        workloads, all taking pod IPs from one pool."""
        settings, stack = self.settings, self.stack
        self.registry = CollectorRegistry()
        self.logbook = LogBook(function_budget_bytes=settings.runtime.log_bytes_per_function)
        stack.callback(self.logbook.close)
        # the mesh's access log and Istio's metrics: closed after the data plane stops
        self.access_log = None
        if settings.access_log:  # FUNCMESH_ACCESS_LOG=off leaves it out
            path = settings.home / "logs" / "mesh-access.log"  # FUNCMESH_ACCESS_LOG=file
            self.access_log = AccessLog(
                path if settings.access_log_file else None,
                call_later=asyncio.get_running_loop().call_later,
            )
            stack.callback(self.access_log.close)
        loop = asyncio.get_running_loop()
        self.telemetry = Telemetry(self.registry, self.access_log, call_later=loop.call_later)
        stack.callback(self.telemetry.settle)  # before the access log closes
        self.traces = TraceStore()
        self.tracer = None
        if settings.tracing.enabled:  # FUNCMESH_TRACING=off: no spans, no context passed on
            endpoint = settings.tracing.otlp_endpoint
            exporter = OtlpExporter(endpoint) if endpoint else None
            if exporter is not None:  # closed after the data plane stops: its spans are sent
                stack.push_async_callback(asyncio.to_thread, exporter.close)
            self.tracer = Tracer(
                self.traces,
                exporter=exporter,
                sample_ratio=settings.tracing.sample_ratio,
                traces_per_second=settings.tracing.traces_per_second,
            )
        zygotes = Zygotes()
        stack.push_async_callback(zygotes.close)
        addresses, limiter = AddressPool(settings.runtime.pod_cidr), MemoryLimiter()
        node = await node_starter(
            settings, self.env, self.work_dir, addresses=addresses, limiter=limiter
        )
        stack.push_async_callback(node.close)
        self.builder = DependencyBuilder(root=self.work_dir / "deps")
        stack.push_async_callback(self.builder.aclose)
        self.secret_files = SecretFiles(  # after the pools stop: mount points nothing uses go
            root=self.work_dir / "secrets", private_mounts=worker_identity()[0] is not None
        )
        await asyncio.to_thread(self.secret_files.start)
        stack.push_async_callback(asyncio.to_thread, self.secret_files.close)
        # the instances' mesh certificates: closed after the pools and workloads stop
        credentials = MeshCredentials(
            self.mesh_identity, service_cidr=settings.runtime.service_cidr
        )
        stack.push_async_callback(credentials.close)
        pod_events = PodEvents()
        context = pool_context(
            settings,
            zygotes,
            self.logbook,
            pod_events,
            addresses=addresses,
            limiter=limiter,
            starters={"nodejs": node},
            services=self.service_table,
        )
        context = dataclasses.replace(context, mesh_credentials=credentials)
        self.pools = Pools(context=context, metrics=Metrics(self.registry), pod_events=pod_events)
        stack.push_async_callback(self.pools.close)
        self.pools.start()
        replicas = workload_context(
            settings,
            self.logbook,
            pod_events,
            addresses=addresses,
            work_dir=self.work_dir,
            dns=self.pod_dns,
            before_stop=self._leave_vips,
        )
        # Deployments' replicas: processes on pod IPs of the same pool
        self.workloads = Workloads(dataclasses.replace(replicas, mesh_credentials=credentials))
        stack.push_async_callback(self.workloads.close)
        self.pods = PodDirectory(functions=self.pools, workloads=self.workloads, events=pod_events)

    async def start_controllers(self) -> None:
        """Reconcilers of stored objects: functions, their Services, Endpoints, Deployments,
        HTTPTriggers going with their Function, and the VirtualServices' Ready condition."""
        store, stack = self.store, self.stack
        functions = FunctionController(
            store=store,
            catalog=self.catalog,
            builder=self.builder,
            pools=self.pools,
            logbook=self.logbook,
            code_root=self.work_dir / "code",
            secret_files=self.secret_files,
        )
        function_services = FunctionServices(  # every Function has a Service of its name
            store=store, ips=self.service_ips, target_port=self.settings.runtime.worker_port
        )
        endpoints = EndpointsController(store=store, pods=self.pods)
        deployments = DeploymentController(
            store=store, workloads=self.workloads, services=self.service_table
        )
        cascade = TriggerCascade(store)
        for controller in (functions, function_services, endpoints, deployments, cascade):
            stack.push_async_callback(controller.close)
            await controller.start()
        mesh_status = VirtualServiceStatus(store=store, mesh=self.mesh, services=self.service_table)
        stack.push_async_callback(mesh_status.close)
        mesh_status.start()

    async def start_data_plane(self) -> None:
        """The gateway (HTTP and TLS), the Service VIPs (kernel NAT where it may, listeners
        elsewhere), async calls and the cron and NATS triggers that call through it."""
        settings, stack = self.settings, self.stack
        self.async_calls = AsyncCallRunner(CallStore(self.store))
        await self.async_calls.prepare()
        certificates = Certificates()  # the TLS listener's certificate per host, by SNI
        self.http_routes = HttpRouteFeed(self.store, RouteTable(), certificates)
        stack.push_async_callback(self.http_routes.close)
        await self.http_routes.start()
        sources = PodAddresses(self.pods)  # which workload a call comes from, by its pod IP
        sources.start()
        stack.push_async_callback(sources.close)  # after the gateway: no connection asks
        self.gateway = Gateway(
            self.pools,
            host=settings.gateway_addr.host,
            port=settings.gateway_addr.port,
            max_body_bytes=settings.max_body_bytes,
            async_calls=self.async_calls,
            http_routes=self.http_routes.table,
            tls_host=settings.gateway_tls_addr.host,
            tls_port=settings.gateway_tls_addr.port,
            tls_context=certificates.server_context(),
            mesh=self.mesh,
            services=self.service_table,
            telemetry=self.telemetry,
            pods=self.pods,
            authorizer=self.authorizer,
            tracer=self.tracer,
            sources=sources,
        )
        plain = f"gateway on {settings.gateway_addr}"
        await listening(self.gateway.start(), plain, "--gateway-addr")
        stack.push_async_callback(self.gateway.close, settings.drain_s)
        tls = f"gateway TLS on {settings.gateway_tls_addr}"
        await listening(self.gateway.start_tls(), tls, "--gateway-tls-addr")
        host = url_host(settings.gateway_addr.host)
        self.gateway_url = f"http://{host}:{self.gateway.address[1]}"
        nat = await kernel_nat(settings, self.env)
        if nat is not None:
            stack.push_async_callback(nat.close)  # after the listeners: the table goes last
        security = VipSecurity(
            self.mesh_identity.server_context(),
            self.authorizer,
            services=self.service_table,
            functions=self.pools,
        )
        self.vips = VipListeners(
            self.service_table,
            functions=self.gateway,
            kernel=nat,
            mesh=self.mesh,
            security=security,
        )
        self.vips.start()
        stack.push_async_callback(self.vips.close)  # before the gateway drains its connections
        self._vips = self.vips
        await self._start_triggers()

    async def _leave_vips(self, ip: str) -> None:
        """A replica about to stop: its address leaves the VIPs' kernel rules first."""
        if self._vips is not None:
            await self._vips.drain(ip)

    async def _start_triggers(self) -> None:
        settings, stack = self.settings, self.stack
        invoker = Invoker(self.gateway_url)  # how every trigger calls functions
        stack.push_async_callback(invoker.close)
        self.async_calls.start(invoker)
        stack.push_async_callback(self.async_calls.close, settings.drain_s)
        nats = NatsTriggerController(
            store=self.store, invoker=invoker, nats_url=settings.nats_url, registry=self.registry
        )
        stack.push_async_callback(nats.close)
        await nats.start()
        cron = CronTriggerController(store=self.store, caller=invoker)
        stack.push_async_callback(cron.close, settings.drain_s)
        await cron.start()

    async def start_api(self) -> None:
        """The Kubernetes-style API, last: it answers /readyz 200 once everything serves."""
        settings = self.settings
        admission = Admission(
            self.catalog, objects=StoreLookup(self.store), service_ips=self.service_ips
        )
        api = ApiServer(
            store=self.store,
            providers=ApiProviders(
                admission=admission,
                pods=self.pods,
                logs=self.logbook,
                stats=self.pools,
                config=ServerConfig(self.catalog, dns_address=self.dns_addresses[0]),
            ),
            token=self.token,
            ssl_context=self.identity.server_ssl_context(),
            host=settings.api_addr.host,
            port=settings.api_addr.port,
            gateway_url=self.gateway_url,
            metrics_registry=self.registry,
            access_log=self.access_log,
            traces=self.traces,
            mesh_identity=self.mesh_identity,
            is_ready=lambda: self.ready,
        )
        await listening(api.start(), f"API on {settings.api_addr}", "--api-addr")
        self.stack.push_async_callback(api.close)
