"""What the daemon tells a Node.js spare, and the copy of the shim that workers read."""

from __future__ import annotations

import stat
from pathlib import Path

from funcmesh.runtime.node import specialisation
from funcmesh.runtime.node_processes import SHIM_MODULES, SHIM_PATH, install_shim
from funcmesh.runtime.workers import SpawnRequest


def test_specialisation_carries_what_the_shim_loads() -> None:
    request = SpawnRequest(
        pod_name="hello-abc",
        module="hello",
        function="foo",
        function_name="hello",
        code_dir="/code/123",
        sys_paths=("/deps/456/node_modules",),
        env={"POD_NAME": "hello-abc"},
        timeout_s=30.0,
        runtime="nodejs20",
        memory_limit="128Mi",
        uid=65534,
    )

    assert specialisation(request) == {
        "op": "specialise",
        "pod_name": "hello-abc",
        "env": {"POD_NAME": "hello-abc"},
        "code_dir": "/code/123",
        "node_paths": ["/deps/456/node_modules"],
        "module": "hello",
        "handler": "foo",
        "function_name": "hello",
        "timeout_s": 30.0,
        "runtime": "nodejs20",
        "memory_limit": "128Mi",
    }


def test_secrets_win_over_service_variables_and_the_requests_env_over_both() -> None:
    request = SpawnRequest(
        pod_name="hello-abc",
        namespace="team",
        module="hello",
        function="foo",
        function_name="hello",
        code_dir="/code/123",
        sys_paths=(),
        env={"POD_NAME": "hello-abc", "TOKEN": "from-the-request"},
        service_links={"WEB_SERVICE_HOST": "127.96.0.5", "MODE": "link", "TOKEN": "link"},
        timeout_s=30.0,
        runtime="nodejs20",
        memory_limit="0",
    )

    env = specialisation(request, secret_env=[("MODE", "secret"), ("TOKEN", "secret")])["env"]

    assert env == {
        "WEB_SERVICE_HOST": "127.96.0.5",
        "MODE": "secret",
        "TOKEN": "from-the-request",
        "POD_NAME": "hello-abc",
    }


def test_the_shim_copy_is_readable_by_all_and_follows_the_package(tmp_path: Path) -> None:
    target = install_shim(tmp_path / "runtime")

    assert target.read_bytes() == SHIM_PATH.read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o755
    target.write_text("// an older version")
    assert install_shim(tmp_path / "runtime").read_bytes() == SHIM_PATH.read_bytes()
    names = sorted(p.name for p in target.parent.iterdir())  # no staging debris
    assert names == sorted([target.name, *(module.name for module in SHIM_MODULES)])
    for module in SHIM_MODULES:  # what the shim requires from its own directory is beside it
        assert (target.parent / module.name).read_bytes() == module.read_bytes()
