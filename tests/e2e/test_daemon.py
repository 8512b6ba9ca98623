"""The daemon as an operator sees it: TLS and tokens, readiness, SIGTERM drain, SIGKILL safety,
and everything back after a restart."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, alive, api_client, descendants, start_daemon

SLOW = "import time\ndef handler(event, context):\n    time.sleep(1.0)\n    return 'slept'\n"


def function_object(name: str, code: str, handler: str = "fn.handler") -> dict[str, object]:
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "runtime": "python3.11",
            "handler": handler,
            "function": code,
            "function-content-type": "text",
        },
    }


def deploy(daemon: Daemon, name: str, code: str) -> None:
    with api_client(daemon) as api:
        created = api.post(
            "/apis/kubeless.io/v1beta1/namespaces/default/functions",
            json=function_object(name, code),
        )
        assert created.status_code == 201, created.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            obj = api.get(f"/apis/kubeless.io/v1beta1/namespaces/default/functions/{name}").json()
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return
            time.sleep(0.02)
    raise AssertionError(f"{name} did not become ready: {obj}")


@pytest.fixture
def own_daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    running = start_daemon(tmp_path / "home", log_path=tmp_path / "daemon.log")
    yield running
    running.stop(signal.SIGKILL)


def test_api_needs_the_token_except_health_and_version(daemon: Daemon) -> None:
    with api_client(daemon, token=False) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/version").json()["gitVersion"].startswith("v1.")
        denied = anonymous.get("/apis/kubeless.io/v1beta1/namespaces/default/functions")
        assert denied.status_code == 401
        assert denied.json()["kind"] == "Status"
    kubeconfig = daemon.home / "kubeconfig"
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert (daemon.home / "pki" / "ca.key").stat().st_mode & 0o077 == 0


def test_sigterm_drains_in_flight_calls_and_stops_every_worker(own_daemon: Daemon) -> None:
    deploy(own_daemon, "slow", SLOW)
    answers: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{own_daemon.gateway_url}/function/slow", timeout=30)
        )
    )
    caller.start()
    deadline = time.monotonic() + 10
    while not alive(descendants(own_daemon.process.pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # let the call reach the worker; the handler itself takes a second
    workers = descendants(own_daemon.process.pid)
    assert own_daemon.stop(signal.SIGTERM) == 0
    caller.join(10)
    assert answers
    assert answers[0].status_code == 200
    assert answers[0].text == "slept"
    assert not alive(workers)


def test_sigkill_leaves_no_worker_and_loses_nothing(tmp_path: Path) -> None:
    first = start_daemon(tmp_path / "home", log_path=tmp_path / "first.log")
    try:
        deploy(first, "hello", "def handler(event, context):\n    return 'still here'\n")
        assert httpx.get(f"{first.gateway_url}/function/hello").text == "still here"
        workers = descendants(first.process.pid)
        assert workers
    finally:
        first.stop(signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(workers), "workers outlived a SIGKILLed daemon"
    second = start_daemon(tmp_path / "home", log_path=tmp_path / "second.log")
    try:
        answer = httpx.get(f"{second.gateway_url}/function/hello", timeout=30)
        assert answer.status_code == 200
        assert answer.text == "still here"
    finally:
        assert second.stop() == 0


def test_a_second_daemon_on_the_same_home_is_refused(daemon: Daemon, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="another funcmesh daemon"):
        start_daemon(daemon.home, log_path=tmp_path / "second.log")
