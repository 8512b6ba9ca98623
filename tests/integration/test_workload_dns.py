"""Workload pods with their own resolv.conf, hosts file and host name (a root daemon's cluster
DNS), through the real supervisor and launcher: what the pod's process and its exec probes see,
what the Pod object says, and what is left of it all once the pod is gone."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from funcmesh.model.deployments import admit_deployment, parse_deployment
from funcmesh.model.objects import RawObject
from funcmesh.runtime.addresses import AddressPool
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.workload_context import WorkloadContext
from funcmesh.runtime.workload_dns import ClusterDns
from funcmesh.runtime.workloads import Workloads

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root")

DEADLINE_S = 15.0
KUBE_DNS = "127.96.0.10"
SHOW = (
    "cat /etc/resolv.conf /etc/hosts; echo host=$(hostname); "
    'echo "server=$FUNCMESH_DNS_SERVER search=$FUNCMESH_DNS_SEARCH"; exec sleep 60'
)


@dataclass
class Rig:
    workloads: Workloads
    logbook: LogBook
    etc_root: Path

    def run(self, name: str, *, script: str = SHOW, **template: Any) -> None:
        container: dict[str, Any] = {"name": name, "command": ["sh", "-c", script]}
        container.update(template.pop("container", {}))
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [container], "terminationGracePeriodSeconds": 1,
                             **template},
                },
            },
        }  # fmt: skip
        self.workloads.apply(parse_deployment(admit_deployment(deployment, None)), service_env=dict)

    def pod(self, name: str) -> RawObject | None:
        pods = [
            p
            for p in self.workloads.list_pods("default")
            if p["metadata"]["name"].startswith(f"{name}-")
        ]
        return pods[0] if pods else None  # fmt: skip

    def log(self, pod: RawObject) -> str:
        lines = self.logbook.read_pod_log("default", pod["metadata"]["name"], tail_lines=None)
        return "\n".join(line.split(" ", 1)[1] for line in lines)


async def until(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := check():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    logbook, etc_root = LogBook(), tmp_path / "pod-etc"
    etc_root.mkdir()
    context = WorkloadContext(
        addresses=AddressPool(f"127.{random.randint(130, 250)}.{random.randint(0, 255)}.0/24"),
        logbook=logbook,
        scratch_root=tmp_path / "pods",
        on_pod_change=lambda kind, pod: None,
        restart_backoff_s=0.2,
        dns=ClusterDns(server="127.0.0.1:5353", nameserver=KUBE_DNS, etc_root=etc_root),
    )
    workloads = Workloads(context)
    try:
        yield Rig(workloads, logbook, etc_root)
    finally:
        await workloads.close(grace_s=3)
        logbook.close()


async def test_the_pods_process_sees_its_own_resolv_conf_hosts_and_host_name(rig: Rig) -> None:
    machine = Path("/etc/resolv.conf").read_text(), socket.gethostname()
    rig.run("web")
    pod = await until(lambda: rig.pod("web"), "the pod")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]

    log = await until(lambda: (text := rig.log(pod)) and "search=" in text and text, "its output")

    assert log.splitlines()[:3] == [
        "search default.svc.cluster.local svc.cluster.local cluster.local",
        f"nameserver {KUBE_DNS}",
        "options ndots:5",
    ]
    assert f"{ip}\t{name}" in log.splitlines()
    assert f"host={name}" in log.splitlines()
    assert (
        "server=127.0.0.1:5353 search=default.svc.cluster.local svc.cluster.local cluster.local"
    ) in log.splitlines()
    assert pod["spec"]["dnsPolicy"] == "ClusterFirst"
    assert pod["spec"]["dnsConfig"] == {
        "nameservers": [KUBE_DNS],
        "searches": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
        "options": [{"name": "ndots", "value": "5"}],
    }
    assert (Path("/etc/resolv.conf").read_text(), socket.gethostname()) == machine

    await rig.workloads.remove("default", "web")
    assert list(rig.etc_root.iterdir()) == []  # the pod's files went with it


async def test_exec_probes_run_with_the_pods_files(rig: Rig) -> None:
    probe = {"exec": {"command": ["grep", "-q", f"nameserver {KUBE_DNS}", "/etc/resolv.conf"]},
             "periodSeconds": 1}  # fmt: skip
    rig.run("probed", script="exec sleep 60", container={"readinessProbe": probe})

    ready = await until(
        lambda: (pod := rig.pod("probed")) and pod["status"]["containerStatuses"][0]["ready"],
        "the exec probe to pass",
    )

    assert ready


async def test_files_that_cannot_be_mounted_are_said_in_the_pods_log(rig: Rig) -> None:
    rig.run("unmounted", script="echo started; exec sleep 60")
    pod = await until(lambda: rig.pod("unmounted"), "the pod")
    name = pod["metadata"]["name"]
    # Take the pod's hosts file away before its process starts again, as if it could not be
    # written: the pod must run on, with the machine's file, and say so.
    await until(lambda: "started" in rig.log(pod), "the first start")
    (rig.etc_root / f"default_{name}" / "hosts").unlink()
    running = rig.pod("unmounted")
    assert running is not None
    container_id = running["status"]["containerStatuses"][0]["containerID"]
    os.kill(int(container_id.removeprefix("funcmesh://")), signal.SIGKILL)

    log = await until(
        lambda: "machine's /etc/hosts" in (text := rig.log(pod)) and text.count("started") == 2
        and text,
        "the restart",
    )  # fmt: skip

    assert "funcmesh: the pod keeps the machine's /etc/hosts: " in log
    assert "No such file or directory" in log
