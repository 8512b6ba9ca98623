"""cpu and qps rules through the real daemon: ``funcmesh autoscale create --metric qps`` makes
one serial caller's load start more pods, which ``get pods`` and ``-w`` show come and go."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import yaml

from tests.e2e.conftest import Daemon, api_client
from tests.e2e.test_autoscale import pod_names, watching_pods
from tests.e2e.test_cli_functions import deploy

QUICK = "def handler(event, context):\n    return 'quick'\n"
P = "autoscaling.funcmesh.io/"
FUNCTION_PATH = "/apis/kubeless.io/v1beta1/namespaces/default/functions/{name}"
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def serial_calls(stop: threading.Event, url: str, statuses: list[int]) -> None:
    """One caller, one call at a time: concurrency alone never needs a second instance."""
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            statuses.append(client.get(url).status_code)


def wait_for_pods(daemon: Daemon, name: str, wanted: str, timeout_s: float) -> list[str]:
    """``get pods`` of the function until ``wanted`` (">1" or "==1") holds; the last names."""
    deadline = time.monotonic() + timeout_s
    while True:
        pods = pod_names(daemon, name)
        if (len(pods) > 1) if wanted == ">1" else (len(pods) == 1):
            return pods
        assert time.monotonic() < deadline, f"pods of {name} never {wanted}: {pods}"


def test_qps_rule_scales_out_for_one_serial_caller_and_back(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "quick", QUICK)
    with api_client(daemon) as api:
        idle = {"metadata": {"annotations": {P + "scale-to-zero-after": "2s"}}}
        path = FUNCTION_PATH.format(name="quick")
        assert api.patch(path, content=json.dumps(idle), headers=MERGE_PATCH).status_code == 200

    created = daemon.run(
        "autoscale", "create", "quick", "--metric", "qps", "--value", "10", "--max", "4"
    )
    assert created.stderr == ""  # acted on: no "stored, not acted on" warning any more
    rows = [row.split() for row in daemon.run("autoscale", "ls").stdout.splitlines()]
    assert ["quick", "default", "quick", "1", "4", "qps", "10"] in rows
    assert len(pod_names(daemon, "quick")) == 1  # min 1, and no load yet

    stop, statuses = threading.Event(), []
    url = f"{daemon.gateway_url}/function/quick"
    caller = threading.Thread(target=serial_calls, args=(stop, url, statuses))
    with watching_pods(daemon, "quick") as watched:
        caller.start()
        try:
            pods = wait_for_pods(daemon, "quick", ">1", timeout_s=20)
            assert len(pods) <= 4
            [top] = yaml.safe_load(
                daemon.run("function", "top", "-f", "quick", "-o", "yaml").stdout
            )
            assert top["instances"] > 1
            with api_client(daemon) as api:
                stats = api.get(FUNCTION_PATH.format(name="quick") + "/stats").json()
            assert stats["autoscaling"]["metric"] == "qps"
            assert stats["autoscaling"]["desired"] > 1
        finally:
            stop.set()
            caller.join()
        assert set(statuses) == {200}
        wait_for_pods(daemon, "quick", "==1", timeout_s=30)  # back to min after the idle time
        deadline = time.monotonic() + 10
        while not any("Deleted" in line for line in watched) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the watcher's output (bounded by the deadline)
    assert any("Deleted" in line.split() for line in watched), watched


def test_cpu_rule_beyond_one_core_is_refused_before_sending(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "burner", QUICK)

    refused = daemon.run(
        "autoscale", "create", "burner", "--metric", "cpu", "--value", "150", check=False
    )

    assert refused.returncode == 1
    assert "percentage of one CPU core per instance, at most 100" in refused.stderr
    stored = yaml.safe_load(daemon.run("get", "function", "burner", "-o", "yaml").stdout)
    assert P + "metric" not in stored["metadata"].get("annotations", {})


def test_bad_target_annotation_is_a_422_naming_it(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "targeted", QUICK)
    bad = {"metadata": {"annotations": {P + "metric": "qps", P + "target": "lots"}}}

    with api_client(daemon) as api:
        path = FUNCTION_PATH.format(name="targeted")
        refused = api.patch(path, content=json.dumps(bad), headers=MERGE_PATCH)

    assert refused.status_code == 422
    [cause] = refused.json()["details"]["causes"]
    assert cause["field"] == f"metadata.annotations[{P}target]"
    assert '"lots" must be calls per second, a number above 0' in cause["message"]
