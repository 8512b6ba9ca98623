"""The API server over real TLS on loopback, with a real SQLite store and fake providers."""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from aiohttp import web

from funcmesh.api.pki import ServingIdentity, ensure_pki
from funcmesh.api.providers import ApiProviders
from funcmesh.api.server import ApiServer
from funcmesh.errors import NotFound
from funcmesh.model.function import parse_function
from funcmesh.model.kinds import FUNCTION, NAMESPACE, ResourceType
from funcmesh.model.objects import RawObject
from funcmesh.store.sqlite import Store

TOKEN = "test-token-0123456789-abcdefghijklmnopqrstuvwxyz"
FUNCTIONS = "/apis/kubeless.io/v1beta1/namespaces/default/functions"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
DEADLINE_S = 5.0


def function_manifest(name: str = "hello", **spec: Any) -> RawObject:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": {
            "runtime": "python3.11",
            "handler": "hello.handler",
            "function": "def handler(event, context):\n    return 'hello'\n",
            **spec,
        },
    }


# fakes of the runtime's side


@dataclass
class FakeAdmission:
    """Validates Functions with the model and adds the ``function`` label, as the runtime does."""

    crash_with: Exception | None = None

    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        if self.crash_with is not None:
            raise self.crash_with
        if rt != FUNCTION:
            return obj
        spec = parse_function(obj)
        admitted = copy.deepcopy(obj)
        admitted["metadata"].setdefault("labels", {})["function"] = spec.name
        return admitted


@dataclass
class FakePods:
    pods: dict[tuple[str, str], RawObject] = field(default_factory=dict)

    def list_pods(self, namespace: str | None) -> list[RawObject]:
        return [p for (ns, _), p in self.pods.items() if namespace in (None, ns)]

    def get_pod(self, namespace: str, name: str) -> RawObject:
        if (namespace, name) not in self.pods:
            raise NotFound(f'pods "{name}" not found')
        return self.pods[(namespace, name)]

    async def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, RawObject]]:
        await asyncio.Event().wait()  # no pod ever changes here
        yield "ADDED", {}

    async def delete_pod(self, namespace: str, name: str) -> RawObject:
        self.get_pod(namespace, name)  # NotFound
        return self.pods.pop((namespace, name))


@dataclass
class FakeLogs:
    lines: dict[tuple[str, str, bool], list[str]] = field(default_factory=dict)
    followers: list[asyncio.Queue[str]] = field(default_factory=list)

    def read_function_log(
        self, namespace: str, name: str, *, tail_lines: int | None, build: bool
    ) -> list[str]:
        lines = self.lines.get((namespace, name, build), [])
        return lines if tail_lines is None else lines[-tail_lines:]

    async def follow_function_log(
        self, namespace: str, name: str, *, build: bool
    ) -> AsyncIterator[str]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self.followers.append(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self.followers.remove(queue)

    def append(self, namespace: str, name: str, line: str) -> None:
        self.lines.setdefault((namespace, name, False), []).append(line)
        for queue in self.followers:
            queue.put_nowait(line)

    def read_pod_log(self, namespace: str, pod: str, *, tail_lines: int | None) -> list[str]:
        return [f"{pod} says hi"]

    async def follow_pod_log(self, namespace: str, pod: str) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""


class FakeStats:
    def function_stats(self, namespace: str, name: str) -> Mapping[str, Any]:
        return {
            "calls": 3,
            "failures": 1,
            "p50_ms": 1.5,
            "p99_ms": None,
            "instances": 1,
            "coldStarts": 1,
        }


class FakeConfig:
    def server_config(self) -> Mapping[str, Any]:
        return {
            "runtimes": [{"id": "python3.11", "language": "python", "version": "3.11.7"}],
            "version": "0.1.0",
        }


# a fake gateway behind the service proxy


@dataclass
class GatewayRequest:
    method: str
    path_qs: str
    body: bytes
    headers: Mapping[str, str]


@dataclass
class FakeGateway:
    runner: web.AppRunner
    url: str
    requests: list[GatewayRequest]


async def start_fake_gateway() -> FakeGateway:
    requests: list[GatewayRequest] = []

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        requests.append(
            GatewayRequest(request.method, request.path_qs, body, dict(request.headers))
        )
        return web.Response(status=201, body=b"answer:" + body, headers={"X-Gateway": "yes"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return FakeGateway(runner=runner, url=f"http://127.0.0.1:{port}", requests=requests)


# the server under test


@dataclass
class Fakes:
    admission: FakeAdmission = field(default_factory=FakeAdmission)
    pods: FakePods = field(default_factory=FakePods)
    logs: FakeLogs = field(default_factory=FakeLogs)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Api:
    server: ApiServer
    store: Store
    client: httpx.AsyncClient
    identity: ServingIdentity
    fakes: Fakes
    gateway: FakeGateway

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.server.bound_port}"

    def client_without_token(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, verify=client_ssl(self.identity))


def client_ssl(identity: ServingIdentity) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=identity.ca_pem)


def client_with_token(server: ApiServer, identity: ServingIdentity) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"https://127.0.0.1:{server.bound_port}",
        verify=client_ssl(identity),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> ServingIdentity:
    return ensure_pki(tmp_path_factory.mktemp("pki"), hosts=["127.0.0.1"])


async def start_server(
    db_path: Path, identity: ServingIdentity, gateway: FakeGateway, *, keep_changes: int = 10_000
) -> tuple[ApiServer, Store, Fakes]:
    store = await Store.open(db_path, keep_changes=keep_changes)
    fakes = Fakes()
    providers = ApiProviders(
        admission=fakes.admission,
        pods=fakes.pods,
        logs=fakes.logs,
        stats=FakeStats(),
        config=FakeConfig(),
    )
    server = ApiServer(
        store=store,
        providers=providers,
        token=TOKEN,
        ssl_context=identity.server_ssl_context(),
        host="127.0.0.1",
        port=0,
        gateway_url=gateway.url,
        metrics_registry=prometheus_client.CollectorRegistry(),
        is_ready=fakes.ready.is_set,
    )
    try:
        await server.start()
    except BaseException:
        await store.close()
        raise
    return server, store, fakes


@pytest.fixture
async def api(tmp_path: Path, identity: ServingIdentity) -> AsyncIterator[Api]:
    gateway = await start_fake_gateway()
    server, store, fakes = await start_server(tmp_path / "state.db", identity, gateway)
    client = client_with_token(server, identity)
    try:
        yield Api(server, store, client, identity, fakes, gateway)
    finally:
        await client.aclose()
        await server.close()
        await store.close()
        await gateway.runner.cleanup()


async def create_function(api: Api, name: str = "hello", **spec: Any) -> RawObject:
    response = await api.client.post(FUNCTIONS, json=function_manifest(name, **spec))
    assert response.status_code == 201, response.text
    created: RawObject = response.json()
    return created


def assert_status(response: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert (body["code"], body["reason"]) == (code, reason)
    return body


# authentication and health


async def test_requests_without_the_token_are_unauthorized(api: Api) -> None:
    async with api.client_without_token() as anonymous:
        missing = await anonymous.get(FUNCTIONS)
        wrong = await anonymous.get(FUNCTIONS, headers={"Authorization": "Bearer nope"})
        basic = await anonymous.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
    for response in (missing, wrong, basic):
        body = assert_status(response, 401, "Unauthorized")
        assert "bearer token" in body["message"]


async def test_health_and_version_need_no_token(api: Api) -> None:
    async with api.client_without_token() as anonymous:
        healthz = await anonymous.get("/healthz")
        not_ready = await anonymous.get("/readyz")
        api.fakes.ready.set()
        ready = await anonymous.get("/readyz")
        version = await anonymous.get("/version")
    assert (healthz.status_code, healthz.text) == (200, "ok")
    assert not_ready.status_code == 503
    assert (ready.status_code, ready.text) == (200, "ok")
    assert version.json()["gitVersion"] == "v1.32.0"
    assert (version.json()["major"], version.json()["minor"]) == ("1", "32")


# discovery


async def test_discovery_documents_list_groups_resources_and_subresources(api: Api) -> None:
    core = (await api.client.get("/api")).json()
    groups = (await api.client.get("/apis")).json()
    kubeless = (await api.client.get("/apis/kubeless.io/v1beta1")).json()
    v1 = (await api.client.get("/api/v1")).json()

    assert (core["kind"], core["versions"]) == ("APIVersions", ["v1"])
    assert groups["kind"] == "APIGroupList"
    kubeless_group = next(g for g in groups["groups"] if g["name"] == "kubeless.io")
    assert kubeless_group["preferredVersion"]["groupVersion"] == "kubeless.io/v1beta1"
    resources = {r["name"]: r for r in kubeless["resources"]}
    assert resources["functions"]["kind"] == "Function"
    assert resources["functions"]["namespaced"] is True
    assert "watch" in resources["functions"]["verbs"]
    assert {"functions/status", "functions/log", "functions/stats"} <= resources.keys()
    core_resources = {r["name"]: r for r in v1["resources"]}
    assert core_resources["pods"]["verbs"] == ["delete", "get", "list", "watch"]
    assert core_resources["namespaces"]["shortNames"] == ["ns"]
    assert "pods/log" in core_resources


async def test_aggregated_discovery_when_asked_for_it(api: Api) -> None:
    accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    response = await api.client.get("/apis", headers={"Accept": accept})
    assert response.headers["Content-Type"].startswith(
        "application/json;g=apidiscovery.k8s.io;v=v2"
    )
    body = response.json()
    assert body["kind"] == "APIGroupDiscoveryList"
    kubeless = next(item for item in body["items"] if item["metadata"]["name"] == "kubeless.io")
    functions = kubeless["versions"][0]["resources"][0]
    assert functions["resource"] == "functions"
    assert functions["scope"] == "Namespaced"
    assert {s["subresource"] for s in functions["subresources"]} == {"status", "log", "stats"}


async def test_unknown_paths_are_a_not_found_status_naming_the_path(api: Api) -> None:
    for path in (
        "/apis/kubeless.io/v1beta1/namespaces/default/widgets",
        "/nothing/here",
        "/apis/example.com/v1",
    ):
        body = assert_status(await api.client.get(path), 404, "NotFound")
        assert path in body["message"]


# create, read, update, patch, delete


async def test_function_create_get_list_update_patch_delete(api: Api) -> None:
    created = await create_function(api)
    assert created["metadata"]["labels"]["function"] == "hello"  # admission ran
    assert created["metadata"]["uid"]
    assert created["metadata"]["namespace"] == "default"

    fetched = (await api.client.get(f"{FUNCTIONS}/hello")).json()
    assert fetched == created
    listing = (await api.client.get(FUNCTIONS, params={"limit": "500"})).json()
    assert listing["kind"] == "FunctionList"
    assert listing["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert [(i["kind"], i["apiVersion"], i["metadata"]["name"]) for i in listing["items"]] == [
        ("Function", "kubeless.io/v1beta1", "hello")
    ]

    fetched["spec"]["runtime"] = "python3.12"
    updated = (await api.client.put(f"{FUNCTIONS}/hello", json=fetched)).json()
    assert updated["spec"]["runtime"] == "python3.12"
    assert updated["metadata"]["generation"] == 2

    merge = {"metadata": {"labels": {"team": "a"}}, "spec": {"timeout": "30"}}
    merged = await api.client.patch(
        f"{FUNCTIONS}/hello",
        content=json.dumps(merge),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert merged.json()["metadata"]["labels"] == {"function": "hello", "team": "a"}
    assert merged.json()["spec"]["timeout"] == "30"

    ops = [
        {"op": "test", "path": "/spec/timeout", "value": "30"},
        {"op": "replace", "path": "/spec/handler", "value": "main.run"},
    ]
    patched = await api.client.patch(
        f"{FUNCTIONS}/hello",
        content=json.dumps(ops),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert patched.json()["spec"]["handler"] == "main.run"

    deleted = await api.client.delete(f"{FUNCTIONS}/hello")
    assert (deleted.status_code, deleted.json()["metadata"]["name"]) == (200, "hello")
    gone = assert_status(await api.client.get(f"{FUNCTIONS}/hello"), 404, "NotFound")
    assert gone["details"] == {"name": "hello", "group": "kubeless.io", "kind": "functions"}
    assert_status(await api.client.delete(f"{FUNCTIONS}/hello"), 404, "NotFound")


async def test_yaml_bodies_are_accepted(api: Api) -> None:
    manifest = (
        "apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata:\n  name: from-yaml\n"
        "spec:\n  runtime: python3.11\n  handler: hello.handler\n"
    )
    response = await api.client.post(
        FUNCTIONS, content=manifest, headers={"Content-Type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["name"] == "from-yaml"


async def test_stale_resource_version_is_a_conflict(api: Api) -> None:
    created = await create_function(api)
    first = copy.deepcopy(created)
    first["spec"]["timeout"] = "10"
    assert (await api.client.put(f"{FUNCTIONS}/hello", json=first)).status_code == 200
    stale = copy.deepcopy(created)
    stale["spec"]["timeout"] = "20"
    body = assert_status(await api.client.put(f"{FUNCTIONS}/hello", json=stale), 409, "Conflict")
    assert "has been modified" in body["message"]
    current = (await api.client.get(f"{FUNCTIONS}/hello")).json()
    assert current["spec"]["timeout"] == "10"


async def test_update_of_a_missing_object_is_not_found(api: Api) -> None:
    response = await api.client.put(f"{FUNCTIONS}/ghost", json=function_manifest("ghost"))
    assert_status(response, 404, "NotFound")


async def test_invalid_function_is_422_with_causes(api: Api) -> None:
    bad = function_manifest("bad", handler="nodot", runtime="python")
    body = assert_status(await api.client.post(FUNCTIONS, json=bad), 422, "Invalid")
    assert body["details"]["name"] == "bad"
    assert body["details"]["kind"] == "Function"
    fields = {cause["field"] for cause in body["details"]["causes"]}
    assert fields == {"spec.handler", "spec.runtime"}
    assert (await api.client.get(f"{FUNCTIONS}/bad")).status_code == 404  # nothing stored


async def test_duplicate_create_is_already_exists(api: Api) -> None:
    await create_function(api)
    response = await api.client.post(FUNCTIONS, json=function_manifest())
    assert_status(response, 409, "AlreadyExists")


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"{not json", "application/json", "not valid JSON"),
        (b"", "application/json", "empty"),
        (b"key: [unclosed", "application/yaml", "not valid YAML"),
    ],
)
async def test_malformed_bodies_are_bad_requests(
    api: Api, body: bytes, content_type: str, message: str
) -> None:
    response = await api.client.post(
        FUNCTIONS, content=body, headers={"Content-Type": content_type}
    )
    assert message in assert_status(response, 400, "BadRequest")["message"]


async def test_namespace_in_the_body_must_match_the_path(api: Api) -> None:
    manifest = function_manifest()
    manifest["metadata"]["namespace"] = "kube-system"
    body = assert_status(await api.client.post(FUNCTIONS, json=manifest), 400, "BadRequest")
    assert "kube-system" in body["message"]


async def test_request_bodies_over_the_limit_are_rejected(api: Api) -> None:
    manifest = function_manifest(function="x" * (3 << 20))
    response = await api.client.post(FUNCTIONS, json=manifest)
    assert_status(response, 413, "RequestEntityTooLarge")


async def test_status_subresource_changes_only_the_status(api: Api) -> None:
    created = await create_function(api)
    created["status"] = {"instances": 2}
    created["spec"]["runtime"] = "python3.12"
    response = await api.client.put(f"{FUNCTIONS}/hello/status", json=created)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == {"instances": 2}
    assert response.json()["spec"]["runtime"] == "python3.11"
    patch = await api.client.patch(
        f"{FUNCTIONS}/hello/status",
        content=json.dumps({"status": {"instances": 0}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patch.json()["status"] == {"instances": 0}


async def test_label_selector_and_pagination(api: Api) -> None:
    for name in ("a", "b", "c"):
        await create_function(api, name)
    await api.client.patch(
        f"{FUNCTIONS}/b",
        content=json.dumps({"metadata": {"labels": {"tier": "gold"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    gold = (await api.client.get(FUNCTIONS, params={"labelSelector": "tier=gold"})).json()
    assert [i["metadata"]["name"] for i in gold["items"]] == ["b"]

    first = (await api.client.get(FUNCTIONS, params={"limit": "2"})).json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 1
    rest = await api.client.get(
        FUNCTIONS, params={"limit": "2", "continue": first["metadata"]["continue"]}
    )
    assert [i["metadata"]["name"] for i in rest.json()["items"]] == ["c"]
    assert "continue" not in rest.json()["metadata"]


# namespaces and pods


async def test_deleting_a_namespace_deletes_its_objects(api: Api) -> None:
    created = await api.client.post("/api/v1/namespaces", json={"metadata": {"name": "team"}})
    assert created.status_code == 201, created.text
    team_functions = "/apis/kubeless.io/v1beta1/namespaces/team/functions"
    assert (await api.client.post(team_functions, json=function_manifest())).status_code == 201
    await create_function(api)  # same name in "default" must survive

    assert (await api.client.delete("/api/v1/namespaces/team")).status_code == 200
    assert (await api.client.get("/api/v1/namespaces/team")).status_code == 404
    assert (await api.client.get(f"{team_functions}/hello")).status_code == 404
    assert (await api.client.get(f"{FUNCTIONS}/hello")).status_code == 200


async def test_default_namespaces_cannot_be_deleted(api: Api) -> None:
    response = await api.client.delete("/api/v1/namespaces/default")
    assert_status(response, 403, "Forbidden")


async def test_functions_need_an_existing_namespace(api: Api) -> None:
    response = await api.client.post(
        "/apis/kubeless.io/v1beta1/namespaces/nowhere/functions", json=function_manifest()
    )
    assert 'namespaces "nowhere" not found' in assert_status(response, 404, "NotFound")["message"]


async def test_pods_come_from_the_provider_and_are_read_only(api: Api) -> None:
    pod = {"metadata": {"name": "hello-x1", "namespace": "default"}, "status": {"phase": "Running"}}
    api.fakes.pods.pods[("default", "hello-x1")] = pod
    listing = (await api.client.get("/api/v1/namespaces/default/pods")).json()
    assert [(p["kind"], p["metadata"]["name"]) for p in listing["items"]] == [("Pod", "hello-x1")]
    everywhere = (await api.client.get("/api/v1/pods")).json()
    assert len(everywhere["items"]) == 1
    write = await api.client.put("/api/v1/namespaces/default/pods/hello-x1", json=pod)
    assert "read-only" in assert_status(write, 405, "MethodNotAllowed")["message"]
    missing = await api.client.get("/api/v1/namespaces/default/pods/nope")
    assert_status(missing, 404, "NotFound")


async def test_deleting_a_pod_goes_to_the_provider(api: Api) -> None:
    pod = {"metadata": {"name": "web-x1", "namespace": "default"}, "status": {"phase": "Running"}}
    api.fakes.pods.pods[("default", "web-x1")] = pod
    deleted = await api.client.delete("/api/v1/namespaces/default/pods/web-x1")
    assert deleted.status_code == 200, deleted.text
    assert (deleted.json()["kind"], deleted.json()["metadata"]["name"]) == ("Pod", "web-x1")
    assert ("default", "web-x1") not in api.fakes.pods.pods
    again = await api.client.delete("/api/v1/namespaces/default/pods/web-x1")
    assert_status(again, 404, "NotFound")


async def test_the_scale_subresource_of_a_deployment(api: Api) -> None:
    deployments = "/apis/apps/v1/namespaces/default/deployments"
    body = {
        "metadata": {"name": "web"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}},
    }
    assert (await api.client.post(deployments, json=body)).status_code == 201
    scale = (await api.client.get(f"{deployments}/web/scale")).json()
    assert (scale["kind"], scale["apiVersion"], scale["spec"]) == (
        "Scale",
        "autoscaling/v1",
        {"replicas": 1},
    )
    assert scale["status"]["selector"] == "a=b"
    patched = await api.client.patch(
        f"{deployments}/web/scale",
        content=b'{"spec": {"replicas": 3}}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.json()["spec"] == {"replicas": 3}, patched.text
    stored = (await api.client.get(f"{deployments}/web")).json()
    assert (stored["spec"]["replicas"], stored["metadata"]["generation"]) == (3, 2)
    bad = await api.client.put(f"{deployments}/web/scale", json={**scale, "spec": {"replicas": -1}})
    assert "spec.replicas" in assert_status(bad, 422, "Invalid")["message"]
    stale = await api.client.put(f"{deployments}/web/scale", json=scale)  # old resourceVersion
    assert_status(stale, 409, "Conflict")


# tables


async def test_lists_as_tables_for_kubectl(api: Api) -> None:
    await create_function(api)
    response = await api.client.get(FUNCTIONS, headers={"Accept": TABLE_ACCEPT})
    body = response.json()
    assert (body["kind"], body["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert [c["name"] for c in body["columnDefinitions"]] == [
        "Name",
        "Runtime",
        "Handler",
        "Status",
        "Age",
    ]
    (row,) = body["rows"]
    assert row["cells"][:4] == ["hello", "python3.11", "hello.handler", "Deploying"]
    assert row["cells"][4].endswith("s")
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "hello"
    full = await api.client.get(
        FUNCTIONS, params={"includeObject": "Object"}, headers={"Accept": TABLE_ACCEPT}
    )
    assert full.json()["rows"][0]["object"]["spec"]["handler"] == "hello.handler"


# watch


async def read_events(response: httpx.Response, count: int) -> list[dict[str, Any]]:
    events = []
    async with asyncio.timeout(DEADLINE_S):
        async for line in response.aiter_lines():
            if line:
                events.append(json.loads(line))
            if len(events) == count:
                break
    return events


async def test_watch_sends_current_objects_then_changes_in_order(api: Api) -> None:
    await create_function(api, "before")
    async with api.client.stream("GET", FUNCTIONS, params={"watch": "true"}) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = json.loads(await anext_line(lines))
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "before")
        created = await create_function(api, "during")
        created["spec"]["timeout"] = "5"
        await api.client.put(f"{FUNCTIONS}/during", json=created)
        await api.client.delete(f"{FUNCTIONS}/during")
        seen = [json.loads(await anext_line(lines)) for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [
        ("ADDED", "during"),
        ("MODIFIED", "during"),
        ("DELETED", "during"),
    ]
    assert seen[1]["object"]["spec"]["timeout"] == "5"


async def anext_line(lines: AsyncIterator[str]) -> str:
    async with asyncio.timeout(DEADLINE_S):
        while not (line := await anext(lines)):
            pass
    return line


async def test_watch_resumes_after_a_resource_version(api: Api) -> None:
    first = await create_function(api, "one")
    await create_function(api, "two")
    await api.client.delete(f"{FUNCTIONS}/one")
    params = {"watch": "1", "resourceVersion": first["metadata"]["resourceVersion"]}
    async with api.client.stream("GET", FUNCTIONS, params=params) as response:
        events = await read_events(response, 2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "two"),
        ("DELETED", "one"),
    ]


async def test_watch_from_a_forgotten_version_gets_an_expired_error(
    tmp_path: Path, identity: ServingIdentity, api: Api
) -> None:
    server, store, _ = await start_server(
        tmp_path / "small.db", identity, api.gateway, keep_changes=10
    )
    try:
        namespace = await store.get(NAMESPACE, "", "default")
        while store.resource_version < 1000:  # the store forgets old changes every 1000
            namespace = await store.update(NAMESPACE, {**namespace, "status": {}})
        async with client_with_token(server, identity) as client:
            params = {"watch": "true", "resourceVersion": "5"}
            async with client.stream("GET", FUNCTIONS, params=params) as response:
                async with asyncio.timeout(DEADLINE_S):
                    events = [json.loads(line) async for line in response.aiter_lines() if line]
    finally:
        await server.close()
        await store.close()
    assert [event["type"] for event in events] == ["ERROR"]
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


async def test_watch_ends_at_its_timeout_and_filters_by_name(api: Api) -> None:
    await create_function(api, "one")
    await create_function(api, "two")
    params = {"watch": "true", "timeoutSeconds": "1", "fieldSelector": "metadata.name=two"}
    async with api.client.stream("GET", FUNCTIONS, params=params) as response:
        async with asyncio.timeout(DEADLINE_S):
            lines = [line async for line in response.aiter_lines() if line]
    assert [json.loads(line)["object"]["metadata"]["name"] for line in lines] == ["two"]


async def test_watch_as_table_streams_table_rows(api: Api) -> None:
    params = {"watch": "true", "resourceVersion": str(api.store.resource_version)}
    headers = {"Accept": TABLE_ACCEPT}
    async with api.client.stream("GET", FUNCTIONS, params=params, headers=headers) as response:
        await create_function(api)
        (event,) = await read_events(response, 1)
    assert event["type"] == "ADDED"
    assert event["object"]["kind"] == "Table"
    assert event["object"]["rows"][0]["cells"][0] == "hello"


async def test_closing_the_server_ends_open_watches(api: Api) -> None:
    params = {"watch": "true", "resourceVersion": str(api.store.resource_version)}
    async with api.client.stream("GET", FUNCTIONS, params=params) as response:
        closing = asyncio.create_task(api.server.close())
        async with asyncio.timeout(DEADLINE_S):
            remaining = [line async for line in response.aiter_lines()]
        await closing
    assert remaining == []


# logs, stats, server config, metrics


async def test_function_log_tail_and_build_log(api: Api) -> None:
    await create_function(api)
    for number in range(3):
        api.fakes.logs.append("default", "hello", f"line {number}")
    api.fakes.logs.lines[("default", "hello", True)] = ["pip install ok"]
    tail = await api.client.get(f"{FUNCTIONS}/hello/log", params={"tailLines": "2"})
    build = await api.client.get(f"{FUNCTIONS}/hello/log", params={"container": "build"})
    assert tail.text == "line 1\nline 2\n"
    assert tail.headers["Content-Type"].startswith("text/plain")
    assert build.text == "pip install ok\n"
    missing = await api.client.get(f"{FUNCTIONS}/ghost/log")
    assert_status(missing, 404, "NotFound")


async def test_function_log_follow_streams_new_lines(api: Api) -> None:
    await create_function(api)
    api.fakes.logs.append("default", "hello", "old line")
    params = {"follow": "true"}
    async with api.client.stream("GET", f"{FUNCTIONS}/hello/log", params=params) as response:
        lines = response.aiter_lines()
        assert await anext_line(lines) == "old line"
        api.fakes.logs.append("default", "hello", "new line")
        assert await anext_line(lines) == "new line"


async def test_pod_log_for_kubectl_logs(api: Api) -> None:
    api.fakes.pods.pods[("default", "hello-x1")] = {"metadata": {"name": "hello-x1"}}
    response = await api.client.get("/api/v1/namespaces/default/pods/hello-x1/log")
    assert response.text == "hello-x1 says hi\n"
    assert_status(await api.client.get("/api/v1/namespaces/default/pods/x/log"), 404, "NotFound")


async def test_log_lines_carry_their_time_only_when_asked(api: Api) -> None:
    """As ``kubectl logs``: bare lines, ``--timestamps`` (timestamps=true) puts the time first."""
    await create_function(api)
    api.fakes.logs.append("default", "hello", "2026-11-27T04:00:00.123Z hello-x1 started")
    plain = await api.client.get(f"{FUNCTIONS}/hello/log")
    stamped = await api.client.get(f"{FUNCTIONS}/hello/log", params={"timestamps": "true"})
    assert plain.text == "hello-x1 started\n"
    assert stamped.text == "2026-11-27T04:00:00.123Z hello-x1 started\n"
    params = {"follow": "true"}
    async with api.client.stream("GET", f"{FUNCTIONS}/hello/log", params=params) as response:
        lines = response.aiter_lines()
        assert await anext_line(lines) == "hello-x1 started"
        api.fakes.logs.append("default", "hello", "2026-11-27T04:00:01.000Z hello-x1 more")
        assert await anext_line(lines) == "hello-x1 more"


async def test_function_stats(api: Api) -> None:
    await create_function(api)
    stats = (await api.client.get(f"{FUNCTIONS}/hello/stats")).json()
    assert (stats["calls"], stats["p99_ms"]) == (3, None)
    assert_status(await api.client.get(f"{FUNCTIONS}/ghost/stats"), 404, "NotFound")


async def test_server_config_needs_the_token(api: Api) -> None:
    config = (await api.client.get("/funcmesh/v1/server-config")).json()
    assert config["runtimes"][0]["id"] == "python3.11"
    async with api.client_without_token() as anonymous:
        assert (await anonymous.get("/funcmesh/v1/server-config")).status_code == 401


async def test_unexpected_errors_are_internal_errors_that_hide_details(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    api.fakes.admission.crash_with = RuntimeError("token=hunter2 at /secret/path")
    response = await api.client.post(FUNCTIONS, json=function_manifest())
    body = assert_status(response, 500, "InternalError")
    assert "hunter2" not in body["message"]
    assert "daemon log" in body["message"]
    assert "RuntimeError: token=hunter2" in caplog.text  # the operator sees it in the log


async def test_metrics_expose_request_counts(api: Api) -> None:
    await api.client.get(FUNCTIONS)
    response = await api.client.get("/metrics")
    assert response.status_code == 200
    assert 'funcmesh_api_requests_total{code="200",method="GET"}' in response.text


# service proxy


async def test_service_proxy_forwards_to_the_gateway(api: Api) -> None:
    path = "/api/v1/namespaces/default/services/hello:8080/proxy/some/path"
    response = await api.client.post(
        path, params={"q": "1 2"}, content=b"payload", headers={"X-Custom": "kept"}
    )
    assert (response.status_code, response.content) == (201, b"answer:payload")
    assert response.headers["X-Gateway"] == "yes"
    (seen,) = api.gateway.requests
    assert (seen.method, seen.path_qs, seen.body) == (
        "POST",
        "/function/hello.default/some/path?q=1+2",
        b"payload",
    )
    assert seen.headers["X-Custom"] == "kept"
    assert "Authorization" not in seen.headers
    assert seen.headers["X-Forwarded-Proto"] == "https"


async def test_service_proxy_without_a_path(api: Api) -> None:
    response = await api.client.get("/api/v1/namespaces/team/services/fn/proxy")
    assert response.status_code == 201
    assert api.gateway.requests[0].path_qs == "/function/fn.team"


async def test_service_proxy_reports_an_unreachable_gateway(api: Api) -> None:
    await api.gateway.runner.cleanup()
    response = await api.client.get("/api/v1/namespaces/default/services/hello/proxy/")
    assert "gateway" in assert_status(response, 503, "ServiceUnavailable")["message"]


# restart


async def test_objects_survive_a_restart_on_the_same_database(
    api: Api, tmp_path: Path, identity: ServingIdentity
) -> None:
    await create_function(api)
    await api.server.close()
    await api.store.close()
    server, store, _ = await start_server(tmp_path / "state.db", identity, api.gateway)
    try:
        async with client_with_token(server, identity) as client:
            response = await client.get(f"{FUNCTIONS}/hello")
    finally:
        await server.close()
        await store.close()
    assert response.status_code == 200
    assert response.json()["spec"]["handler"] == "hello.handler"
