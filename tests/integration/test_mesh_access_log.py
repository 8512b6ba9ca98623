"""The mesh's access log through the API server (real TLS on loopback), the client and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from click.testing import CliRunner

from funcmesh.api.pki import ServingIdentity, ensure_kubeconfig, ensure_pki
from funcmesh.api.providers import ApiProviders
from funcmesh.api.server import ApiServer
from funcmesh.cli.main import cli
from funcmesh.client.api import MESH_ACCESS_LOG_PATH, ApiClient
from funcmesh.errors import NotFound, Unauthorized
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.telemetry import RequestRecord
from funcmesh.model.kinds import ResourceType
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store

DEADLINE_S = 10.0
RECORD = RequestRecord(
    start_wall_s=1_764_229_801.123,  # 2025-11-27T07:50:01.123Z
    method=b"GET",
    authority=b"hello.default:8080",
    user_agent=b"curl/8.5.0",
    downstream_remote="127.128.0.7:40112",
    downstream_local="127.96.0.12:8080",
    upstream_host="127.128.0.5:8080",
    upstream_cluster="outbound|8080||hello.default.svc.cluster.local",
    route_name="default",
    response_code=200,
    response_code_details="via_upstream",
    duration_s=0.004,
)


def call(number: int) -> RequestRecord:
    return dataclasses.replace(RECORD, path=f"/call/{number}".encode())


def path_of(line: str) -> str:
    return line.split('"')[1].split()[1]


class Unused:
    """The providers this endpoint never reaches."""

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
class Served:
    server: ApiServer
    store: Store
    access_log: AccessLog | None
    kubeconfig: Path
    token: str
    identity: ServingIdentity

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.bound_port}"

    def client(self, *, token: str | None = None) -> ApiClient:
        return ApiClient(server=self.url, token=token or self.token, ca_pem=self.identity.ca_pem)


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> ServingIdentity:
    return ensure_pki(tmp_path_factory.mktemp("pki"), hosts=["127.0.0.1"])


async def serve(tmp_path: Path, identity: ServingIdentity, access_log: AccessLog | None) -> Served:
    store = await Store.open(tmp_path / "state.db")
    kubeconfig = tmp_path / "kubeconfig"
    # the token comes first; the server's port is written once it listens
    token = ensure_kubeconfig(kubeconfig, server_url="https://127.0.0.1:1", ca_pem=identity.ca_pem)
    unused = Unused()
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
        access_log=access_log,
    )
    try:
        await server.start()
    except BaseException:
        await store.close()
        raise
    server_url = f"https://127.0.0.1:{server.bound_port}"
    ensure_kubeconfig(kubeconfig, server_url=server_url, ca_pem=identity.ca_pem)
    return Served(server, store, access_log, kubeconfig, token, identity)


@pytest.fixture
async def served(tmp_path: Path, identity: ServingIdentity) -> AsyncIterator[Served]:
    access_log = AccessLog(tmp_path / "logs" / "mesh-access.log")
    for number in range(1, 4):
        access_log.append(call(number))
    served = await serve(tmp_path, identity, access_log)
    try:
        yield served
    finally:
        await served.server.close()
        await served.store.close()
        access_log.close()


def read_lines(served: Served, **options: Any) -> list[str]:
    with served.client() as client:
        return list(client.mesh_access_log(**options))


async def test_the_client_reads_every_kept_line_or_the_tail(served: Served) -> None:
    everything = await asyncio.to_thread(read_lines, served)
    tail = await asyncio.to_thread(read_lines, served, tail_lines=2)
    none = await asyncio.to_thread(read_lines, served, tail_lines=0)
    assert [path_of(line) for line in everything] == ["/call/1", "/call/2", "/call/3"]
    assert everything[0].startswith('[2025-11-27T07:50:01.123Z] "GET /call/1 HTTP/1.1" 200 - ')
    assert [path_of(line) for line in tail] == ["/call/2", "/call/3"]
    assert none == []


async def test_follow_shows_a_line_that_comes_later(served: Served) -> None:
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[str | None] = asyncio.Queue()

    def follow() -> None:
        with served.client() as client:
            for line in client.mesh_access_log(follow=True, tail_lines=1):
                loop.call_soon_threadsafe(received.put_nowait, line)
        loop.call_soon_threadsafe(received.put_nowait, None)

    async def next_line() -> str | None:
        return await asyncio.wait_for(received.get(), timeout=DEADLINE_S)

    following = asyncio.ensure_future(asyncio.to_thread(follow))
    try:
        first = await next_line()
        assert first is not None
        assert path_of(first) == "/call/3"
        assert served.access_log is not None
        served.access_log.append(call(4))
        later = await next_line()
        assert later is not None
        assert path_of(later) == "/call/4"
    finally:
        await served.server.close()  # ends the stream: the follower's iteration ends
        await asyncio.wait_for(following, timeout=DEADLINE_S)
    assert await next_line() is None


async def test_the_access_log_needs_the_token(served: Served) -> None:
    def read_without_the_token() -> list[str]:
        with served.client(token="wrong") as client:
            return list(client.mesh_access_log())

    with pytest.raises(Unauthorized):
        await asyncio.to_thread(read_without_the_token)


async def test_a_server_without_an_access_log_says_so(
    tmp_path: Path, identity: ServingIdentity
) -> None:
    served = await serve(tmp_path, identity, None)
    try:
        with pytest.raises(NotFound, match="the mesh access log is not enabled"):
            await asyncio.to_thread(read_lines, served)
    finally:
        await served.server.close()
        await served.store.close()


async def test_a_bad_tail_is_a_clear_error(served: Served) -> None:
    headers = {"Authorization": f"Bearer {served.token}"}
    verify = ssl.create_default_context(cadata=served.identity.ca_pem)
    async with httpx.AsyncClient(base_url=served.url, headers=headers, verify=verify) as client:
        response = await client.get(MESH_ACCESS_LOG_PATH, params={"tailLines": "many"})
    assert response.status_code == 400
    assert response.json()["message"] == 'tailLines must be a number, got "many"'


async def test_the_cli_prints_the_lines(served: Served) -> None:
    def run(*args: str) -> tuple[int, str]:
        env = {"KUBECONFIG": None, "FUNCMESH_HOME": None}
        result = CliRunner(env=env).invoke(
            cli, ["mesh", "logs", "--kubeconfig", str(served.kubeconfig), *args]
        )
        return result.exit_code, result.stdout

    code, everything = await asyncio.to_thread(run)
    tail_code, tail = await asyncio.to_thread(run, "--tail", "1")
    assert code == tail_code == 0
    assert [path_of(line) for line in everything.splitlines()] == ["/call/1", "/call/2", "/call/3"]
    assert [path_of(line) for line in tail.splitlines()] == ["/call/3"]
