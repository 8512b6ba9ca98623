"""Secrets for functions through a real ``funcmesh up``: ``function deploy --secrets NAME`` gives
the function the Secret's keys as files at ``/NAME/KEY`` (the daemon runs as root here: each
worker gets a private mount namespace) and under ``$FUNCMESH_SECRETS_DIR``, as Kubeless's
get-python-secrets test expects; env from ``secretKeyRef``; a missing Secret answers 503 until it
is created; a changed Secret is served at once; values never show in logs or ``describe``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import Daemon

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
ROOT = os.geteuid() == 0

# Kubeless's get-python-secrets, plus the same file under $FUNCMESH_SECRETS_DIR and an env value.
PYTHON_READER = """\
import os

def handler(event, context):
    name = os.environ["SECRET_NAME"]
    directory = os.environ["FUNCMESH_SECRETS_DIR"]
    with open(os.path.join(directory, name, "key")) as handle:
        in_dir = handle.read()
    try:
        with open("/" + name + "/key") as handle:
            mounted = handle.read()
    except OSError as exc:
        mounted = exc.strerror
    return {"mounted": mounted, "in_dir": in_dir, "env": os.environ.get("TOKEN")}
"""
NODE_READER = """\
const fs = require('fs');
const path = require('path');
module.exports = {
  handler: () => {
    const name = process.env.SECRET_NAME;
    return {
      mounted: fs.readFileSync('/' + name + '/key', 'utf8'),
      in_dir: fs.readFileSync(path.join(process.env.FUNCMESH_SECRETS_DIR, name, 'key'), 'utf8'),
      uid: process.getuid(),
    };
  },
};
"""


def unique(prefix: str) -> str:
    """Names of their own: the mount point /NAME is on the machine, shared by every daemon."""
    return f"{prefix}-{secrets.token_hex(3)}"


def deploy(
    daemon: Daemon, tmp_path: Path, name: str, code: str, *flags: str, runtime: str = RUNTIME
) -> None:
    suffix = ".js" if runtime.startswith("nodejs") else ".py"
    path = tmp_path / f"reader{suffix}"
    path.write_text(code)
    daemon.run(
        *("function", "deploy", name, "--runtime", runtime, "--handler", "reader.handler"),
        *("--from-file", str(path), "--wait-timeout", "60s", *flags),
    )


def call(daemon: Daemon, name: str) -> httpx.Response:
    return httpx.get(f"{daemon.gateway_url}/function/{name}", timeout=30, trust_env=False)


def eventually(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """``check()``'s first truthy result, polled until the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s}s"
        time.sleep(0.1)


def apply_secret(daemon: Daemon, tmp_path: Path, name: str, value: str) -> None:
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name},
                "stringData": {"key": value},
            }
        )
    )
    daemon.run("apply", "-f", str(manifest))


def status_of(daemon: Daemon, name: str) -> str:
    """``Ready``, or ``<reason>: <message>`` of the Ready condition of the latest generation."""
    obj = json.loads(daemon.run("get", "function", name, "-o", "json").stdout)
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return "Deploying"
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    if ready is None or ready["status"] == "True":
        return "Ready" if ready else "Deploying"
    return f"{ready['reason']}: {ready['message']}"


def assert_never_shown(daemon: Daemon, name: str, *values: str) -> None:
    shown = [
        daemon.run("function", "logs", name).stdout,
        daemon.run("function", "describe", name).stdout,
        daemon.run("function", "describe", name, "-o", "yaml").stdout,
        daemon.run("get", "events").stdout,
        daemon.log_path.read_text(errors="replace"),
    ]
    for value in values:
        assert not [text for text in shown if value in text]


@pytest.mark.skipif(not ROOT, reason="mounting at /NAME needs a root daemon")
def test_get_python_secrets(daemon: Daemon, tmp_path: Path) -> None:
    secret, value = unique("test-secret"), f"MY_KEY-{secrets.token_hex(8)}"
    daemon.run("create", "secret", "generic", secret, "--from-literal", f"key={value}")
    deploy(daemon, tmp_path, "get-python-secrets", PYTHON_READER, "--secrets", secret)
    daemon.run("function", "update", "get-python-secrets", "--env", f"SECRET_NAME={secret}")
    response = call(daemon, "get-python-secrets")
    assert response.status_code == 200, response.text
    assert response.json() == {"mounted": value, "in_dir": value, "env": None}
    # the machine's /NAME is an empty mount point: the files are in the worker's namespace only
    assert Path(f"/{secret}").is_dir()
    assert list(Path(f"/{secret}").iterdir()) == []
    describe = daemon.run("function", "describe", "get-python-secrets").stdout
    assert f"Secrets:       {secret} at /{secret}" in describe.splitlines()
    assert_never_shown(daemon, "get-python-secrets", value)

    daemon.run("function", "delete", "get-python-secrets")
    eventually(lambda: not Path(f"/{secret}").exists(), f"/{secret} to be removed")


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
@pytest.mark.skipif(not ROOT, reason="mounting at /NAME needs a root daemon")
def test_a_node_function_reads_its_secret(daemon: Daemon, tmp_path: Path) -> None:
    config = daemon.run("get-server-config").stdout.splitlines()[1]
    [runtime] = [r for r in config.split(": ", 1)[1].split(", ") if r.startswith("nodejs")]
    secret, value = unique("node-secret"), f"NODE_KEY-{secrets.token_hex(8)}"
    daemon.run("create", "secret", "generic", secret, "--from-literal", f"key={value}")
    deploy(
        daemon,
        tmp_path,
        "node-secrets",
        NODE_READER,
        *("--secrets", secret, "--env", f"SECRET_NAME={secret}"),
        runtime=runtime,
    )
    response = call(daemon, "node-secrets")
    assert response.status_code == 200, response.text
    assert response.json() == {"mounted": value, "in_dir": value, "uid": 65534}
    assert_never_shown(daemon, "node-secrets", value)
    daemon.run("function", "delete", "node-secrets")


def test_a_missing_secret_answers_503_until_it_is_created(daemon: Daemon, tmp_path: Path) -> None:
    secret = unique("later")
    deploy_flags = ("--secrets", secret, "--env", f"SECRET_NAME={secret}", "--no-wait")
    deploy(daemon, tmp_path, "waits-for-secret", PYTHON_READER, *deploy_flags)
    status = eventually(
        lambda: (s := status_of(daemon, "waits-for-secret")).startswith("SecretMissing") and s,
        "SecretMissing",
    )
    assert f'Secret "{secret}" not found in namespace default' in status
    response = call(daemon, "waits-for-secret")
    assert response.status_code == 503
    assert f'SecretMissing: Secret \\"{secret}\\" not found' in response.text
    events = daemon.run("get", "events").stdout
    assert "SecretMissing" in events

    value = f"LATE-{secrets.token_hex(8)}"
    apply_secret(daemon, tmp_path, secret, value)
    eventually(lambda: status_of(daemon, "waits-for-secret") == "Ready", "Ready")
    answer = call(daemon, "waits-for-secret").json()
    assert answer["in_dir"] == value
    daemon.run("function", "delete", "waits-for-secret")


def test_a_changed_secret_is_served_by_new_instances(daemon: Daemon, tmp_path: Path) -> None:
    secret, first, second = unique("rotating"), secrets.token_hex(8), secrets.token_hex(8)
    apply_secret(daemon, tmp_path, secret, first)
    deploy(
        daemon,
        tmp_path,
        "rotates",
        PYTHON_READER,
        *("--secrets", secret, "--env", f"SECRET_NAME={secret}"),
    )
    assert call(daemon, "rotates").json()["in_dir"] == first
    apply_secret(daemon, tmp_path, secret, second)
    eventually(lambda: call(daemon, "rotates").json()["in_dir"] == second, "the new value")
    assert_never_shown(daemon, "rotates", first, second)
    daemon.run("function", "delete", "rotates")


def test_env_from_a_secret_key_as_kubectl_apply_writes_it(daemon: Daemon, tmp_path: Path) -> None:
    secret, token, value = unique("api"), f"T-{secrets.token_hex(8)}", secrets.token_hex(8)
    daemon.run(
        *("create", "secret", "generic", secret),
        *("--from-literal", f"token={token}", "--from-literal", f"key={value}"),
    )
    path = tmp_path / "reader.py"
    path.write_text(PYTHON_READER)
    manifest = yaml.safe_load(
        daemon.run(
            *("function", "deploy", "env-secret", "--runtime", RUNTIME, "--handler"),
            *("reader.handler", "--from-file", str(path), "--secrets", secret, "--dryrun"),
        ).stdout
    )
    container = manifest["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [
        {"name": "SECRET_NAME", "value": secret},
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}},
    ]
    (tmp_path / "function.yaml").write_text(yaml.safe_dump(manifest))
    daemon.run("apply", "-f", str(tmp_path / "function.yaml"))
    eventually(lambda: status_of(daemon, "env-secret") == "Ready", "Ready")
    answer = call(daemon, "env-secret").json()
    assert (answer["env"], answer["in_dir"]) == (token, value)
    assert_never_shown(daemon, "env-secret", token, value)
    daemon.run("function", "delete", "env-secret")


def test_bad_secret_mounts_are_refused_with_the_field(daemon: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "reader.py"
    path.write_text(PYTHON_READER)
    manifest = yaml.safe_load(
        daemon.run(
            *("function", "deploy", "bad-mount", "--runtime", RUNTIME, "--handler"),
            *("reader.handler", "--from-file", str(path), "--secrets", "s", "--dryrun"),
        ).stdout
    )
    container = manifest["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"][0]["mountPath"] = "relative/path"
    (tmp_path / "function.yaml").write_text(yaml.safe_dump(manifest))
    result = daemon.run("apply", "-f", str(tmp_path / "function.yaml"), check=False)
    assert result.returncode != 0
    assert "volumeMounts[0].mountPath" in result.stderr
    assert "must be an absolute path" in result.stderr
    assert daemon.run("function", "ls", "bad-mount", check=False).returncode != 0


@pytest.mark.skipif(not ROOT, reason="mount points are only made by a root daemon")
def test_a_mount_path_in_use_is_refused_not_hidden(daemon: Daemon, tmp_path: Path) -> None:
    secret = unique("etc")
    daemon.run("create", "secret", "generic", secret, "--from-literal", "key=v")
    path = tmp_path / "reader.py"
    path.write_text(PYTHON_READER)
    manifest = yaml.safe_load(
        daemon.run(
            *("function", "deploy", "hides-etc", "--runtime", RUNTIME, "--handler"),
            *("reader.handler", "--from-file", str(path), "--secrets", secret, "--dryrun"),
        ).stdout
    )
    container = manifest["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"][0]["mountPath"] = "/etc"
    (tmp_path / "function.yaml").write_text(yaml.safe_dump(manifest))
    before = sorted(os.listdir("/etc"))
    daemon.run("apply", "-f", str(tmp_path / "function.yaml"))
    status = eventually(
        lambda: (s := status_of(daemon, "hides-etc")).startswith("SecretMountRefused") and s,
        "SecretMountRefused",
    )
    assert "mountPath /etc is a directory that is not empty" in status
    response = call(daemon, "hides-etc")
    assert response.status_code == 503
    assert "mountPath /etc" in json.loads(response.text)["error"]
    assert sorted(os.listdir("/etc")) == before
    daemon.run("function", "delete", "hides-etc")
