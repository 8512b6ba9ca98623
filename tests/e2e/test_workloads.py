"""Deployments through a real ``funcmesh up``, the funcmesh CLI and the machine's kubectl:
run, pods with their own IPs, logs, exec, deleting and scaling pods, crash loops, probes,
rollouts, and pods that die with the daemon and come back after a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import Daemon, alive, descendants, start_daemon

KUBECTL = Path("/usr/bin/kubectl")
DEADLINE_S = 20.0
SERVE = "python3 -m http.server $(PORT) --bind $(HOST)"
RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon whose crashed pods are restarted after 0.2 s, 0.4 s, ... (not 10 s)."""
    home = tmp_path_factory.mktemp("funcmesh-workloads")
    running = start_daemon(
        home / "home",
        log_path=home / "daemon.log",
        extra_env={"FUNCMESH_RESTART_BACKOFF_S": "0.2"},
    )
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"funcmesh up exited {code} on SIGTERM:\n{running.log_tail()}"


@dataclass(frozen=True)
class Kubectl:
    kubeconfig: Path
    home: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(KUBECTL), "--kubeconfig", str(self.kubeconfig), "--cache-dir",
             str(self.home / "cache"), *args],
            capture_output=True,
            text=True,
            timeout=30,
            env={"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            check=False,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout


@pytest.fixture
def kubectl(daemon: Daemon, tmp_path: Path) -> Kubectl:
    if not KUBECTL.exists():
        pytest.skip("needs the machine's kubectl at /usr/bin/kubectl")
    home = tmp_path / "kubectl-home"
    home.mkdir()
    return Kubectl(kubeconfig=daemon.home / "kubeconfig", home=home)


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def pod_rows(daemon: Daemon, selector: str) -> list[dict[str, str]]:
    """``get pods -o wide`` as dicts by column."""
    output = daemon.run("get", "pods", "-o", "wide", "-l", selector).stdout
    if not output.strip():
        return []  # "No resources found" went to stderr
    header, *lines = output.splitlines()
    names = header.split()
    return [dict(zip(names, line.split(), strict=False)) for line in lines]


def ready_rows(daemon: Daemon, selector: str, count: int) -> list[dict[str, str]]:
    def check() -> list[dict[str, str]] | None:
        rows = pod_rows(daemon, selector)
        ready = [r for r in rows if r["READY"] == "1/1" and r["STATUS"] == "Running"]
        return ready if len(ready) == len(rows) == count else None

    result: list[dict[str, str]] = wait_for(check, f"{count} ready pods of {selector}")
    return result


def http_get(ip: str, port: int) -> int:
    """The status of GET / (retried while the server is still starting)."""

    def attempt() -> int | None:
        try:
            with urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5) as response:
                return int(response.status)
        except urllib.error.URLError:
            return None

    status: int = wait_for(attempt, f"http://{ip}:{port}/ to answer")
    return status


def refused(ip: str, port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://{ip}:{port}/", timeout=5).close()
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


def test_run_a_command_as_pods_with_their_own_ips(daemon: Daemon) -> None:
    created = daemon.run("run", "web", "--replicas", "2", "--port", "8000", "--command", SERVE)
    assert created.stdout.strip() == "deployment.apps/web created"
    rows = ready_rows(daemon, "run=web", 2)
    assert {row["RESTARTS"] for row in rows} == {"0"}
    ips = {row["IP"] for row in rows}
    assert len(ips) == 2
    assert all(ip.startswith("127.128.") for ip in ips)
    for ip in ips:
        assert http_get(ip, 8000) == 200

    name, ip = rows[0]["NAME"], rows[0]["IP"]
    logs = daemon.run("logs", name).stdout
    assert f"Serving HTTP on {ip} port 8000" in logs

    shown = daemon.run("exec", name, "--", "sh", "-c", 'echo "$POD_NAME $HOST $PORT"; pwd')
    first, directory = shown.stdout.splitlines()
    assert first == f"{name} {ip} 8000"
    assert Path(directory).is_dir()
    failed = daemon.run("exec", name, "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7

    header = daemon.run("get", "deployments").stdout.splitlines()
    assert header[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert header[1].split()[:4] == ["web", "2/2", "2", "2"]


def test_a_deleted_pod_is_replaced_with_a_new_ip(daemon: Daemon) -> None:
    daemon.run("run", "phoenix", "--port", "8000", "--command", SERVE)
    (old,) = ready_rows(daemon, "run=phoenix", 1)
    http_get(old["IP"], 8000)

    deleted = daemon.run("delete", "pod", old["NAME"])

    assert deleted.stdout.strip() == f'pod "{old["NAME"]}" deleted'
    (new,) = wait_for(
        lambda: [r for r in ready_rows(daemon, "run=phoenix", 1) if r["NAME"] != old["NAME"]],
        "the replacement pod",
    )
    assert new["IP"] != old["IP"]
    assert http_get(new["IP"], 8000) == 200
    assert refused(old["IP"], 8000)


def test_scale_and_delete_a_deployment(daemon: Daemon) -> None:
    daemon.run("run", "scaled", "--command", "sleep 1000")
    ready_rows(daemon, "run=scaled", 1)

    assert daemon.run("scale", "deployment", "scaled", "--replicas", "3").stdout.strip() == (
        "deployment.apps/scaled scaled"
    )
    ready_rows(daemon, "run=scaled", 3)
    daemon.run("scale", "deployment/scaled", "--replicas", "1")
    ready_rows(daemon, "run=scaled", 1)

    deleted = daemon.run("delete", "deployment", "scaled")

    assert deleted.stdout.strip() == 'deployment.apps "scaled" deleted'
    wait_for(lambda: not pod_rows(daemon, "run=scaled"), "the pods to go")


def test_a_command_that_does_not_exist_crash_loops_with_the_error(daemon: Daemon) -> None:
    daemon.run("run", "broken", "--command", "no-such-command --port 1")

    def looping() -> dict[str, str] | None:
        rows = pod_rows(daemon, "run=broken")
        crashing = (
            rows and rows[0]["STATUS"] == "CrashLoopBackOff" and int(rows[0]["RESTARTS"]) >= 1
        )
        return rows[0] if crashing else None

    row = wait_for(looping, "CrashLoopBackOff")
    pod = yaml.safe_load(daemon.run("get", "pod", row["NAME"], "-o", "yaml").stdout)
    status = pod["status"]["containerStatuses"][0]
    error = 'exec: "no-such-command": executable file not found in $PATH'
    assert error in status["state"]["waiting"]["message"]
    assert status["lastState"]["terminated"]["message"] == error
    assert pod["status"]["conditions"][-1] == {
        **pod["status"]["conditions"][-1],
        "type": "Ready",
        "status": "False",
    }
    daemon.run("delete", "deployment", "broken")


def test_a_function_pod_can_be_deleted(daemon: Daemon, tmp_path: Path) -> None:
    source = tmp_path / "hello.py"
    source.write_text("def handler(event, context):\n    return 'hello'\n")
    daemon.run(
        "function", "deploy", "hello", "--runtime", RUNTIME, "--handler", "hello.handler",
        "--from-file", str(source),
    )  # fmt: skip
    (row,) = ready_rows(daemon, "function=hello", 1)

    daemon.run("delete", "pod", row["NAME"])

    wait_for(lambda: not pod_rows(daemon, "function=hello"), "the instance to stop")
    daemon.run("function", "delete", "hello")


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: probed
spec:
  replicas: 2
  selector:
    matchLabels: {app: probed}
  template:
    metadata:
      labels: {app: probed}
    spec:
      terminationGracePeriodSeconds: 3
      containers:
      - name: main
        image: python:3.11
        command: [python3, -m, http.server, $(PORT), --bind, $(HOST)]
        env: [{name: GREETING, value: "%s $(POD_NAME)"}]
        ports: [{name: http, containerPort: 9000}]
        readinessProbe:
          httpGet: {path: /, port: http}
          periodSeconds: 1
        livenessProbe:
          tcpSocket: {port: http}
          periodSeconds: 1
"""


def test_a_deployment_yaml_through_kubectl(
    daemon: Daemon, kubectl: Kubectl, tmp_path: Path
) -> None:
    manifest = tmp_path / "probed.yaml"
    manifest.write_text(DEPLOYMENT % "hello")
    assert kubectl.ok("apply", "-f", str(manifest)).strip() == "deployment.apps/probed created"
    rolled = kubectl.ok("rollout", "status", "deployment/probed", "--timeout=30s")
    assert 'deployment "probed" successfully rolled out' in rolled
    header, *lines = kubectl.ok("get", "deployments", "probed").splitlines()
    assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert lines[0].split()[:4] == ["probed", "2/2", "2", "2"]
    header, *lines = kubectl.ok("get", "pods", "-l", "app=probed", "-o", "wide").splitlines()
    assert header.split()[:6] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP"]
    first = lines[0].split()
    assert first[1:4] == ["1/1", "Running", "0"]
    assert http_get(first[5], 9000) == 200
    assert "GET / HTTP/1.1" in kubectl.ok("logs", first[0])

    # a new template: funcmesh apply replaces the pods one by one
    manifest.write_text(DEPLOYMENT % "bonjour")
    daemon.run("apply", "-f", str(manifest))
    kubectl.ok("rollout", "status", "deployment/probed", "--timeout=30s")
    names = wait_for(lambda: len(n := pod_names(kubectl)) == 2 and n, "the old pods to go")
    greeting = daemon.run("exec", names[0], "--", "sh", "-c", "echo $GREETING").stdout.strip()
    assert greeting == f"bonjour {names[0].removeprefix('pod/')}"

    assert kubectl.ok("scale", "deployment", "probed", "--replicas=1").strip() == (
        "deployment.apps/probed scaled"
    )
    kubectl.ok("rollout", "status", "deployment/probed", "--timeout=30s")
    (pod,) = wait_for(lambda: len(n := pod_names(kubectl)) == 1 and n, "one pod")
    assert kubectl.ok("delete", pod).strip() == f'pod "{pod.removeprefix("pod/")}" deleted'
    kubectl.ok("rollout", "status", "deployment/probed", "--timeout=30s")
    assert pod not in pod_names(kubectl)
    assert (
        kubectl.ok("delete", "deployment", "probed").strip() == 'deployment.apps "probed" deleted'
    )


def pod_names(kubectl: Kubectl) -> list[str]:
    names: list[str] = kubectl.ok("get", "pods", "-l", "app=probed", "-o", "name").split()
    return names


def test_pods_die_with_the_daemon_and_come_back_after_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    daemon = start_daemon(home, log_path=tmp_path / "daemon.log")
    try:
        daemon.run("run", "survivor", "--replicas", "2", "--command", "sh -c 'sleep 1000; echo'")
        before = {row["NAME"] for row in ready_rows(daemon, "run=survivor", 2)}
        processes = wait_for(
            lambda: (found := _sleepers(daemon.process.pid)) and len(found) == 2 and found,
            "the pods' processes",
        )
        daemon.stop(signal.SIGKILL)  # no chance to clean up
        wait_for(lambda: not alive(processes), "the pods' processes to die with the daemon")

        daemon = start_daemon(home, log_path=tmp_path / "daemon.log")
        after = {row["NAME"] for row in ready_rows(daemon, "run=survivor", 2)}
        assert not before & after  # new pods
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log_tail()


def _sleepers(daemon_pid: int) -> set[int]:
    found = set()
    for pid in descendants(daemon_pid):
        try:
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if command[:2] == [b"sleep", b"1000"]:
            found.add(pid)
    return found
