"""``apply``, ``get`` and ``delete`` with manifests, kubectl style, against a real daemon."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Protocol

import yaml

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"


class Daemon(Protocol):
    """What these tests use of the ``daemon`` fixture (tests/e2e/conftest.py)."""

    home: Path

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


CODE = 'def handler(event, context):\n    return "from apply"\n'


def function_manifest(
    name: str, *, namespace: str | None = None, timeout: str = "180"
) -> dict[str, object]:
    metadata: dict[str, object] = {"name": name, "labels": {"app": "applied"}}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": metadata,
        "spec": {
            "runtime": RUNTIME,
            "handler": "mod.handler",
            "function": CODE,
            "function-content-type": "text",
            "checksum": "sha256:" + hashlib.sha256(CODE.encode()).hexdigest(),
            "timeout": timeout,
            "deps": "",
        },
    }


def write_manifests(path: Path, *objects: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return path


def test_apply_get_and_delete_a_multi_document_file(daemon: Daemon, tmp_path: Path) -> None:
    manifests = write_manifests(
        tmp_path / "functions.yaml", function_manifest("alpha"), function_manifest("beta")
    )
    created = daemon.run("apply", "-f", str(manifests))
    assert created.stdout.splitlines() == [
        "function.kubeless.io/alpha created",
        "function.kubeless.io/beta created",
    ]

    again = daemon.run("apply", "-f", str(manifests))
    assert again.stdout.splitlines() == [
        "function.kubeless.io/alpha unchanged",
        "function.kubeless.io/beta unchanged",
    ]

    write_manifests(manifests, function_manifest("alpha", timeout="20"), function_manifest("beta"))
    changed = daemon.run("apply", "-f", str(manifests))
    assert changed.stdout.splitlines() == [
        "function.kubeless.io/alpha configured",
        "function.kubeless.io/beta unchanged",
    ]
    alpha = yaml.safe_load(daemon.run("get", "function", "alpha", "-o", "yaml").stdout)
    assert (alpha["kind"], alpha["spec"]["timeout"]) == ("Function", "20")

    names = daemon.run("get", "functions", "-l", "app=applied", "-o", "name").stdout.splitlines()
    assert names == ["function.kubeless.io/alpha", "function.kubeless.io/beta"]

    table = daemon.run("get", "functions.kubeless.io", "alpha", "beta").stdout.splitlines()
    assert table[0].split()[0] == "NAME"
    assert [line.split()[0] for line in table[1:]] == ["alpha", "beta"]

    deleted = daemon.run("delete", "-f", str(manifests))
    assert deleted.stdout.splitlines() == [
        'function.kubeless.io "alpha" deleted',
        'function.kubeless.io "beta" deleted',
    ]

    missing = daemon.run("delete", "-f", str(manifests), check=False)
    assert missing.returncode == 1
    assert missing.stdout == ""
    errors = missing.stderr.splitlines()
    assert len(errors) == 2
    assert all(line.startswith("error: ") and "not found" in line for line in errors)


def test_apply_from_stdin_into_a_new_namespace(daemon: Daemon) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
    text = yaml.safe_dump_all([namespace, function_manifest("gamma", namespace="team-a")])
    result = daemon.run("apply", "-f", "-", input=text)
    assert result.stdout.splitlines() == [
        "namespace/team-a created",
        "function.kubeless.io/gamma created",
    ]

    namespaces = daemon.run("get", "ns").stdout.splitlines()
    assert {"default", "team-a"} <= {line.split()[0] for line in namespaces[1:]}

    everywhere = daemon.run("get", "functions", "-A").stdout.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert ["team-a", "gamma"] in [line.split()[:2] for line in everywhere[1:]]

    listed = json.loads(daemon.run("function", "ls", "-n", "team-a", "-o", "json").stdout)
    assert [item["metadata"]["name"] for item in listed["items"]] == ["gamma"]

    daemon.run("delete", "functions", "gamma", "-n", "team-a")


def test_empty_namespace_says_so(daemon: Daemon) -> None:
    result = daemon.run("get", "functions", "-n", "nobody-here")
    assert result.stdout == ""
    assert result.stderr == "No resources found in nobody-here namespace.\n"
