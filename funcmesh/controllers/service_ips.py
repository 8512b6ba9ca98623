"""ClusterIPs: each Service's virtual IP from the service range, never given to two Services.

``ClusterIPs`` is both the allocator admission calls (``admit``, from the API's worker thread)
and a follower of the stored Services (it learns every allocated IP at start and from the watch,
so a restart or a delete is seen). A free IP is picked at random from the upper part of the
range first, as Kubernetes does, so a just-freed IP is unlikely to be handed out again at once;
the lower part (the first min(max(16, size/16), 256) addresses) is for IPs users choose, and
its address ``base + 10`` belongs to the ``kube-system/kube-dns`` Service. Between admission and
the store's commit an IP is *pending*: held for its Service for ``PENDING_S`` seconds, so two
concurrent creates never get the same one, and an IP whose create failed comes back by itself.
``ensure_kube_dns`` creates the kube-dns Service when it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator

from funcmesh.errors import AlreadyExists, Cause, Conflict, Invalid, NotFound, Unavailable
from funcmesh.model.kinds import SERVICE
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.model.service_specs import EXTERNAL_NAME, HEADLESS, as_json
from funcmesh.model.services import cluster_ip_of, normalise_service, type_of
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
KUBE_DNS: Key = ("kube-system", "kube-dns")
DNS_OFFSET = 10  # kube-dns's ClusterIP is the range's base + 10 (10.96.0.10 in Kubernetes)
PENDING_S = 30.0
RETRY_PAUSE_S = 1.0


class ServiceRange:
    """The addresses of the service CIDR: which may be allocated, and in which order."""

    def __init__(self, cidr: str) -> None:
        try:
            network = ipaddress.ip_network(cidr)
        except ValueError as exc:
            raise Invalid(f"service CIDR {cidr!r} is not a network: {exc}") from exc
        if network.num_addresses < 16:
            raise Invalid(f"service CIDR {cidr} is too small: it needs at least 16 addresses")
        self.network = network
        self._base = int(network.network_address)
        last = network.num_addresses - (1 if network.version == 4 else 0)  # no broadcast
        self._first, self._end = 1, last  # offsets; the network address is never used
        self._static_end = min(max(16, network.num_addresses // 16), 256, last)

    @property
    def dns_ip(self) -> str:
        return self.address(DNS_OFFSET)

    def address(self, offset: int) -> str:
        return str(ipaddress.ip_address(self._base + offset))

    def offset_of(self, ip: str) -> int | None:
        """The IP's place in the range, or None when it is outside (or not usable)."""
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if address.version != self.network.version or address not in self.network:
            return None
        offset = int(address) - self._base
        return offset if self._first <= offset < self._end else None

    def candidates(self, rng: random.Random) -> Iterator[int]:
        """Every usable offset: the upper band from a random start, then the lower band."""
        for start_at, end in ((self._static_end, self._end), (self._first, self._static_end)):
            if end <= start_at:
                continue
            start = rng.randrange(start_at, end)
            yield from range(start, end)
            yield from range(start_at, start)


class ClusterIPs:
    """Allocates ClusterIPs for admission and follows the stored Services."""

    def __init__(
        self,
        cidr: str,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.range = ServiceRange(cidr)
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()  # admission threads and the loop both come here
        self._owners: dict[str, Key] = {}  # allocated IP -> the stored Service holding it
        self._by_key: dict[Key, str] = {}
        self._pending: dict[str, tuple[Key, float]] = {}  # IP -> (Service, deadline)
        self._watcher: asyncio.Task[None] | None = None

    # following the store

    async def start(self, store: Store) -> None:
        """Learn every stored Service's IP, then follow changes."""
        since = await self._load(store)
        self._watcher = asyncio.create_task(self._follow(store, since), name="cluster-ips-watch")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _load(self, store: Store) -> int:
        services, since = await store.list_objects(SERVICE)
        self.load(services)
        return since

    def load(self, services: Iterable[RawObject]) -> None:
        """Forget what was known and hold the IPs of these (stored) Services."""
        with self._lock:
            self._owners.clear()
            self._by_key.clear()
            for service in services:
                self._hold(_key(service), cluster_ip_of(service), type_of(service))

    async def _follow(self, store: Store, since: int) -> None:
        while True:
            try:
                async for change in store.watch(SERVICE, None, since):
                    since = change.resource_version
                    self.observe(change)
                logger.warning("the watch of services ended early; listing them again")
            except Exception:  # the task's boundary: keep following the store
                logger.exception("following services for their ClusterIPs failed")
                await asyncio.sleep(RETRY_PAUSE_S)
            with contextlib.suppress(Exception):
                since = await self._load(store)

    def observe(self, change: Change) -> None:
        """Take one committed change of a Service into account."""
        key = _key(change.object)
        with self._lock:
            if change.type == "DELETED":
                self._free(key)
            else:
                self._hold(key, cluster_ip_of(change.object), type_of(change.object))

    def _hold(self, key: Key, ip: str, service_type: str) -> None:
        if service_type == EXTERNAL_NAME or ip in ("", HEADLESS):
            self._free(key)
            return
        if self._by_key.get(key) not in (None, ip):
            self._free(key)
        owner = self._owners.get(ip)
        if owner is not None and owner != key:
            logger.error("ClusterIP %s is stored for both %s/%s and %s/%s", ip, *owner, *key)
        self._owners[ip] = key
        self._by_key[key] = ip
        self._pending.pop(ip, None)

    def _free(self, key: Key) -> None:
        ip = self._by_key.pop(key, None)
        if ip is not None and self._owners.get(ip) == key:
            del self._owners[ip]

    # admission

    def admit(self, obj: RawObject, old: RawObject | None) -> RawObject:
        """The Service in normal form with its ClusterIP: allocated when empty, checked (inside
        the range: else Invalid; free: else Conflict) when given. Safe from any thread."""
        obj = normalise_service(obj, old)
        spec = obj["spec"]
        if spec["type"] == EXTERNAL_NAME or spec.get("clusterIP") == HEADLESS:
            return obj
        key = (namespace_of(obj) or "default", name_of(obj))
        wanted = spec.get("clusterIP") or ""
        if not wanted:
            spec["clusterIP"] = self.allocate(key)
            spec["clusterIPs"] = [spec["clusterIP"]]
            spec["ipFamilies"] = ["IPv6" if ":" in spec["clusterIP"] else "IPv4"]
        elif old is None or cluster_ip_of(old) != wanted:
            self.claim(key, wanted)
        return obj

    def allocate(self, key: Key) -> str:
        """A free IP, held for ``key`` until its Service is stored (or ``PENDING_S`` pass)."""
        with self._lock:
            now = self._clock()
            for ip, (holder, deadline) in self._pending.items():
                if holder == key and deadline > now:
                    return ip  # the same Service asked again (a retried or dry-run create)
            for offset in self.range.candidates(self._rng):
                ip = self.range.address(offset)
                if self._free_for(key, ip, now) and not (offset == DNS_OFFSET and key != KUBE_DNS):
                    self._pending[ip] = (key, now + PENDING_S)
                    return ip
        raise Unavailable(
            f"no ClusterIP is left in {self.range.network}: delete a Service or choose a larger "
            "range (FUNCMESH_SERVICE_CIDR)"
        )

    def claim(self, key: Key, ip: str) -> None:
        """Hold a chosen IP for ``key``; Invalid outside the range, Conflict when taken."""
        if self.range.offset_of(ip) is None:
            message = (
                f"Invalid value: {as_json(ip)}: provided IP is not in the valid range. "
                f"The range of valid IPs is {self.range.network}"
            )
            cause = Cause(field="spec.clusterIPs", message=message)
            raise Invalid(f'Service "{key[1]}" is invalid: spec.clusterIPs: {message}', [cause])
        with self._lock:
            now = self._clock()
            if not self._free_for(key, ip, now):
                owner = self._owners.get(ip) or self._pending[ip][0]
                raise Conflict(
                    f'Service "{key[1]}" cannot have clusterIP {ip}: provided IP is already '
                    f"allocated (to Service {owner[0]}/{owner[1]})"
                )
            self._pending[ip] = (key, now + PENDING_S)

    def _free_for(self, key: Key, ip: str, now: float) -> bool:
        owner = self._owners.get(ip)
        if owner is not None:
            return owner == key
        pending = self._pending.get(ip)
        if pending is not None and pending[1] <= now:
            del self._pending[ip]
            pending = None
        return pending is None or pending[0] == key

    def owner_of(self, ip: str) -> Key | None:
        """The stored Service holding ``ip`` (for tests and diagnostics)."""
        with self._lock:
            return self._owners.get(ip)


async def ensure_kube_dns(store: Store, ips: ClusterIPs) -> None:
    """Create ``kube-system/kube-dns`` (base + 10, ports 53/UDP and 53/TCP, no selector: the
    DNS server answers on its IP itself) unless it exists."""
    namespace, name = KUBE_DNS
    try:
        current = await store.get(SERVICE, namespace, name)
    except NotFound:
        current = None
    if current is not None:
        if cluster_ip_of(current) != ips.range.dns_ip:
            logger.warning(
                "the kube-dns Service has ClusterIP %s, not %s (base + 10 of the service range "
                "%s): delete it and restart the daemon to move it",
                cluster_ip_of(current) or "<none>",
                ips.range.dns_ip,
                ips.range.network,
            )
        return
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "CoreDNS",
            },
        },
        "spec": {
            "clusterIP": ips.range.dns_ip,
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
            ],
        },
    }
    try:
        await store.create(SERVICE, ips.admit(service, None))
    except (AlreadyExists, Conflict) as exc:
        logger.warning("the kube-dns Service was not created: %s", exc)


def _key(obj: RawObject) -> Key:
    return (namespace_of(obj) or "default", name_of(obj))
