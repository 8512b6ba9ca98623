"""Async calls as a user makes them: ``/async-function/NAME`` on the gateway, the CLI's
``function call --async`` and ``call get``, a callback receiver, and a SIGKILLed daemon."""

from __future__ import annotations

import http.server
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests.e2e.conftest import Daemon, api_client, start_daemon, work_dir_for
from tests.e2e.test_cli_functions import deploy

# Text bodies reach Python handlers as bytes (Kubeless's behaviour), JSON ones as values.
ECHO = 'def handler(event, context):\n    return "echo: " + event["data"].decode()\n'
# Appends its data to a file (its side effect), then waits for a gate file to exist.
GATED = """import os, time
def handler(event, context):
    with open({log!r}, "a") as log:
        log.write(event["data"].decode() + "\\n")
    while not os.path.exists({gate!r}):
        time.sleep(0.01)
    return "ran " + event["data"].decode()
"""
RUNNER_CONCURRENCY = 16  # AsyncCallRunner's default max_concurrent


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def call_get(daemon: Daemon, call_id: str) -> tuple[dict[str, str], str, int]:
    """``call get``'s header fields, its body and its exit code."""
    result = daemon.run("call", "get", call_id, check=False)
    fields, body = {}, []
    for line in result.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Call", "Function", "Phase", "Status", "Duration", "Callback"):
            fields[key] = value.strip()
        else:
            body.append(line)
    return fields, "\n".join(body), result.returncode


def finished(daemon: Daemon, call_id: str) -> bool:
    return call_get(daemon, call_id)[0].get("Phase") not in ("Pending", "Running")


def test_the_gateway_accepts_at_once_and_call_get_shows_the_answer(
    daemon: Daemon, tmp_path: Path
) -> None:
    deploy(daemon, tmp_path, "async-echo", ECHO)

    answer = httpx.post(
        f"{daemon.gateway_url}/async-function/async-echo",
        content=b"hi",
        headers={"Content-Type": "text/plain"},
    )

    assert answer.status_code == 202
    document = answer.json()
    assert document["function"] == "default/async-echo"
    assert answer.headers["X-Call-Id"] == document["id"]
    wait_until(lambda: finished(daemon, document["id"]), "the call finished")
    fields, body, code = call_get(daemon, document["id"])
    assert (fields["Phase"], fields["Status"], fields["Function"]) == (
        "Succeeded",
        "200",
        "default/async-echo",
    )
    assert fields["Duration"].endswith(" ms")
    assert body == "echo: hi"
    assert code == 0


def test_an_unknown_function_is_404_and_nothing_is_stored(daemon: Daemon) -> None:
    answer = httpx.post(f"{daemon.gateway_url}/async-function/nothing-here.default")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": "function default/nothing-here not found",
        "function": "default/nothing-here",
    }
    result = daemon.run("call", "get", "0123", check=False)
    assert result.returncode == 1
    assert 'call "0123" not found' in result.stderr


def test_cli_async_call_prints_an_id_and_a_failed_call_exits_non_zero(
    daemon: Daemon, tmp_path: Path
) -> None:
    deploy(
        daemon,
        tmp_path,
        "async-fails",
        "def handler(event, context):\n    raise ValueError('no')\n",
    )
    call_id = daemon.run("function", "call", "async-fails", "--async", "--data", "x").stdout.strip()
    assert len(call_id) == 32

    wait_until(lambda: finished(daemon, call_id), "the call finished")
    fields, _, code = call_get(daemon, call_id)
    assert fields["Phase"] == "Failed"
    assert fields["Status"] == "500"
    assert code == 1


class Receiver(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[http.server.ThreadingHTTPServer]:
    Receiver.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_callback_url_receives_the_result(
    daemon: Daemon, tmp_path: Path, receiver: http.server.ThreadingHTTPServer
) -> None:
    deploy(daemon, tmp_path, "async-callback", ECHO)
    url = f"http://127.0.0.1:{receiver.server_address[1]}/result"
    call_id = daemon.run(
        "function", "call", "async-callback", "--async", "--data", "cb", "--callback-url", url
    ).stdout.strip()

    wait_until(lambda: bool(Receiver.received), "the callback arrived")
    [(headers, body)] = Receiver.received
    assert body == b"echo: cb"
    assert headers["X-Call-Id"] == call_id
    assert headers["X-Function-Status"] == "200"
    assert headers["X-Function-Name"] == "default/async-callback"
    wait_until(lambda: call_get(daemon, call_id)[0].get("Callback") == "Delivered", "recorded")


def phase_of(api: httpx.Client, call_id: str) -> str:
    answer = api.get(f"/funcmesh/v1/calls/{call_id}")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["phase"])


def test_after_a_sigkill_pending_calls_run_once_and_running_ones_never_again(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    first = start_daemon(home, log_path=tmp_path / "first.log")
    try:
        shared = Path(tempfile.mkdtemp(prefix="async-", dir=work_dir_for(home)))
        shared.chmod(0o777)
        log, gate = shared / "effects.log", shared / "gate"
        deploy(first, tmp_path, "gated", GATED.format(log=str(log), gate=str(gate)))
        ids = [
            httpx.post(
                f"{first.gateway_url}/async-function/gated",
                content=f"c{i}",
                headers={"Content-Type": "text/plain"},
            ).json()["id"]
            for i in range(RUNNER_CONCURRENCY + 4)
        ]
        wait_until(lambda: log.exists() and log.read_text() != "", "a call ran")
        pending = ids[RUNNER_CONCURRENCY:]
        with api_client(first) as api:
            assert [phase_of(api, i) for i in pending] == ["Pending"] * 4
    finally:
        first.stop(signal.SIGKILL)
    ran_before = log.read_text().split()
    gate.touch()

    second = start_daemon(home, log_path=tmp_path / "second.log")
    try:
        with api_client(second) as api:
            wait_until(
                lambda: all(phase_of(api, i) not in ("Pending", "Running") for i in ids),
                "every call finished",
            )
            phases = {i: phase_of(api, i) for i in ids}
        fields, _, code = call_get(second, ids[0])
    finally:
        assert second.stop() == 0
    effects = log.read_text().split()
    assert len(effects) == len(set(effects)), f"a call ran twice: {effects}"
    assert {phases[i] for i in pending} == {"Succeeded"}
    assert {phases[i] for i in ids[:RUNNER_CONCURRENCY]} == {"Interrupted"}
    assert sorted(effects) == sorted([*ran_before, *(f"c{i}" for i in range(16, 20))])
    assert (fields["Phase"], code) == ("Interrupted", 1)
