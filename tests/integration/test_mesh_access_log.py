"""The mesh's access log through the API server (real TLS on loopback), the client and the CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from funcmesh.api.pki import ServingIdentity, ensure_pki
from funcmesh.cli.main import cli
from funcmesh.client.api import MESH_ACCESS_LOG_PATH
from funcmesh.errors import NotFound, Unauthorized
from funcmesh.mesh.access_log import AccessLog
from funcmesh.mesh.telemetry import RequestRecord
from tests.integration.api_server import RunningApi, start_api

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


@dataclasses.dataclass
class Served(RunningApi):
    access_log: AccessLog | None = None


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> ServingIdentity:
    return ensure_pki(tmp_path_factory.mktemp("pki"), hosts=["127.0.0.1"])


@pytest.fixture
async def served(tmp_path: Path, identity: ServingIdentity) -> AsyncIterator[Served]:
    access_log = AccessLog(tmp_path / "logs" / "mesh-access.log")
    for number in range(1, 4):
        access_log.append(call(number))
    api = await start_api(tmp_path, identity, access_log=access_log)
    served = Served(**vars(api), access_log=access_log)
    try:
        yield served
    finally:
        await served.close()
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
    served = Served(**vars(await start_api(tmp_path, identity, access_log=None)))
    try:
        with pytest.raises(NotFound, match="the mesh access log is not enabled"):
            await asyncio.to_thread(read_lines, served)
    finally:
        await served.close()


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
