"""``run``, ``scale`` and ``exec`` without a daemon: what they build and how they fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from funcmesh.cli.exec import _run, pod_environment, pod_working_dir
from funcmesh.cli.run import build_deployment, parse_env, parse_labels, split_command
from funcmesh.errors import Invalid, Unavailable
from funcmesh.model.deployments import admit_deployment


def test_run_builds_a_deployment_that_admission_accepts() -> None:
    deployment = build_deployment(
        "web",
        namespace="team",
        command=split_command("python3 -m http.server '$(PORT)' --bind $(HOST)"),
        replicas=2,
        port=8000,
        labels={"run": "web"},
        env=parse_env(["GREETING=hello world", "EMPTY="]),
        image=None,
    )
    admitted = admit_deployment(deployment, None)
    spec = admitted["spec"]
    assert admitted["metadata"] == {"name": "web", "namespace": "team", "labels": {"run": "web"}}
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {"run": "web"}}
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["python3", "-m", "http.server", "$(PORT)", "--bind", "$(HOST)"]
    assert container["ports"] == [{"containerPort": 8000, "protocol": "TCP"}]
    assert container["env"] == [
        {"name": "GREETING", "value": "hello world"},
        {"name": "EMPTY", "value": ""},
    ]


def test_labels() -> None:
    assert parse_labels("app=web, tier=front") == {"app": "web", "tier": "front"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: split_command("echo 'unclosed"), "No closing quotation"),
        (lambda: split_command("   "), "--command is empty"),
        (lambda: parse_labels("app"), "--labels needs KEY=VALUE"),
        (lambda: parse_env(["NOVALUE"]), "--env needs KEY=VALUE"),
    ],
)
def test_bad_flags_say_what_is_wrong(call: object, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        call()  # type: ignore[operator]


def test_exec_takes_the_pods_environment_and_directory(tmp_path: Path) -> None:
    pod = {
        "spec": {
            "containers": [
                {
                    "env": [
                        {"name": "POD_NAME", "value": "web-x"},
                        {"name": "PATH", "value": "/x"},
                    ],
                    "workingDir": str(tmp_path),
                }
            ]
        }
    }
    assert pod_environment(pod) == {"POD_NAME": "web-x", "PATH": "/x"}
    assert pod_working_dir(pod) == str(tmp_path)
    script = "import os, sys; sys.exit(len(os.environ['POD_NAME']) + (os.getcwd() == sys.argv[1]))"
    code = _run(
        [sys.executable, "-c", script, str(tmp_path)], env=pod_environment(pod), cwd=str(tmp_path)
    )
    assert code == 6


def test_exec_reports_a_missing_command_as_kubectl_does(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["no-such-command-here"], env={"PATH": "/usr/bin"}, cwd=None) == 127
    assert 'exec: "no-such-command-here": executable file not found' in capsys.readouterr().err


def test_exec_into_a_pod_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="working directory .* is gone"):
        _run(["true"], env={}, cwd=str(tmp_path / "gone"))


def test_exec_passes_on_death_by_signal() -> None:
    assert _run(["sh", "-c", "kill -TERM $$"], env={"PATH": "/usr/bin:/bin"}, cwd=None) == 143
