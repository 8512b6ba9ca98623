"""Which workload called: a real gateway, clients whose sockets are bound to pod IPs (as the
worker shims bind a function's calls), and the pod table of ``funcmesh.mesh.sources`` fed by
the runtime's ``PodEvents``. Istio's metrics name the caller's workload, namespace, app and
version; a caller from an address that is no pod's stays ``unknown``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from funcmesh.mesh.sources import PodAddresses
from funcmesh.mesh.telemetry import Telemetry
from funcmesh.runtime.pools import PodEvents
from tests.integration.test_gateway import (
    FakeBackend,
    StartGateway,
    StartInstance,
    echo,
    start_gateway,
    start_instance,
    wait_for,
)

__all__ = ["start_gateway", "start_instance"]  # fixtures, used by name

CALLER_IP = "127.128.250.7"


def function_pod(name: str, function: str, ip: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {**labels, "function": function},
            "ownerReferences": [{"kind": "Function", "name": function}],
        },
        "status": {"podIP": ip},
    }


class Pods:
    """The pods there are now, and their changes through the runtime's PodEvents."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = list(pods)
        self.events = PodEvents()

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return list(self.pods)

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        return self.events.follow(namespace)


@pytest.fixture
async def pods() -> AsyncIterator[tuple[Pods, PodAddresses]]:
    listed = function_pod("caller-1", "caller", CALLER_IP, {"app": "shop", "version": "v2"})
    feed = Pods(listed)
    table = PodAddresses(feed)
    table.start()
    await wait_for(lambda: table.source_of(CALLER_IP) is not None)
    yield feed, table
    await table.close()
    feed.events.close()


async def get_from(address: tuple[str, int], source_ip: str, path: str) -> bytes:
    """GET ``path`` on a connection bound to ``source_ip``; the answer's status code."""
    sock = socket.socket()
    sock.bind((source_ip, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer.split(b" ", 2)[1]


def requests_from(registry: CollectorRegistry, **labels: str) -> float:
    """istio_requests_total summed over the series with ``labels``."""
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            wanted = all(sample.labels.get(name) == value for name, value in labels.items())
            if sample.name == "istio_requests_total" and wanted:
                total += sample.value
    return total


async def test_a_call_from_a_pod_ip_names_the_calling_workload_and_the_destination_app(
    start_instance: StartInstance,
    start_gateway: StartGateway,
    pods: tuple[Pods, PodAddresses],
) -> None:
    answering = await start_instance(echo)
    registry = CollectorRegistry()
    gateway = await start_gateway(
        FakeBackend(
            "default/hello",
            address=answering.address,
            labels={"function": "hello", "app": "greeter", "version": "v3"},
        ),
        telemetry=Telemetry(registry, None),
        sources=pods[1],
    )

    assert await get_from(gateway.address, CALLER_IP, "/function/hello") == b"200"
    assert await get_from(gateway.address, "127.0.0.1", "/function/hello") == b"200"

    caller = {
        "source_workload": "caller",
        "source_workload_namespace": "default",
        "source_app": "shop",
        "source_version": "v2",
        "source_canonical_service": "shop",
        "source_canonical_revision": "v2",
        "destination_workload": "hello",
        "destination_app": "greeter",
        "destination_version": "v3",
        "destination_canonical_service": "greeter",
        "destination_canonical_revision": "v3",
    }
    await wait_for(lambda: requests_from(registry, **caller) == 1)
    unknown = {"source_workload": "unknown", "source_workload_namespace": "unknown"}
    await wait_for(lambda: requests_from(registry, **unknown) == 1)


async def test_pods_that_come_and_go_are_followed(
    start_instance: StartInstance,
    start_gateway: StartGateway,
    pods: tuple[Pods, PodAddresses],
) -> None:
    feed, table = pods
    answering = await start_instance(echo)
    registry = CollectorRegistry()
    gateway = await start_gateway(
        FakeBackend("default/hello", address=answering.address),
        telemetry=Telemetry(registry, None),
        sources=table,
    )
    newcomer = function_pod("other-1", "other", "127.128.250.8", {})
    feed.events.publish("ADDED", newcomer)
    await wait_for(lambda: table.source_of("127.128.250.8") is not None)

    await get_from(gateway.address, "127.128.250.8", "/function/hello")
    feed.events.publish("DELETED", function_pod("caller-1", "caller", CALLER_IP, {}))
    await wait_for(lambda: table.source_of(CALLER_IP) is None)
    await get_from(gateway.address, CALLER_IP, "/function/hello")

    # no app label: the canonical service is the workload's name
    other = {
        "source_workload": "other",
        "source_app": "unknown",
        "source_canonical_service": "other",
    }
    await wait_for(lambda: requests_from(registry, **other) == 1)
    await wait_for(lambda: requests_from(registry, source_workload="unknown") == 1)
    assert requests_from(registry, source_workload="caller") == 0
