"""Where a mesh destination's calls go: the members of a Service, chosen per attempt.

A route's destination (``host`` + ``subset`` + ``port``) names a Service; ``Destinations``
turns it into a ``Resolved``: the members that serve it and the ``EndpointSet`` that picks one
per attempt under the DestinationRule's policy (balancing, outlier detection, limits), the
host's retry budget, and how to draw the consistent-hash key from a request (and, for a
``httpCookie`` with a ``ttl``, the ``StickyCookie`` that gives a client without it one).

Members are ``Backend``s, so one call path serves both kinds: a Service whose selector (plus
the subset's labels) matches Functions is served by those functions' instance pools, cold
starts included (a function's own Service by that function); any other Service by its ready
endpoints, each wrapped as an ``EndpointBackend`` (a workload replica, or an address the user
wrote). A Service that selects both functions and workload pods is served by the functions.

Resolutions are cached per (host, subset, port) and refreshed in place when the Services, the
mesh rules or the deployed functions change (the ``EndpointSet`` keeps its latency statistics
across refreshes). No I/O here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from funcmesh.discovery.services import EXTERNAL_NAME, ServiceTable, ServiceView
from funcmesh.errors import FuncmeshError
from funcmesh.gateway.backends import Backend, Backends, Lease
from funcmesh.gateway.messages import Request
from funcmesh.mesh.budget import RetryBudget
from funcmesh.mesh.endpoint_sets import EndpointSet
from funcmesh.mesh.routes import WeightedDestination
from funcmesh.mesh.table import MeshTable
from funcmesh.model.istio_destinations import LoadBalancer, TrafficPolicy

# A workload has no timeout of its own; Istio's route timeout is off by default. This bounds
# a connection attempt and an answer that never comes, as Envoy's stream idle timeout does.
ENDPOINT_TIMEOUT_S = 300.0
_MAX_ENDPOINTS = 4096  # endpoint backends kept before the unused ones are forgotten

HashKey = Callable[[Request], bytes | None]


class PodLabels(Protocol):
    """The labels of a workload pod, for subsets of Services served by workloads."""

    def pod_labels(self, namespace: str, pod: str) -> Mapping[str, str] | None: ...


@dataclass(slots=True, kw_only=True)
class Resolved:
    """A destination as the data plane uses it; ``problem`` set when it cannot be served."""

    host: str
    namespace: str
    service: str
    subset: str
    port: int
    members: EndpointSet[Backend]
    budget: RetryBudget
    hash_key: HashKey | None
    problem: str = ""
    policy: TrafficPolicy | None = None
    sticky_cookie: StickyCookie | None = None  # a hash cookie to set when a request lacks it
    generation: tuple[int, int] = (-1, -1)
    cluster: str = field(init=False)  # Envoy's name for it, as metrics and the access log say

    def __post_init__(self) -> None:
        self.cluster = f"outbound|{self.port}|{self.subset}|{self.host}"


class EndpointLease:
    """One attempt's hold on a workload endpoint: nothing to reserve, nothing to kill."""

    __slots__ = ("address", "instance_id", "timeout_s")

    def __init__(self, address: tuple[str, int], instance_id: str) -> None:
        self.address = address
        self.instance_id = instance_id
        self.timeout_s = ENDPOINT_TIMEOUT_S

    def release(self, *, ok: bool, status: int, duration_s: float) -> None:
        pass

    def kill(self, reason: str) -> None:
        pass  # a replica is not restarted because one call was slow: the mesh only gives up

    async def exit_reason(self, wait_s: float) -> str | None:
        return None


class EndpointBackend:
    """A ready endpoint of a Service as a ``Backend``: always has room (limits are the
    EndpointSet's)."""

    __slots__ = (
        "_labels",
        "_lease",
        "_pod",
        "_pods",
        "address_text",
        "display_name",
        "namespace",
        "port",
        "workload",
    )

    def __init__(
        self,
        namespace: str,
        address: tuple[str, int],
        pod: str | None,
        *,
        pods: PodLabels | None = None,
    ) -> None:
        host, port = address
        self.namespace = namespace
        self.port = port
        self.address_text = f"{host}:{port}"
        self.display_name = f"{namespace}/{pod}" if pod else self.address_text
        self.workload = _workload_of(pod) if pod else "unknown"
        self._lease = EndpointLease(address, self.address_text)
        self._pod = pod
        self._pods = pods
        self._labels: Mapping[str, str] | None = None

    @property
    def labels(self) -> Mapping[str, str]:
        """Its pod's labels (a pod keeps them for life: looked up once found); {} for an
        address the user wrote, or a pod not known (yet)."""
        labels = self._labels
        if labels is None:
            found = None
            if self._pod is not None and self._pods is not None:
                found = self._pods.pod_labels(self.namespace, self._pod)
            if found is None:
                return {}
            labels = self._labels = found
        return labels

    def __repr__(self) -> str:
        """The address: where consistent hashing places the endpoint on its ring."""
        return self._lease.instance_id

    def try_acquire(self) -> EndpointLease:
        return self._lease

    async def acquire(self) -> EndpointLease:
        return self._lease

    def queue_call(
        self, on_lease: Callable[[Lease], None], on_error: Callable[[FuncmeshError], None]
    ) -> None:
        return None  # a pod takes every call: nothing to queue for


class Destinations:
    """Resolves destinations against the Services, the mesh rules and the functions."""

    def __init__(
        self,
        services: ServiceTable,
        mesh: MeshTable,
        functions: Backends,
        *,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        pods: PodLabels | None = None,
    ) -> None:
        self._services = services
        self._mesh = mesh
        self._functions = functions
        self._pods = pods
        self._clock = clock
        self._rng = rng or random.Random()
        self._version = 0
        self._resolved: dict[tuple[str, str, int], Resolved] = {}
        # one backend per (namespace, address, pod): a new pod on a reused IP is a new member
        self._endpoints: dict[tuple[str, tuple[str, int], str | None], EndpointBackend] = {}
        self._budgets: dict[str, RetryBudget] = {}
        self._unsubscribe = [services.subscribe(self._changed), mesh.subscribe(self._changed)]

    @property
    def services(self) -> ServiceTable:
        return self._services

    @property
    def mesh(self) -> MeshTable:
        return self._mesh

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def resolve(self, destination: WeightedDestination, *, port: int = 0) -> Resolved:
        """The members of ``destination``; ``port`` is the Service port the request came to
        (used when the destination names none and the Service has several)."""
        key = (destination.host, destination.subset, destination.port or port)
        generation = (self._version, self._functions.generation)
        resolved = self._resolved.get(key)
        if resolved is None or resolved.generation != generation:
            resolved = self._refresh(resolved, destination, key[2])
            resolved.generation = generation
            self._resolved[key] = resolved
        return resolved

    def _changed(self, *_: object) -> None:
        self._version += 1

    def _refresh(
        self, old: Resolved | None, destination: WeightedDestination, port: int
    ) -> Resolved:
        host, subset = destination.host, destination.subset
        namespace, name = destination.service or ("", host)
        rule = self._mesh.destination_rule(host)
        policy = rule.traffic_policy if rule is not None else TrafficPolicy()
        labels: Mapping[str, str] = {}
        problem = ""
        if subset:
            found = next((s for s in rule.subsets if s.name == subset), None) if rule else None
            if found is None:
                problem = f"subset {subset} of {host} is not defined by any DestinationRule"
            else:
                labels = dict(found.labels)
                policy = found.traffic_policy or policy
        if old is None or old.policy is not policy:
            label = f"{name}.{namespace}" + (f":{subset}" if subset else "")
            members: EndpointSet[Backend] = EndpointSet(
                policy, clock=self._clock, rng=self._rng, label=label
            )
        else:
            members = old.members
        view = self._services.service(namespace, name) if destination.service else None
        chosen: Sequence[Backend] = ()
        if problem:
            pass
        elif view is None:
            problem = f"{host} is not a Service of the cluster"
        elif view.type == EXTERNAL_NAME:
            problem = f"{host} is an ExternalName Service: the mesh does not route to it"
        else:
            port = _service_port(view, port)
            chosen = self._members(view, labels, port)
        members.update(chosen)
        budget = self._budgets.get(host)
        if budget is None:
            budget = self._budgets[host] = RetryBudget(clock=self._clock)
        return Resolved(
            host=host,
            namespace=namespace,
            service=name,
            subset=subset,
            port=port,
            members=members,
            budget=budget,
            hash_key=hash_key_of(policy.load_balancer),
            problem=problem,
            policy=policy,
            sticky_cookie=sticky_cookie_of(policy.load_balancer, self._rng),
        )

    def _members(self, view: ServiceView, labels: Mapping[str, str], port: int) -> list[Backend]:
        namespace = view.namespace
        if view.function is not None:
            return list(self._functions.select(namespace, {**labels, "function": view.function}))
        if view.selector is not None:
            functions = self._functions.select(namespace, {**dict(view.selector), **labels})
            if functions:
                return list(functions)
        endpoints = self._services.endpoints(namespace, view.name)
        if endpoints is None:
            return []
        port_name = next((p.name for p in view.ports if p.port == port), "")
        found: list[Backend] = []
        for subset in endpoints.subsets:
            target = next(
                (p for p in subset.ports if p.name == port_name or len(subset.ports) == 1), None
            )
            if target is None:
                continue
            for address in subset.ready:
                if labels and not self._pod_holds(namespace, address.pod, labels):
                    continue
                found.append(self._endpoint(namespace, (address.ip, target.port), address.pod))
        return found

    def _pod_holds(self, namespace: str, pod: str | None, labels: Mapping[str, str]) -> bool:
        if pod is None or self._pods is None:
            return False
        have = self._pods.pod_labels(namespace, pod)
        return have is not None and all(have.get(k) == v for k, v in labels.items())

    def _endpoint(
        self, namespace: str, address: tuple[str, int], pod: str | None
    ) -> EndpointBackend:
        key = (namespace, address, pod)
        backend = self._endpoints.get(key)
        if backend is None:
            if len(self._endpoints) >= _MAX_ENDPOINTS:
                self._forget_unused_endpoints()
            backend = self._endpoints[key] = EndpointBackend(
                namespace, address, pod, pods=self._pods
            )
        return backend

    def _forget_unused_endpoints(self) -> None:
        """Keep only the endpoint backends some resolved destination still has."""
        used = {
            id(member)
            for resolved in self._resolved.values()
            for member in resolved.members.members()
        }
        self._endpoints = {
            key: backend for key, backend in self._endpoints.items() if id(backend) in used
        }


def _workload_of(pod: str) -> str:
    """The Deployment of a pod named as a ReplicaSet names them (``web-5d8f7c9b4-x7k2q`` ->
    ``web``), else the pod's own name."""
    parts = pod.rsplit("-", 2)
    return parts[0] if len(parts) == 3 and len(parts[2]) == 5 else pod


def _service_port(view: ServiceView, wanted: int) -> int:
    """The Service port a destination means: the one named, else the only one, else the
    first HTTP-named one, else the first."""
    numbers = [port.port for port in view.ports if port.protocol == "TCP"]
    if wanted in numbers or not numbers:
        return wanted
    if len(numbers) == 1:
        return numbers[0]
    http = [p.port for p in view.ports if p.name == "http" or p.name.startswith("http-")]
    return http[0] if http else numbers[0]


def hash_key_of(balancer: LoadBalancer) -> HashKey | None:
    """How a consistent-hash policy draws its key from a request, or None for the others."""
    if balancer.hash_header:
        wanted = balancer.hash_header.lower().encode()
        return lambda request: _header(request, wanted)
    if balancer.hash_cookie:
        cookie = balancer.hash_cookie.encode()
        return lambda request: _cookie(request, cookie)
    if balancer.hash_source_ip:
        return lambda request: request.client_ip
    return None


class StickyCookie:
    """A ``consistentHash.httpCookie`` with a ``ttl``: a request without the cookie gets a new
    value as its hash key, and its answer ``Set-Cookie: NAME="VALUE"; Max-Age=TTL; Path=PATH;
    HttpOnly`` (Envoy's form: ``Max-Age`` in whole seconds, none for a ttl under 1 s, which makes
    it a session cookie), so the client's next calls, carrying it, go to the same member.
    Envoy's value is a 64-bit hash of the connection's addresses written in hex; this one is
    64 random bits in the same form (a request does not carry its client's port here)."""

    __slots__ = ("_attributes", "_bits", "_name")

    def __init__(self, name: str, *, ttl_s: float, path: str = "", rng: random.Random) -> None:
        self._name = name.encode()
        attributes = b"; Max-Age=%d" % int(ttl_s) if int(ttl_s) else b""
        if path:
            attributes += b"; Path=" + path.encode()
        self._attributes = attributes + b"; HttpOnly"
        self._bits = rng.getrandbits

    def issue(self) -> tuple[bytes, tuple[bytes, bytes]]:
        """A new cookie value (the request's hash key) and the header that sets it."""
        value = b"%016x" % self._bits(64)
        return value, (b"Set-Cookie", self._name + b'="' + value + b'"' + self._attributes)


def sticky_cookie_of(balancer: LoadBalancer, rng: random.Random) -> StickyCookie | None:
    """The cookie to set on answers to requests without it: only for a ``httpCookie`` with a
    ``ttl``, as Envoy (without one, such requests are balanced without a key)."""
    if not balancer.hash_cookie or balancer.hash_cookie_ttl_s is None:
        return None
    return StickyCookie(
        balancer.hash_cookie,
        ttl_s=balancer.hash_cookie_ttl_s,
        path=balancer.hash_cookie_path,
        rng=rng,
    )


def _header(request: Request, lower_name: bytes) -> bytes | None:
    for name, value in request.headers:
        if name.lower() == lower_name:
            return value
    return None


def _cookie(request: Request, cookie: bytes) -> bytes | None:
    """The value of ``cookie`` in the request's Cookie headers, without the quotes it may be
    sent in (Envoy's ``parseCookieValue``); None when absent or empty."""
    for name, header in request.headers:
        if name.lower() != b"cookie":
            continue
        for pair in header.split(b";"):
            key, sep, value = pair.strip().partition(b"=")
            if sep and key == cookie:
                if len(value) >= 2 and value[:1] == b'"' == value[-1:]:
                    value = value[1:-1]
                return value or None
    return None
