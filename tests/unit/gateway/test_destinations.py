"""Mesh destinations resolved to members: functions by labels, endpoints by pod labels, and the
problems a route's destination can have (no Service, no subset, ExternalName)."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from funcmesh.discovery.services import (
    EndpointAddressView,
    EndpointPortView,
    EndpointSubsetView,
    EndpointsView,
    ServicePortView,
    ServiceTable,
    ServiceView,
)
from funcmesh.gateway.destinations import (
    Destinations,
    EndpointBackend,
    StickyCookie,
    hash_key_of,
    sticky_cookie_of,
)
from funcmesh.gateway.messages import Request
from funcmesh.mesh.routes import WeightedDestination
from funcmesh.mesh.table import MeshTable
from funcmesh.model.istio_destinations import LoadBalancer, parse_destination_rule


class Pool:
    """A function's pool, as the gateway sees it."""

    def __init__(self, name: str, labels: Mapping[str, str]) -> None:
        self.display_name = f"default/{name}"
        self.namespace = "default"
        self.labels = {**labels, "function": name}

    def queue_call(self, on_lease: object, on_error: object) -> None:
        return None  # waits, if at all, in acquire()

    def try_acquire(self) -> None:
        return None

    async def acquire(self) -> None:
        raise AssertionError("not called here")


class Functions:
    def __init__(self, *pools: Pool) -> None:
        self.pools = list(pools)
        self.generation = 0

    def lookup(self, namespace: str, name: str) -> Pool | None:
        return next((p for p in self.pools if p.display_name == f"{namespace}/{name}"), None)

    def select(self, namespace: str, selector: Mapping[str, str]) -> Sequence[Pool]:
        return [p for p in self.pools if all(p.labels.get(k) == v for k, v in selector.items())]


class Pods:
    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.labels = labels

    def pod_labels(self, namespace: str, pod: str) -> Mapping[str, str] | None:
        return self.labels.get(pod)


def service(name: str, selector: dict[str, str] | None, **extra: Any) -> ServiceView:
    port = ServicePortView(name="http", protocol="TCP", port=8080, target_port=8080)
    return ServiceView(
        namespace="default",
        name=name,
        type=extra.pop("type", "ClusterIP"),
        cluster_ip="127.96.0.5",
        ports=(port,),
        selector=None if selector is None else tuple(sorted(selector.items())),
        **extra,
    )


def endpoints(name: str, *addresses: tuple[str, str]) -> EndpointsView:
    ready = tuple(EndpointAddressView(ip=ip, pod=pod) for ip, pod in addresses)
    subset = EndpointSubsetView(
        ready=ready, not_ready=(), ports=(EndpointPortView(name="http", port=9000),)
    )
    return EndpointsView(namespace="default", name=name, subsets=(subset,))


def rule(host: str, **subsets: dict[str, str]) -> Any:
    return parse_destination_rule(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": {"name": host, "namespace": "default"},
            "spec": {
                "host": host,
                "subsets": [{"name": name, "labels": labels} for name, labels in subsets.items()],
            },
        }
    )


def to(name: str, subset: str = "") -> WeightedDestination:
    return WeightedDestination(
        host=f"{name}.default.svc.cluster.local",
        service=("default", name),
        subset=subset,
        port=None,
        weight=100,
    )


@pytest.fixture
def world() -> tuple[ServiceTable, MeshTable, Functions, Pods, Destinations]:
    services, mesh = ServiceTable(), MeshTable()
    v1, v2 = (
        Pool("hello-v1", {"app": "hello", "version": "v1"}),
        Pool("hello-v2", {"app": "hello", "version": "v2"}),
    )
    functions = Functions(v1, v2)
    pods = Pods({"web-5d8f7c9b4-aaaaa": {"app": "web", "version": "v1"}})
    destinations = Destinations(services, mesh, functions, clock=lambda: 0.0, pods=pods)  # type: ignore[arg-type]
    return services, mesh, functions, pods, destinations


def names(members: Sequence[Any]) -> list[str]:
    return sorted(member.display_name for member in members)


def test_a_service_selecting_functions_is_served_by_them_and_subsets_pick_one(
    world: tuple[ServiceTable, MeshTable, Functions, Pods, Destinations],
) -> None:
    services, mesh, _, _, destinations = world
    services.put_service(service("hello", {"app": "hello"}))
    assert names(destinations.resolve(to("hello")).members.members()) == [
        "default/hello-v1",
        "default/hello-v2",
    ]
    mesh.put_destination_rule(rule("hello", v2={"version": "v2"}))
    resolved = destinations.resolve(to("hello", "v2"))
    assert not resolved.problem
    assert names(resolved.members.members()) == ["default/hello-v2"]
    assert resolved.cluster == "outbound|8080|v2|hello.default.svc.cluster.local"


def test_a_missing_service_subset_or_external_name_is_a_problem(
    world: tuple[ServiceTable, MeshTable, Functions, Pods, Destinations],
) -> None:
    services, _, _, _, destinations = world
    assert "not a Service" in destinations.resolve(to("nowhere")).problem
    services.put_service(service("hello", {"app": "hello"}))
    assert "not defined by any DestinationRule" in destinations.resolve(to("hello", "v9")).problem
    services.put_service(service("outside", None, type="ExternalName", external_name="x.test"))
    assert "ExternalName" in destinations.resolve(to("outside")).problem


def test_endpoints_serve_a_service_without_functions_and_subsets_use_pod_labels(
    world: tuple[ServiceTable, MeshTable, Functions, Pods, Destinations],
) -> None:
    services, mesh, _, pods, destinations = world
    services.put_service(service("web", {"app": "web"}))
    services.put_endpoints(
        endpoints("web", ("127.128.0.1", "web-5d8f7c9b4-aaaaa"), ("127.128.0.2", "web-x"))
    )
    members = destinations.resolve(to("web")).members.members()
    assert sorted(repr(m) for m in members) == ["127.128.0.1:9000", "127.128.0.2:9000"]
    mesh.put_destination_rule(rule("web", v1={"version": "v1"}))
    [only] = destinations.resolve(to("web", "v1")).members.members()
    assert isinstance(only, EndpointBackend)
    assert only.display_name == "default/web-5d8f7c9b4-aaaaa"
    assert only.workload == "web"


def test_a_new_pod_on_a_reused_address_is_a_new_member_with_its_own_labels(
    world: tuple[ServiceTable, MeshTable, Functions, Pods, Destinations],
) -> None:
    services, _, _, pods, destinations = world
    services.put_service(service("web", {"app": "web"}))
    services.put_endpoints(endpoints("web", ("127.128.0.1", "web-5d8f7c9b4-aaaaa")))
    [old] = destinations.resolve(to("web")).members.members()
    assert old.labels["version"] == "v1"
    pods.labels["web-6c7d8e9f0-bbbbb"] = {"app": "web", "version": "v2"}
    services.put_endpoints(endpoints("web", ("127.128.0.1", "web-6c7d8e9f0-bbbbb")))
    [new] = destinations.resolve(to("web")).members.members()
    assert new is not old
    assert new.labels["version"] == "v2"
    assert new.display_name == "default/web-6c7d8e9f0-bbbbb"


def test_resolutions_follow_deployed_functions(
    world: tuple[ServiceTable, MeshTable, Functions, Pods, Destinations],
) -> None:
    services, _, functions, _, destinations = world
    services.put_service(service("hello", {"app": "hello"}))
    assert len(destinations.resolve(to("hello")).members.members()) == 2
    functions.pools.pop()
    functions.generation += 1
    assert names(destinations.resolve(to("hello")).members.members()) == ["default/hello-v1"]


def request(headers: list[tuple[bytes, bytes]]) -> Request:
    return Request(
        method=b"GET",
        target=b"/",
        headers=headers,
        body=b"",
        keep_alive=True,
        http11=True,
        client_ip=b"127.0.0.9",
    )


@pytest.mark.parametrize(
    ("balancer", "headers", "expected"),
    [
        (LoadBalancer(hash_header="X-User"), [(b"x-user", b"ann")], b"ann"),
        (LoadBalancer(hash_header="x-user"), [], None),
        (LoadBalancer(hash_cookie="session"), [(b"Cookie", b"a=1; session=s9; b=2")], b"s9"),
        (LoadBalancer(hash_cookie="session"), [(b"Cookie", b"a=1")], None),
        (LoadBalancer(hash_cookie="session"), [(b"cookie", b'session="s9"')], b"s9"),  # Envoy's
        (LoadBalancer(hash_cookie="session"), [(b"Cookie", b"session=")], None),  # empty: none
        (LoadBalancer(hash_cookie="s"), [(b"Cookie", b"a=1"), (b"Cookie", b"s=2")], b"2"),
        (LoadBalancer(hash_source_ip=True), [], b"127.0.0.9"),
    ],
)
def test_consistent_hash_keys(
    balancer: LoadBalancer, headers: list[tuple[bytes, bytes]], expected: bytes | None
) -> None:
    key = hash_key_of(balancer)
    assert key is not None
    assert key(request(headers)) == expected


def test_other_balancers_need_no_key() -> None:
    assert hash_key_of(LoadBalancer(simple="ROUND_ROBIN")) is None


@pytest.mark.parametrize(
    ("balancer", "attributes"),
    [
        (LoadBalancer(hash_cookie="session", hash_cookie_ttl_s=3600.0), "; Max-Age=3600"),
        (LoadBalancer(hash_cookie="session", hash_cookie_ttl_s=90.5), "; Max-Age=90"),
        (LoadBalancer(hash_cookie="session", hash_cookie_ttl_s=0.0), ""),  # a session cookie
        (
            LoadBalancer(hash_cookie="session", hash_cookie_ttl_s=60.0, hash_cookie_path="/app"),
            "; Max-Age=60; Path=/app",
        ),
    ],
)
def test_a_cookie_with_a_ttl_is_issued_as_envoy_sets_it(
    balancer: LoadBalancer, attributes: str
) -> None:
    sticky = sticky_cookie_of(balancer, random.Random(7))
    assert sticky is not None
    value, (name, header) = sticky.issue()
    assert name == b"Set-Cookie"
    assert re.fullmatch(rb"[0-9a-f]{16}", value)
    assert header.decode() == f'session="{value.decode()}"{attributes}; HttpOnly'
    # the client sends it back quoted: the same key, so the same member
    key = hash_key_of(balancer)
    assert key is not None
    sent_back = header.split(b";")[0]  # session="VALUE", as a cookie jar returns it
    assert key(request([(b"Cookie", sent_back)])) == value
    assert sticky.issue()[0] != value  # each client its own


def test_a_path_goes_into_the_cookie() -> None:
    sticky = StickyCookie("s", ttl_s=60, path="/shop", rng=random.Random(1))
    _, (_, header) = sticky.issue()
    assert header.endswith(b"; Max-Age=60; Path=/shop; HttpOnly")


@pytest.mark.parametrize(
    "balancer",
    [
        LoadBalancer(hash_cookie="session"),  # no ttl: Envoy sets none
        LoadBalancer(hash_header="x-user"),
        LoadBalancer(simple="ROUND_ROBIN"),
        LoadBalancer(),
    ],
)
def test_no_cookie_is_issued_without_a_cookie_ttl(balancer: LoadBalancer) -> None:
    assert sticky_cookie_of(balancer, random.Random()) is None
