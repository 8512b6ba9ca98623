"""The workload supervisor with real processes on real pod IPs: environment, restarts with
backoff, probes, deleting and scaling pods, rolling updates, and the Deployment controller
over a real SQLite store."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.deployments import DeploymentController
from funcmesh.discovery.service_env import service_environment
from funcmesh.discovery.services import ServicePortView, ServiceTable, ServiceView
from funcmesh.model.deployments import DeploymentSpec, admit_deployment, parse_deployment
from funcmesh.model.kinds import DEPLOYMENT
from funcmesh.model.objects import RawObject
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.pools import PodEvents
from funcmesh.runtime.workload_context import WorkloadContext
from funcmesh.runtime.workloads import Workloads
from funcmesh.store.sqlite import Store

DEADLINE_S = 15.0
SERVER = textwrap.dedent(
    """
    import http.server, json, os, sys
    print("started", os.environ["POD_NAME"], flush=True)
    if os.environ.get("EXIT_AT_ONCE"):
        sys.exit(int(os.environ["EXIT_AT_ONCE"]))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/ready":
                self.send_response(200 if os.path.exists("ready") else 503)
                self.end_headers()
                return
            body = json.dumps({"env": dict(os.environ), "cwd": os.getcwd()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            print("request", self.path, flush=True)

    address = (os.environ["HOST"], int(os.environ["PORT"]))
    http.server.HTTPServer(address, Handler).serve_forever()
    """
)


@dataclass
class Rig:
    workloads: Workloads
    events: PodEvents
    logbook: LogBook
    directory: Path
    seen: list[tuple[str, RawObject]]
    services: ServiceTable

    def deployment(self, name: str = "web", **changes: Any) -> DeploymentSpec:
        return parse_deployment(admit_deployment(manifest(self.directory, name, **changes), None))

    def apply(self, spec: DeploymentSpec) -> None:
        self.workloads.apply(
            spec, service_env=lambda: service_environment(self.services, "default")
        )

    def pods(self, name: str = "web") -> list[RawObject]:
        prefix = f"{name}-"
        return [
            p
            for p in self.workloads.list_pods("default")
            if p["metadata"]["name"].startswith(prefix)
        ]

    async def until(self, check: Callable[[], Any], what: str) -> Any:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            await asyncio.sleep(0.02)
        raise AssertionError(
            f"timed out waiting for {what}; pods: {self.workloads.list_pods(None)}"
        )

    async def ready_pods(self, count: int, name: str = "web") -> list[RawObject]:
        def check() -> list[RawObject] | None:
            pods = [p for p in self.pods(name) if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in pods if container_status(p)["ready"]]
            return ready if len(ready) == count == len(pods) else None

        result: list[RawObject] = await self.until(check, f"{count} ready pods of {name}")
        return result


def manifest(directory: Path, name: str, **changes: Any) -> RawObject:
    script = directory / "server.py"
    script.write_text(SERVER)
    container: dict[str, Any] = {
        "name": name,
        "command": [sys.executable, str(script)],
        "ports": [{"name": "http", "containerPort": 8000}],
        "env": [{"name": "GREETING", "value": "hello from $(POD_NAME)"}],
        "workingDir": str(directory),
    }
    spec: dict[str, Any] = {
        "replicas": 1,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 2},
        },
    }
    for key, value in changes.items():
        if key in ("replicas", "strategy"):
            spec[key] = value
        else:
            container[key] = value
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default", "uid": "uid-1"},
        "spec": spec,
    }


def container_status(pod: RawObject) -> dict[str, Any]:
    status: dict[str, Any] = pod["status"]["containerStatuses"][0]
    return status


def fetch(pod: RawObject, path: str = "/") -> dict[str, Any]:
    url = f"http://{pod['status']['podIP']}:8000{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        document: dict[str, Any] = json.loads(response.read())
        return document


async def fetch_when_listening(pod: RawObject) -> dict[str, Any]:
    """Without a readiness probe a pod is ready once started, maybe before it listens."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return await asyncio.to_thread(fetch, pod)
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


def random_pod_cidr() -> str:
    return f"127.{random.randint(130, 250)}.{random.randint(0, 255)}.0/24"


class LeavingServices:
    """A before_stop hook that notes each address and whether its pod still answered then."""

    def __init__(self) -> None:
        self.left: list[tuple[str, bool]] = []

    async def __call__(self, ip: str) -> None:
        try:
            await asyncio.to_thread(fetch, {"status": {"podIP": ip}})
            self.left.append((ip, True))
        except OSError:
            self.left.append((ip, False))


@pytest.fixture
def leaving() -> LeavingServices:
    return LeavingServices()


@pytest.fixture
async def rig(tmp_path: Path, leaving: LeavingServices) -> AsyncIterator[Rig]:
    events, logbook = PodEvents(), LogBook()
    seen: list[tuple[str, RawObject]] = []
    context = WorkloadContext(
        addresses=AddressPool(random_pod_cidr()),
        logbook=logbook,
        scratch_root=tmp_path / "pods",
        on_pod_change=lambda kind, pod: (seen.append((kind, pod)), events.publish(kind, pod)),
        restart_backoff_s=0.2,
        before_stop=leaving,
    )
    workloads = Workloads(context)
    directory = tmp_path / "app"
    directory.mkdir()
    try:
        yield Rig(workloads, events, logbook, directory, seen, ServiceTable())
    finally:
        await workloads.close(grace_s=3)
        events.close()
        logbook.close()


async def test_replicas_serve_on_their_own_ips_with_the_pod_environment(rig: Rig) -> None:
    rig.services.put_service(
        ServiceView(
            namespace="default",
            name="redis",
            type="ClusterIP",
            cluster_ip="127.96.0.20",
            ports=(ServicePortView(name="", protocol="TCP", port=6379, target_port=6379),),
            selector=(("app", "redis"),),
        )
    )
    rig.apply(rig.deployment(replicas=2))
    pods = await rig.ready_pods(2)
    assert len({pod["status"]["podIP"] for pod in pods}) == 2
    for pod in pods:
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        answer = await fetch_when_listening(pod)
        env = answer["env"]
        assert (env["HOST"], env["POD_IP"], env["PORT"]) == (ip, ip, "8000")
        assert (env["POD_NAME"], env["POD_NAMESPACE"]) == (name, "default")
        assert env["GREETING"] == f"hello from {name}"
        assert env["REDIS_SERVICE_HOST"] == "127.96.0.20"
        assert env["REDIS_PORT"] == "tcp://127.96.0.20:6379"
        assert answer["cwd"] == str(rig.directory)
        spec_env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        assert spec_env["POD_NAME"] == name  # all of it is in the Pod, for exec
        assert spec_env["REDIS_SERVICE_HOST"] == "127.96.0.20"
        assert pod["metadata"]["labels"]["app"] == "web"
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        assert pod["status"]["phase"] == "Running"
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True"
        lines = rig.logbook.read_pod_log("default", name, tail_lines=None)
        assert any(line.endswith(f"started {name}") for line in lines)
        assert any(line.endswith("request /") for line in lines)


async def test_a_replica_that_exits_is_restarted_with_backoff(rig: Rig) -> None:
    rig.apply(rig.deployment(env=[{"name": "EXIT_AT_ONCE", "value": "3"}]))

    def crash_looping() -> RawObject | None:
        pods = rig.pods()
        if len(pods) != 1:
            return None
        status = container_status(pods[0])
        waiting = status["state"].get("waiting") or {}
        looping = waiting.get("reason") == "CrashLoopBackOff" and status["restartCount"] >= 2
        return pods[0] if looping else None

    first = await rig.until(rig.pods, "the pod")
    pod = await rig.until(crash_looping, "CrashLoopBackOff")
    status = container_status(pod)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert "back-off" in status["state"]["waiting"]["message"]
    assert status["ready"] is False
    # the same pod, restarted in place: same name, same IP
    assert pod["metadata"]["name"] == first[0]["metadata"]["name"]
    assert pod["status"]["podIP"] == first[0]["status"]["podIP"]
    lines = rig.logbook.read_pod_log("default", pod["metadata"]["name"], tail_lines=None)
    assert sum(1 for line in lines if "started" in line) >= 3  # every run's output


async def test_a_command_that_does_not_exist_shows_the_error_and_backs_off(rig: Rig) -> None:
    rig.apply(rig.deployment(command=["no-such-command-here", "--flag"]))

    def failing() -> dict[str, Any] | None:
        pods = rig.pods()
        status = container_status(pods[0]) if pods else None
        return status if status and status["restartCount"] >= 2 else None

    status = await rig.until(failing, "restarts of a missing command")
    terminated = status["lastState"]["terminated"]
    message = 'exec: "no-such-command-here": executable file not found in $PATH'
    assert (terminated["reason"], terminated["exitCode"], terminated["message"]) == (
        "StartError",
        128,
        message,
    )
    waiting = status["state"]["waiting"]
    assert waiting["reason"] in ("CrashLoopBackOff", "RunContainerError")
    assert message in waiting["message"]


async def test_the_readiness_probe_decides_the_ready_condition(rig: Rig) -> None:
    probe = {
        "httpGet": {"path": "/ready", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    rig.apply(rig.deployment(readinessProbe=probe))
    await rig.until(
        lambda: rig.pods() and "running" in container_status(rig.pods()[0])["state"], "start"
    )
    assert container_status(rig.pods()[0])["ready"] is False
    (rig.directory / "ready").touch()
    await rig.ready_pods(1)
    modified = [p for kind, p in rig.seen if kind == "MODIFIED" and container_status(p)["ready"]]
    assert modified  # watchers (the endpoints controller) hear of it
    (rig.directory / "ready").unlink()
    await rig.until(lambda: not container_status(rig.pods()[0])["ready"], "not ready again")
    assert container_status(rig.pods()[0])["restartCount"] == 0  # readiness never restarts


async def test_an_exec_probe_runs_in_the_pods_directory(rig: Rig) -> None:
    probe = {"exec": {"command": ["test", "-f", "ready"]}, "periodSeconds": 1}
    rig.apply(rig.deployment(readinessProbe=probe))
    await rig.until(
        lambda: rig.pods() and "running" in container_status(rig.pods()[0])["state"], "start"
    )
    (rig.directory / "ready").touch()
    await rig.ready_pods(1)


async def test_a_failing_liveness_probe_restarts_the_process(rig: Rig) -> None:
    probe = {"tcpSocket": {"port": 8999}, "periodSeconds": 1, "failureThreshold": 1}
    rig.apply(rig.deployment(livenessProbe=probe))

    def restarted() -> dict[str, Any] | None:
        pods = rig.pods()
        status = container_status(pods[0]) if pods else None
        return status if status and status["restartCount"] >= 1 else None

    status = await rig.until(restarted, "a liveness restart")
    message = status["lastState"]["terminated"]["message"]
    assert message.startswith("killed after failing its liveness probe: dial tcp")


async def test_deleting_a_pod_starts_a_new_one_with_a_new_ip(rig: Rig) -> None:
    rig.apply(rig.deployment())
    (old,) = await rig.ready_pods(1)
    replica = rig.workloads.find_pod("default", old["metadata"]["name"])
    assert replica is not None
    replica.terminate()
    await replica.gone.wait()
    (new,) = await rig.ready_pods(1)
    assert new["metadata"]["name"] != old["metadata"]["name"]
    assert new["status"]["podIP"] != old["status"]["podIP"]
    assert (await fetch_when_listening(new))["env"]["POD_NAME"] == new["metadata"]["name"]
    kinds = [(kind, p["metadata"]["name"]) for kind, p in rig.seen]
    assert ("DELETED", old["metadata"]["name"]) in kinds
    assert ("ADDED", new["metadata"]["name"]) in kinds
    with pytest.raises(urllib.error.URLError, match="refused"):  # nothing serves there now
        fetch(old)


async def test_scaling_up_and_down_stops_the_newest_first(rig: Rig) -> None:
    rig.apply(rig.deployment(replicas=1))
    (first,) = await rig.ready_pods(1)
    rig.apply(rig.deployment(replicas=3))
    await rig.ready_pods(3)
    assert rig.workloads.counts("default", "web") is not None
    rig.apply(rig.deployment(replicas=1))
    (kept,) = await rig.ready_pods(1)
    assert kept["metadata"]["name"] == first["metadata"]["name"]
    rig.apply(rig.deployment(replicas=0))
    await rig.until(lambda: not rig.pods(), "no pods")


async def test_a_replica_leaves_the_services_before_its_sigterm(
    rig: Rig, leaving: LeavingServices
) -> None:
    """Scaled down, deleted or replaced: the VIPs drop its address while it still serves."""
    rig.apply(rig.deployment(replicas=2))
    first, second = await rig.ready_pods(2)
    for pod in (first, second):
        await fetch_when_listening(pod)
    rig.apply(rig.deployment(replicas=1))
    await rig.ready_pods(1)
    replica = rig.workloads.find_pod("default", rig.pods()[0]["metadata"]["name"])
    assert replica is not None
    replica.terminate()  # what `delete pod` does
    await rig.ready_pods(1)
    addresses = {first["status"]["podIP"], second["status"]["podIP"]}
    assert {ip for ip, _ in leaving.left} == addresses
    assert all(
        answered for _, answered in leaving.left
    ), leaving.left  # before SIGTERM: still serving


async def test_a_new_template_replaces_the_pods(rig: Rig) -> None:
    rig.apply(rig.deployment(replicas=2))
    before = {p["metadata"]["name"] for p in await rig.ready_pods(2)}
    changed = rig.deployment(replicas=2, env=[{"name": "GREETING", "value": "v2"}])
    rig.apply(changed)

    def replaced() -> list[RawObject] | None:
        pods = rig.pods()
        current = [
            p for p in pods if p["metadata"]["labels"]["pod-template-hash"] == changed.template.hash
        ]
        ready = [p for p in current if container_status(p)["ready"]]
        return ready if len(ready) == 2 == len(pods) else None

    after = await rig.until(replaced, "the rollout")
    assert not before & {p["metadata"]["name"] for p in after}
    assert {(await fetch_when_listening(p))["env"]["GREETING"] for p in after} == {"v2"}
    counts = rig.workloads.counts("default", "web")
    assert counts is not None
    assert (counts.replicas, counts.updated, counts.ready) == (2, 2, 2)


async def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(rig: Rig) -> None:
    command = ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"]
    rig.apply(rig.deployment(command=command))
    (pod,) = await rig.ready_pods(1)
    name = pod["metadata"]["name"]
    await rig.until(  # the trap is set once it says so
        lambda: any(
            line.endswith(" up")
            for line in rig.logbook.read_pod_log("default", name, tail_lines=None)
        ),
        "the shell to trap SIGTERM",
    )
    began = time.monotonic()
    await rig.workloads.remove("default", "web")
    took_s = time.monotonic() - began
    assert 1.5 <= took_s < 5, took_s  # terminationGracePeriodSeconds: 2
    assert not rig.pods()


def test_every_process_of_a_pod_dies_with_the_daemon(tmp_path: Path) -> None:
    """Even a SIGKILL of the daemon ends the pod's processes, also the ones it forked and the
    ones that left its process group."""
    script = tmp_path / "daemon.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from funcmesh.runtime.workload_processes import LaunchSpec, launch

            async def main():
                argv = ("sh", "-c", "sleep 60 & setsid sleep 61 & sleep 62")
                spec = LaunchSpec(argv=argv, env={"PATH": "/usr/bin:/bin"}, cwd="/")
                process = await launch(spec, output=None)
                print(process.pid, flush=True)
                await asyncio.sleep(60)

            asyncio.run(main())
            """
        )
    )
    daemon = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    launcher = int(daemon.stdout.readline())
    deadline = time.monotonic() + DEADLINE_S
    while len(_sleepers(launcher)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    sleepers = _sleepers(launcher)
    assert len(sleepers) == 3, sleepers
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    daemon.stdout.close()
    while _alive(sleepers | {launcher}) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(sleepers | {launcher})


def _sleepers(launcher: int) -> set[int]:
    """The ``sleep`` processes below the launcher."""
    parents: dict[int, int] = {}
    commands: dict[int, bytes] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[1])
    below, frontier = set(), {launcher}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - below
        below |= frontier
    return {pid for pid in below if commands.get(pid) == b"sleep"}


def _alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


async def test_the_deployment_controller_runs_stored_deployments(rig: Rig, tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "state.db")
    controller = DeploymentController(store=store, workloads=rig.workloads, services=rig.services)
    try:
        await controller.start()
        obj = admit_deployment(manifest(rig.directory, "web", replicas=2), None)
        del obj["metadata"]["uid"]
        await store.create(DEPLOYMENT, obj)

        async def status() -> dict[str, Any]:
            stored = await store.get(DEPLOYMENT, "default", "web")
            return dict(stored.get("status") or {})

        deadline = time.monotonic() + DEADLINE_S
        while (await status()).get("availableReplicas") != 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        current = await status()
        assert (current["replicas"], current["readyReplicas"], current["updatedReplicas"]) == (
            2,
            2,
            2,
        )
        assert current["observedGeneration"] == 1
        assert {c["type"]: c["reason"] for c in current["conditions"]} == {
            "Available": "MinimumReplicasAvailable",
            "Progressing": "NewReplicaSetAvailable",
        }
        pods = rig.pods()
        assert {p["metadata"]["ownerReferences"][0]["uid"] for p in pods} == {
            (await store.get(DEPLOYMENT, "default", "web"))["metadata"]["uid"]
        }
        await store.delete(DEPLOYMENT, "default", "web")
        await rig.until(lambda: not rig.pods(), "the pods of a deleted Deployment to stop")
    finally:
        await controller.close()
        await store.close()
