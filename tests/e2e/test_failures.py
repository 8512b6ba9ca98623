"""A function that misbehaves, and calls that are wrong, through a real daemon and the CLI.

Each failure costs one call an error answer that says what happened (500, 502, 504, 429, 413,
404, with a JSON body from the gateway), never the function's other calls, other functions or
the daemon; a broken instance is replaced and the next call works.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.conftest import Daemon, start_daemon, work_dir_for

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
MAX_QUEUE = 1

# Does what the request body says; with no known word it answers its pod's name.
MISBEHAVING = """\
import os, time

GATES = {gates!r}


def handler(event, context):
    what = event["data"]
    what = what.decode() if isinstance(what, bytes) else what
    if what == "hang":
        open(os.path.join(GATES, "hanging-%d" % os.getpid()), "w").close()
        time.sleep(30)
    if what == "raise":
        raise ValueError("boom")
    if what == "exit":
        os._exit(3)
    if what == "kill":
        os.kill(os.getpid(), 9)
    if what == "eat":
        return str(len(bytearray(512 << 20)))
    return os.environ["POD_NAME"]
"""

# Holds every call until the test opens the gate.
GATED = """\
import os, time

GATES = {gates!r}


def handler(event, context):
    open(os.path.join(GATES, "started-%d" % os.getpid()), "w").close()
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join(GATES, "open")) and time.monotonic() < deadline:
        time.sleep(0.005)
    return "done"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module, with a wait queue of one call per function."""
    home = tmp_path_factory.mktemp("funcmesh-home")
    running = start_daemon(
        home / "home",
        log_path=home / "daemon.log",
        extra_env={"FUNCMESH_MAX_QUEUE": str(MAX_QUEUE)},
    )
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"funcmesh up exited {code} on SIGTERM:\n{running.log_tail()}"


@pytest.fixture
def gates(daemon: Daemon) -> Path:
    """A folder the handler (running as nobody under a root daemon) and the test both write."""
    path = Path(tempfile.mkdtemp(prefix="gates-", dir=work_dir_for(daemon.home)))
    path.chmod(0o777)
    return path


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def deploy(daemon: Daemon, tmp_path: Path, name: str, code: str, *flags: str) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    daemon.run(
        "function", "deploy", name, "--runtime", RUNTIME, "--handler", f"{name}.handler",
        "--from-file", str(path), *flags,
    )  # fmt: skip


def call(daemon: Daemon, name: str, data: str = "") -> httpx.Response:
    return httpx.post(f"{daemon.gateway_url}/function/{name}", content=data, timeout=30)


def pods_of(daemon: Daemon, function: str) -> list[str]:
    names = daemon.run("get", "pods", "-l", f"function={function}", "-o", "name").stdout
    return [line.removeprefix("pod/") for line in names.splitlines()]


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json", response.text
    body = json.loads(response.text)
    assert isinstance(body["error"], str)
    return body["error"]


def test_a_call_past_its_timeout_gets_504_and_nothing_else_waits(
    daemon: Daemon, tmp_path: Path, gates: Path
) -> None:
    deploy(daemon, tmp_path, "sleepy", MISBEHAVING.format(gates=str(gates)), "--timeout", "1")
    deploy(daemon, tmp_path, "steady", MISBEHAVING.format(gates=str(gates)))
    [warm_pod] = pods_of(daemon, "sleepy")

    with ThreadPoolExecutor(2) as callers:
        by_cli = callers.submit(daemon.run, "function", "call", "sleepy", "-d", "hang", check=False)
        by_http = callers.submit(call, daemon, "sleepy", "hang")
        wait_until(lambda: len(list(gates.glob("hanging-*"))) == 2, "both calls hang")
        other_function = call(daemon, "steady")
        assert other_function.status_code == 200
        assert not by_http.done(), "the hung call ended early"
        assert not by_cli.done(), "the hung call ended early"
        hung, cli = by_http.result(), by_cli.result()

    assert hung.status_code == 504
    assert error_of(hung) == (
        "Request timeout exceeded: function default/sleepy did not answer within 1s"
    )
    assert cli.returncode == 1
    assert "Request timeout exceeded" in cli.stderr.splitlines()
    assert cli.stderr.splitlines()[-1] == "error: function sleepy answered 504 Gateway Timeout"

    wait_until(lambda: warm_pod not in pods_of(daemon, "sleepy"), "the hung instance is gone")
    again = call(daemon, "sleepy")
    assert again.status_code == 200
    assert again.text != warm_pod
    assert again.text in pods_of(daemon, "sleepy")


def test_a_handler_that_raises_gets_500_and_its_traceback_is_logged(
    daemon: Daemon, tmp_path: Path, gates: Path
) -> None:
    deploy(daemon, tmp_path, "raiser", MISBEHAVING.format(gates=str(gates)))

    answer = call(daemon, "raiser", "raise")
    cli = daemon.run("function", "call", "raiser", "-d", "raise", check=False)

    assert answer.status_code == 500
    assert answer.text == "ValueError: boom"
    assert cli.returncode == 1
    assert cli.stderr.splitlines()[0] == "ValueError: boom"

    def logged() -> bool:
        logs = daemon.run("function", "logs", "raiser").stdout
        return "Traceback (most recent call last):" in logs and "ValueError: boom" in logs

    wait_until(logged, "the traceback is in the function's log")
    assert call(daemon, "raiser").status_code == 200, "the instance survives an exception"


@pytest.mark.parametrize(
    ("how", "reason"),
    [("exit", "exited with code 3"), ("kill", "killed by signal 9 (SIGKILL)")],
)
def test_an_instance_that_dies_mid_call_gets_502_and_is_replaced(
    daemon: Daemon, tmp_path: Path, gates: Path, how: str, reason: str
) -> None:
    name = f"dies-by-{how}"
    deploy(daemon, tmp_path, name, MISBEHAVING.format(gates=str(gates)))
    [pod] = pods_of(daemon, name)

    answer = call(daemon, name, how)

    assert answer.status_code == 502
    assert error_of(answer) == f"instance {pod} exited during the call: {reason}"
    again = call(daemon, name)
    assert again.status_code == 200
    assert again.text != pod


def test_a_handler_over_its_memory_limit_gets_502_saying_so(
    daemon: Daemon, tmp_path: Path, gates: Path
) -> None:
    deploy(daemon, tmp_path, "glutton", MISBEHAVING.format(gates=str(gates)), "--memory", "64Mi")

    answer = call(daemon, "glutton", "eat")

    assert answer.status_code == 502
    # cgroup v1 (the kernel kills it) or RLIMIT_AS (MemoryError): the same words either way
    assert "memory limit" in answer.text
    assert "(64Mi)" in answer.text
    assert "exceeded" in answer.text
    assert call(daemon, "glutton").status_code == 200


def test_exit_code_3_under_a_memory_limit_is_not_called_a_memory_error(
    daemon: Daemon, tmp_path: Path, gates: Path
) -> None:
    deploy(daemon, tmp_path, "exits", MISBEHAVING.format(gates=str(gates)), "--memory", "256Mi")
    [pod] = pods_of(daemon, "exits")

    answer = call(daemon, "exits", "exit")

    assert error_of(answer) == f"instance {pod} exited during the call: exited with code 3"


def test_a_full_queue_answers_429(daemon: Daemon, tmp_path: Path, gates: Path) -> None:
    manifest = {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": "narrow", "annotations": {"autoscaling.funcmesh.io/max-scale": "1"}},
        "spec": {
            "runtime": RUNTIME,
            "handler": "narrow.handler",
            "function-content-type": "text",
            "function": GATED.format(gates=str(gates)),
        },
    }
    daemon.run("apply", "-f", "-", input=yaml.safe_dump(manifest))

    with ThreadPoolExecutor(3) as callers:
        serving = callers.submit(call, daemon, "narrow")
        wait_until(lambda: any(gates.glob("started-*")), "the first call runs")
        more: list[Future[httpx.Response]] = [
            callers.submit(call, daemon, "narrow") for _ in range(MAX_QUEUE + 1)
        ]
        done, _ = wait(more, timeout=10, return_when=FIRST_COMPLETED)
        [refused] = [future.result() for future in done]
        assert not serving.done()
        (gates / "open").touch()
        answers = [serving.result(), *(future.result() for future in more)]

    assert refused.status_code == 429
    assert error_of(refused) == (
        "function default/narrow is at its limit of 1 instance and 1 call already "
        "waiting; try again later or raise autoscaling.funcmesh.io/max-scale"
    )
    assert sorted(answer.status_code for answer in answers) == [200, 200, 429]
    assert [answer.text for answer in answers if answer.status_code == 200] == ["done", "done"]


def test_a_body_over_10_mib_gets_413(daemon: Daemon, tmp_path: Path, gates: Path) -> None:
    deploy(daemon, tmp_path, "bodies", MISBEHAVING.format(gates=str(gates)))

    too_big = call(daemon, "bodies", "x" * (10 * 1024 * 1024 + 1))

    assert too_big.status_code == 413
    assert error_of(too_big) == "the request body is larger than the limit of 10485760 bytes"
    assert call(daemon, "bodies", "x" * (1024 * 1024)).status_code == 200


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/function/ghost", "function default/ghost not found"),
        ("/function/ghost.nowhere", "function nowhere/ghost not found"),
        ("/nothing-here", "no route for /nothing-here: call a function at /function/NAME"),
    ],
)
def test_unknown_functions_get_404(daemon: Daemon, path: str, message: str) -> None:
    answer = httpx.get(f"{daemon.gateway_url}{path}")

    assert answer.status_code == 404
    assert error_of(answer).startswith(message)


def test_a_syntax_error_fails_the_deploy_and_every_call_says_why(
    daemon: Daemon, tmp_path: Path
) -> None:
    code = tmp_path / "broken.py"
    code.write_text("def handler(event, context)\n    return 'never'\n")
    expected = "SyntaxError: expected ':' (broken.py, line 1)"

    deployed = daemon.run(
        "function", "deploy", "broken", "--runtime", RUNTIME, "--handler", "broken.handler",
        "--from-file", str(code), check=False,
    )  # fmt: skip

    assert deployed.returncode == 1
    assert deployed.stderr == f"error: function broken failed: LoadFailed: {expected}\n"
    [row] = daemon.run("function", "ls", "broken").stdout.splitlines()[1:]
    assert row.split(maxsplit=4)[4] == f"LoadFailed: {expected}"
    status = json.loads(daemon.run("get", "function", "broken", "-o", "json").stdout)["status"]
    [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "LoadFailed", expected)

    answer = call(daemon, "broken")
    assert answer.status_code == 500
    assert answer.text == expected
    assert os.path.basename(str(code)) in answer.text
