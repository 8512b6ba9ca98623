"""The function commands as a user runs them against a real ``funcmesh up``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Protocol


class Daemon(Protocol):
    """What these tests use of the ``daemon`` fixture (tests/e2e/conftest.py)."""

    home: Path

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
HELLO = 'def handler(event, context):\n    print("hello was called")\n    return "hello world"\n'
ECHO = 'def handler(event, context):\n    return event["data"]\n'
LIST_HEADERS = ["NAME", "NAMESPACE", "HANDLER", "RUNTIME", "DEPENDENCIES", "STATUS"]


def deploy(daemon: Daemon, tmp_path: Path, name: str, code: str, *flags: str) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    result = daemon.run(
        "function",
        "deploy",
        name,
        "--runtime",
        RUNTIME,
        "--handler",
        f"{name}.handler",
        "--from-file",
        str(path),
        *flags,
    )
    assert result.stdout.splitlines() == [
        f"Deploying function {name}...",
        f"Function {name} submitted for deployment",
        f"Function {name} is ready",
    ]


def test_deploy_list_call_logs_describe(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "hello", HELLO)

    header, *rows = daemon.run("function", "ls").stdout.splitlines()
    assert header.split() == LIST_HEADERS
    assert ["hello", "default", "hello.handler", RUNTIME, "Ready"] in [row.split() for row in rows]

    assert daemon.run("function", "call", "hello").stdout == "hello world\n"

    logs = daemon.run("function", "logs", "hello").stdout
    assert "hello was called" in logs

    describe = daemon.run("function", "describe", "hello").stdout.splitlines()
    assert "Name:          hello" in describe
    assert f"Runtime:       {RUNTIME}" in describe
    assert "Status:        Ready" in describe
    assert "Timeout:       180" in describe

    top = json.loads(daemon.run("function", "top", "-o", "json").stdout)
    [record] = [r for r in top if r["function"] == "hello"]
    assert record["calls"] >= 1


def test_call_sends_json_values_as_json_and_text_as_text(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "echo", ECHO)
    obj = daemon.run("function", "call", "echo", "--data", '{"hello": "world"}').stdout
    assert json.loads(obj) == {"hello": "world"}
    array = daemon.run("function", "call", "echo", "--data", "[1, 2, 3]").stdout
    assert json.loads(array) == [1, 2, 3]
    assert daemon.run("function", "call", "echo", "--data", "plain words").stdout == "plain words\n"


def test_update_changes_only_what_is_given(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "tuned", HELLO, "--timeout", "45", "--memory", "64Mi", "-e", "A=1")
    before = json.loads(daemon.run("get", "functions", "tuned", "-o", "json").stdout)

    result = daemon.run("function", "update", "tuned", "--timeout", "30")
    assert result.stdout.splitlines() == [
        "Redeploying function tuned...",
        "Function tuned submitted for deployment",
        "Function tuned is ready",
    ]

    after = json.loads(daemon.run("get", "functions", "tuned", "-o", "json").stdout)
    assert after["spec"]["timeout"] == "30"
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    unchanged = {**before["spec"], "timeout": "30"}
    assert after["spec"] == unchanged
    assert daemon.run("function", "call", "tuned").stdout == "hello world\n"


def test_delete(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "doomed", HELLO)
    result = daemon.run("function", "delete", "doomed")
    assert result.stdout == 'function.kubeless.io "doomed" deleted\n'

    listed = daemon.run("function", "ls", "doomed", check=False)
    assert listed.returncode == 1
    assert listed.stderr == 'error: function "doomed" not found in namespace "default"\n'

    called = daemon.run("function", "call", "doomed", check=False)
    assert called.returncode == 1
    assert called.stderr.splitlines()[-1].startswith("error: function doomed answered 404")


def test_build_failure_is_reported_with_its_reason(daemon: Daemon, tmp_path: Path) -> None:
    code = tmp_path / "broken.py"
    code.write_text(HELLO)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("this is not a requirement !!\n")
    result = daemon.run(
        "function",
        "deploy",
        "broken",
        "--runtime",
        RUNTIME,
        "--handler",
        "broken.handler",
        "--from-file",
        str(code),
        "--dependencies",
        str(requirements),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: function broken failed: BuildFailed")


def test_server_config_and_version(daemon: Daemon) -> None:
    config = daemon.run("get-server-config").stdout.splitlines()
    assert config[0] == "Current Server Config:"
    assert config[1].startswith("Supported Runtimes are: ")
    assert RUNTIME in config[1].removeprefix("Supported Runtimes are: ").split(", ")

    version = daemon.run("version").stdout.splitlines()
    assert version[0].startswith("Client Version: ")
    assert version[1].startswith("Server Version: ")


def test_get_takes_kind_slash_name_and_several_kinds(daemon: Daemon, tmp_path: Path) -> None:
    deploy(daemon, tmp_path, "named", HELLO)
    named = daemon.run("get", "function/named", "service/named", "-o", "name").stdout
    assert named.splitlines() == ["function.kubeless.io/named", "service/named"]

    tables = daemon.run("get", "functions,services").stdout
    functions, services = tables.split("\n\n")
    assert functions.splitlines()[0].split()[:2] == ["NAME", "RUNTIME"]
    assert services.splitlines()[0].split()[:3] == ["NAME", "TYPE", "CLUSTER-IP"]
    assert "named" in [line.split()[0] for line in services.splitlines()[1:]]
