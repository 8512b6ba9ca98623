"""``--secrets`` on deploy and update, and what ``function describe`` shows of Secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from funcmesh.cli.function_flags import (
    FunctionFlags,
    apply_merge_patch,
    build_function,
    build_update_patch,
    check_flags,
    parse_names,
)
from funcmesh.cli.function_views import describe_text
from funcmesh.cli.main import cli
from funcmesh.cli.sources import FunctionSource
from funcmesh.errors import Invalid
from funcmesh.model.function import parse_function
from funcmesh.model.function_secrets import SecretMount

SOURCE = FunctionSource(content="x = 1\n", content_type="text", checksum="")


def deployed(**flags: Any) -> dict[str, Any]:
    base = FunctionFlags(runtime="python3.11", handler="hello.handler", source=SOURCE)
    obj = build_function(
        name="hello", namespace="default", flags=FunctionFlags(**{**_fields(base), **flags})
    )
    obj["metadata"] |= {"resourceVersion": "7", "generation": 1}
    return obj


def _fields(flags: FunctionFlags) -> dict[str, Any]:
    return {name: getattr(flags, name) for name in FunctionFlags.__dataclass_fields__}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize(
    ("values", "names"),
    [
        (["a"], ("a",)),
        (["a,b", "c"], ("a", "b", "c")),
        (["a, b", "a"], ("a", "b")),
        ([""], ()),
    ],
)
def test_secrets_are_repeatable_and_comma_separated(
    values: list[str], names: tuple[str, ...]
) -> None:
    assert parse_names(values) == names


def test_deploy_writes_what_kubeless_writes() -> None:
    obj = deployed(secrets=("test-secret",))
    assert pod_spec(obj)["volumes"] == [
        {"name": "test-secret-vol", "secret": {"secretName": "test-secret"}}
    ]
    assert pod_spec(obj)["containers"][0]["volumeMounts"] == [
        {"name": "test-secret-vol", "mountPath": "/test-secret"}
    ]
    assert parse_function(obj).secrets == (
        SecretMount(secret="test-secret", mount_path="/test-secret", volume="test-secret-vol"),
    )


def test_deploy_without_secrets_has_no_volumes() -> None:
    obj = deployed()
    assert "volumes" not in pod_spec(obj)
    assert "volumeMounts" not in pod_spec(obj)["containers"][0]


def test_a_bad_secret_name_is_refused_before_any_request() -> None:
    with pytest.raises(Invalid, match="--secrets: Secret name"):
        check_flags("hello", FunctionFlags(secrets=("Bad_Name",)))


def test_update_replaces_the_secrets_when_given() -> None:
    current = deployed(secrets=("a", "b"), env=(("X", "1"),))
    patch = build_update_patch(current, FunctionFlags(secrets=("c",)))
    result = apply_merge_patch(current, patch)
    assert pod_spec(result)["volumes"] == [{"name": "c-vol", "secret": {"secretName": "c"}}]
    container = pod_spec(result)["containers"][0]
    assert container["volumeMounts"] == [{"name": "c-vol", "mountPath": "/c"}]
    assert container["env"] == [{"name": "X", "value": "1"}]
    assert [m.secret for m in parse_function(result).secrets] == ["c"]


def test_update_keeps_the_secrets_when_not_given() -> None:
    current = deployed(secrets=("a",))
    result = apply_merge_patch(current, build_update_patch(current, FunctionFlags(env=())))
    assert [m.secret for m in parse_function(result).secrets] == ["a"]
    result = apply_merge_patch(current, build_update_patch(current, FunctionFlags(timeout="9")))
    assert [m.secret for m in parse_function(result).secrets] == ["a"]


def test_update_with_an_empty_list_removes_them() -> None:
    current = deployed(secrets=("a",))
    result = apply_merge_patch(current, build_update_patch(current, FunctionFlags(secrets=())))
    assert "volumes" not in pod_spec(result)
    assert "volumeMounts" not in pod_spec(result)["containers"][0]
    assert parse_function(result).secrets == ()


def test_update_replaces_secret_volumes_of_any_name_and_keeps_env_from_secrets() -> None:
    """YAML written by hand: a secret volume not named NAME-vol, env from a Secret key."""
    current = deployed()
    pod_spec(current)["volumes"] = [{"name": "creds", "secret": {"secretName": "db"}}]
    container = pod_spec(current)["containers"][0]
    container["volumeMounts"] = [{"name": "creds", "mountPath": "/etc/db"}]
    container["env"] = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "t"}}}]
    patch = build_update_patch(current, FunctionFlags(secrets=("api",), env=(("A", "1"),)))
    result = apply_merge_patch(current, patch)
    spec = parse_function(result)
    assert [(m.secret, m.mount_path) for m in spec.secrets] == [("api", "/api")]
    assert spec.env == (("A", "1"),)
    assert [(r.env, r.secret) for r in spec.secret_env] == [("T", "db")]


def test_describe_names_the_mounted_secrets_and_never_a_value() -> None:
    obj = deployed(secrets=("db", "api"))
    obj["status"] = {"observedGeneration": 1, "conditions": []}
    lines = describe_text(obj, instances=0).splitlines()
    start = lines.index("Secrets:       db at /db")
    assert lines[start + 1] == "               api at /api"


def test_deploy_dryrun_prints_the_secret_volume(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text("def handler(event, context):\n    return 1\n")
    args = [
        *("function", "deploy", "hello", "--runtime", "python3.11", "--handler"),
        *("hello.handler", "--from-file", str(tmp_path / "hello.py")),
        *("--secrets", "s1,s2", "--secrets", "s3", "--dryrun"),
    ]
    env = {"HOME": str(tmp_path), "KUBECONFIG": None, "FUNCMESH_HOME": None}
    result = CliRunner(env=env).invoke(cli, args)
    assert result.exit_code == 0, result.output
    obj = yaml.safe_load(result.output)
    assert [v["secret"]["secretName"] for v in pod_spec(obj)["volumes"]] == ["s1", "s2", "s3"]
    mounts = pod_spec(obj)["containers"][0]["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == ["/s1", "/s2", "/s3"]
