"""Mistakes a user makes: each ends with one ``error:`` line, exit code 1, and nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Protocol

import pytest
import yaml

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
HELLO = 'def handler(event, context):\n    return "hello world"\n'


class Daemon(Protocol):
    """What these tests use of the ``daemon`` fixture (tests/e2e/conftest.py)."""

    home: Path

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


@pytest.fixture
def code(tmp_path: Path) -> Path:
    path = tmp_path / "hello.py"
    path.write_text(HELLO)
    return path


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


def assert_no_functions(daemon: Daemon) -> None:
    result = daemon.run("get", "functions", "-o", "name")
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("flags", "fragments"),
    [
        (("--runtime", "python9.9", "--handler", "hello.handler"), ("python9.9", RUNTIME)),
        (("--runtime", RUNTIME, "--handler", "hello"), ('--handler "hello"',)),
        (("--handler", "hello.handler"), ("--runtime is required",)),
    ],
)
def test_bad_deploy_flags(
    daemon: Daemon, code: Path, flags: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    result = daemon.run(
        "function", "deploy", "mistake", "--from-file", str(code), *flags, check=False
    )
    assert result.returncode == 1
    assert_one_error_line(result.stderr, *fragments)
    assert_no_functions(daemon)


def test_missing_code_file(daemon: Daemon, tmp_path: Path) -> None:
    result = daemon.run(
        "function",
        "deploy",
        "mistake",
        "--runtime",
        RUNTIME,
        "--handler",
        "hello.handler",
        "--from-file",
        str(tmp_path / "nope.py"),
        check=False,
    )
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "nope.py: no such file")
    assert_no_functions(daemon)


def test_invalid_yaml(daemon: Daemon, tmp_path: Path) -> None:
    manifest = tmp_path / "broken.yaml"
    manifest.write_text("apiVersion: kubeless.io/v1beta1\nkind: Function\nmetadata: {name: [\n")
    result = daemon.run("apply", "-f", str(manifest), check=False)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "broken.yaml: invalid YAML")
    assert_no_functions(daemon)


def test_second_deploy_of_the_same_name_points_to_update(daemon: Daemon, code: Path) -> None:
    args = ("function", "deploy", "twice", "--runtime", RUNTIME, "--handler", "hello.handler")
    daemon.run(*args, "--from-file", str(code), "--no-wait")
    result = daemon.run(*args, "--from-file", str(code), check=False)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "already exists", "funcmesh function update twice")
    daemon.run("function", "delete", "twice")


def test_unknown_function(daemon: Daemon) -> None:
    result = daemon.run("function", "describe", "ghost", check=False)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "ghost", "not found")


def test_wrong_token_is_explained(daemon: Daemon, tmp_path: Path) -> None:
    config = yaml.safe_load((daemon.home / "kubeconfig").read_text())
    for user in config["users"]:
        user["user"]["token"] = "forged"
    forged = tmp_path / "kubeconfig"
    forged.write_text(yaml.safe_dump(config))
    result = daemon.run("--kubeconfig", str(forged), "function", "ls", check=False)
    assert result.returncode == 1
    assert_one_error_line(result.stderr, "token")


def test_daemon_not_running(daemon: Daemon, tmp_path: Path) -> None:
    result = daemon.run("--server", "https://127.0.0.1:1", "function", "ls", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "error: cannot reach the funcmesh API at https://127.0.0.1:1 (connection refused): "
        "is funcmesh up running?\n"
    )
