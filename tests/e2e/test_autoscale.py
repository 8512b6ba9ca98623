"""``funcmesh autoscale`` as a user runs it: the rule is stored both ways and the pool obeys it."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml

from tests.e2e.conftest import FUNCMESH, Daemon
from tests.e2e.test_cli_functions import deploy

SLEEPY = "import time\n\ndef handler(event, context):\n    time.sleep(0.2)\n    return 'done'\n"
P = "autoscaling.funcmesh.io/"


def pod_names(daemon: Daemon, function: str) -> list[str]:
    return daemon.run("get", "pods", "-l", f"function={function}", "-o", "name").stdout.split()


@contextlib.contextmanager
def watching_pods(daemon: Daemon, function: str) -> Iterator[list[str]]:
    """``funcmesh get pods -w`` running; yields the lines it printed so far."""
    process = subprocess.Popen(
        [FUNCMESH, "get", "pods", "-l", f"function={function}", "-w"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=daemon.env,
    )
    assert process.stdout is not None
    stdout, lines = process.stdout, []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")))
    reader.start()
    try:
        yield lines
    finally:
        process.terminate()
        process.wait(10)
        reader.join()
        stdout.close()


def call_until(stop: threading.Event, url: str, errors: list[str]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            answer = client.get(url)
            if answer.status_code != 200:
                errors.append(f"{answer.status_code} {answer.text}")


def test_create_stores_the_rule_and_load_scales_out_to_max(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "sleepy", SLEEPY)

    created = daemon.run("autoscale", "create", "sleepy", "--min", "0", "--max", "3")
    assert created.stdout.splitlines() == [
        "Adding autoscaling rule to the function...",
        "Autoscaling rule for sleepy submitted for deployment",
    ]
    stored = yaml.safe_load(daemon.run("get", "function", "sleepy", "-o", "yaml").stdout)
    assert stored["metadata"]["annotations"][P + "min-scale"] == "0"
    assert stored["metadata"]["annotations"][P + "max-scale"] == "3"
    hpa = stored["spec"]["horizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (0, 3)
    assert hpa["scaleTargetRef"]["name"] == "sleepy"

    with watching_pods(daemon, "sleepy") as watched:
        scale_out(daemon, watched)


def scale_out(daemon: Daemon, watched: list[str]) -> None:
    """8 callers of a 0.2 s function with max-scale 3: exactly 3 instances, seen by -w too."""
    stop, errors = threading.Event(), []
    url = f"{daemon.gateway_url}/function/sleepy"
    callers = [threading.Thread(target=call_until, args=(stop, url, errors)) for _ in range(8)]
    for caller in callers:
        caller.start()
    try:
        deadline = time.monotonic() + 10
        while len(pods := pod_names(daemon, "sleepy")) < 3 and time.monotonic() < deadline:
            pass
        assert len(pods) == 3, pods
        assert len(pod_names(daemon, "sleepy")) == 3  # never beyond max-scale
        deadline = time.monotonic() + 5
        while len(running_in(watched)) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the watcher's output (bounded by the deadline)
        assert running_in(watched) == set(pods), watched
    finally:
        stop.set()
        for caller in callers:
            caller.join()
    assert errors == []


def running_in(lines: list[str]) -> set[str]:
    """pod/NAME of each pod a ``get pods -w`` line shows Running."""
    return {f"pod/{line.split()[0]}" for line in lines if "Running" in line.split()}


def test_list_and_delete(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "ruled", SLEEPY)
    daemon.run("autoscale", "create", "ruled", "--min", "1", "--max", "4", "--value", "2")
    cpu = daemon.run(
        "autoscale", "create", "ruled", "--max", "5", "--metric", "cpu", "--value", "70"
    )
    assert cpu.stderr == ""  # acted on now: no warning

    header, *rows = daemon.run("autoscale", "ls").stdout.splitlines()
    assert header.split() == ["NAME", "NAMESPACE", "TARGET", "MIN", "MAX", "METRIC", "VALUE"]
    assert ["ruled", "default", "ruled", "1", "5", "cpu", "70"] in [row.split() for row in rows]
    listed = yaml.safe_load(daemon.run("autoscale", "list", "-o", "yaml").stdout)
    [hpa] = [item for item in listed["items"] if item["metadata"]["name"] == "ruled"]
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["spec"]["metrics"][0]["resource"]["targetAverageUtilization"] == 70

    deleted = daemon.run("autoscale", "delete", "ruled")
    assert deleted.stdout == "Autoscaling rule for ruled deleted\n"
    stored = yaml.safe_load(daemon.run("get", "function", "ruled", "-o", "yaml").stdout)
    assert "horizontalPodAutoscaler" not in stored["spec"]
    assert not any(key.startswith(P) for key in stored["metadata"].get("annotations", {}))

    again = daemon.run("autoscale", "delete", "ruled", check=False)
    assert again.returncode == 1
    assert "Not found an autoscale definition for ruled" in again.stderr


def test_bad_rule_changes_nothing(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "unruled", SLEEPY)

    result = daemon.run("autoscale", "create", "unruled", "--min", "3", "--max", "2", check=False)

    assert result.returncode == 1
    assert "max must be greater than or equal to min" in result.stderr
    stored = yaml.safe_load(daemon.run("get", "function", "unruled", "-o", "yaml").stdout)
    assert "horizontalPodAutoscaler" not in stored["spec"]
