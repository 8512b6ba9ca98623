"""Argument handling of the CLI, without a server: errors come before any request."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from funcmesh.cli.main import cli


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "hello.py").write_text('def handler(event, context):\n    return "hello world"\n')
    return tmp_path


def run(home: Path, *args: str, stdin: str | None = None) -> Result:
    env = {"HOME": str(home), "KUBECONFIG": None, "FUNCMESH_HOME": None}
    return CliRunner(env=env).invoke(cli, list(args), input=stdin)


def deploy_args(home: Path, *extra: str) -> list[str]:
    return [
        "function",
        "deploy",
        "hello",
        "--runtime",
        "python3.11",
        "--handler",
        "hello.handler",
        "--from-file",
        str(home / "hello.py"),
        *extra,
    ]


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("--runtime", "error: --runtime is required"),
        ("--handler", "error: --handler is required"),
        ("--from-file", "error: --from-file is required"),
    ],
)
def test_deploy_requires_runtime_handler_and_code(home: Path, drop: str, message: str) -> None:
    args = deploy_args(home)
    index = args.index(drop)
    result = run(home, *args[:index], *args[index + 2 :])
    assert result.exit_code == 1
    assert result.stderr.startswith(message)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--handler", "hello"], 'error: --handler "hello" must be module_name.handler_name'),
        (["--from-file", "missing.py"], "error: --from-file missing.py: no such file"),
        (["--timeout", "soon"], 'error: --timeout "soon" is not a duration'),
        (["--schedule", "* * * *"], 'error: Invalid value for --schedule: schedule "* * * *"'),
    ],
)
def test_bad_deploy_flags_give_one_error_line(home: Path, extra: list[str], message: str) -> None:
    result = run(home, *deploy_args(home, *extra))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(message)


def test_dryrun_prints_the_function_and_global_options_work_after_the_command(home: Path) -> None:
    result = run(home, *deploy_args(home, "--dryrun", "-n", "team-a", "-e", "A=1"))
    assert result.exit_code == 0, result.output
    obj = yaml.safe_load(result.stdout)
    assert obj["metadata"]["namespace"] == "team-a"
    assert obj["spec"]["handler"] == "hello.handler"
    assert 'return "hello world"' in obj["spec"]["function"]


def test_namespace_before_the_command_works_too(home: Path) -> None:
    result = run(home, "-n", "team-b", *deploy_args(home, "--dryrun", "-o", "json"))
    assert result.exit_code == 0, result.output
    assert '"namespace": "team-b"' in result.stdout


def test_commands_that_need_the_api_explain_the_missing_kubeconfig(home: Path) -> None:
    result = run(home, "function", "ls")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: no kubeconfig at ~/.funcmesh/kubeconfig: start the daemon with funcmesh up "
        "(or pass --kubeconfig)\n"
    )


def test_unknown_option_is_a_usage_error(home: Path) -> None:
    result = run(home, "function", "ls", "--bogus")
    assert result.exit_code == 2
    assert "No such option '--bogus'" in result.stderr


def test_data_and_data_file_are_exclusive(home: Path) -> None:
    result = run(home, "function", "call", "hello", "--data", "x", "--data-file", "f")
    assert result.exit_code == 2
    assert "either --data or --data-file" in result.stderr


def test_unknown_kind(home: Path) -> None:
    result = run(home, "get", "widgets")
    assert result.exit_code == 1
    assert result.stderr == 'error: the server doesn\'t have a resource type "widgets"\n'


def test_apply_with_invalid_yaml_stops_before_any_request(home: Path) -> None:
    result = run(home, "apply", "-f", "-", stdin="apiVersion: v1\nkind: [\n")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: <stdin>: invalid YAML or JSON:")
    assert len(result.stderr.splitlines()) == 1


def test_apply_of_an_unknown_kind_stops_before_any_request(home: Path) -> None:
    manifest = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n"
    result = run(home, "apply", "-f", "-", stdin=manifest)
    assert result.exit_code == 1
    assert result.stderr == 'error: no kind "Widget" is registered for version "example.com/v1"\n'


def test_delete_needs_files_or_a_kind(home: Path) -> None:
    result = run(home, "delete")
    assert result.exit_code == 2
    assert "give either -f FILE or KIND NAME" in result.stderr
