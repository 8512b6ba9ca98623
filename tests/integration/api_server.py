"""An ``ApiServer`` on a real socket, with real TLS, a real token and a real Store, for the tests
of one endpoint: the providers that endpoint never reaches are stubs (``UnusedProviders``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import prometheus_client

from funcmesh.api.pki import ServingIdentity, ensure_kubeconfig
from funcmesh.api.providers import ApiProviders
from funcmesh.api.server import ApiServer
from funcmesh.client.api import ApiClient
from funcmesh.errors import NotFound
from funcmesh.model.kinds import ResourceType
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store


class UnusedProviders:
    """The providers an endpoint under test never reaches."""

    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        return obj

    def list_pods(self, namespace: str | None) -> list[RawObject]:
        return []

    def get_pod(self, namespace: str, name: str) -> RawObject:
        raise NotFound(f'pods "{name}" not found')

    async def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, RawObject]]:
        await asyncio.Event().wait()
        yield "ADDED", {}

    async def delete_pod(self, namespace: str, name: str) -> RawObject:
        raise NotFound(f'pods "{name}" not found')

    def read_function_log(
        self, namespace: str, name: str, *, tail_lines: int | None, build: bool
    ) -> list[str]:
        return []

    async def follow_function_log(
        self, namespace: str, name: str, *, build: bool
    ) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""

    def read_pod_log(self, namespace: str, pod: str, *, tail_lines: int | None) -> list[str]:
        return []

    async def follow_pod_log(self, namespace: str, pod: str) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""

    def function_stats(self, namespace: str, name: str) -> Mapping[str, Any]:
        return {}

    def server_config(self) -> Mapping[str, Any]:
        return {}


@dataclasses.dataclass
class RunningApi:
    server: ApiServer
    store: Store
    kubeconfig: Path
    token: str
    identity: ServingIdentity

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.bound_port}"

    def client(self, *, token: str | None = None) -> ApiClient:
        return ApiClient(server=self.url, token=token or self.token, ca_pem=self.identity.ca_pem)

    async def close(self) -> None:
        await self.server.close()
        await self.store.close()


async def start_api(tmp_path: Path, identity: ServingIdentity, **options: Any) -> RunningApi:
    """The server listening on a free port, its kubeconfig written; ``options`` go to
    ``ApiServer`` (``access_log=``, ``traces=``)."""
    store = await Store.open(tmp_path / "state.db")
    kubeconfig = tmp_path / "kubeconfig"
    # the token comes first; the server's port is written once it listens
    token = ensure_kubeconfig(kubeconfig, server_url="https://127.0.0.1:1", ca_pem=identity.ca_pem)
    unused = UnusedProviders()
    server = ApiServer(
        store=store,
        providers=ApiProviders(
            admission=unused, pods=unused, logs=unused, stats=unused, config=unused
        ),
        token=token,
        ssl_context=identity.server_ssl_context(),
        host="127.0.0.1",
        port=0,
        gateway_url="http://127.0.0.1:9",
        metrics_registry=prometheus_client.CollectorRegistry(),
        is_ready=lambda: True,
        **options,
    )
    try:
        await server.start()
    except BaseException:
        await store.close()
        raise
    server_url = f"https://127.0.0.1:{server.bound_port}"
    ensure_kubeconfig(kubeconfig, server_url=server_url, ca_pem=identity.ca_pem)
    return RunningApi(server, store, kubeconfig, token, identity)
