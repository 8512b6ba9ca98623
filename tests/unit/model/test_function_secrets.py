"""Secret volumes and env from Secret keys, as Kubeless and Kubernetes write them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.function import parse_function
from funcmesh.model.function_secrets import SecretKeyRef, SecretMount, mount_path_error

POD = "spec.deployment.spec.template.spec"
CONTAINER = f"{POD}.containers[0]"


def function(
    *,
    volumes: Any = None,
    mounts: Any = None,
    env: Any = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": ""}
    if mounts is not None:
        container["volumeMounts"] = mounts
    if env is not None:
        container["env"] = env
    pod: dict[str, Any] = {"containers": [container]}
    if volumes is not None:
        pod["volumes"] = volumes
    return {
        "apiVersion": "kubeless.io/v1beta1",
        "kind": "Function",
        "metadata": {"name": "get-python-secrets", "namespace": "default"},
        "spec": {
            "runtime": "python3.11",
            "handler": "helloget.foo",
            "function": "def foo(event, context):\n    return 'x'\n",
            "deployment": {"spec": {"template": {"spec": pod}}},
        },
    }


# What `kubeless function deploy get-python-secrets --secrets test-secret` writes.
KUBELESS = function(
    volumes=[{"name": "test-secret-vol", "secret": {"secretName": "test-secret"}}],
    mounts=[{"name": "test-secret-vol", "mountPath": "/test-secret"}],
)


def test_kubeless_secret_volume_becomes_a_mount() -> None:
    spec = parse_function(KUBELESS)
    assert spec.secrets == (
        SecretMount(secret="test-secret", mount_path="/test-secret", volume="test-secret-vol"),
    )
    assert spec.secret_env == ()
    assert spec.secret_names == {"test-secret"}


def test_items_optional_and_several_mounts_are_kept_in_order() -> None:
    obj = function(
        volumes=[
            {"name": "a", "secret": {"secretName": "db", "optional": True}},
            {
                "name": "b",
                "secret": {
                    "secretName": "tls",
                    "items": [{"key": "tls.crt", "path": "certs/server.crt"}],
                    "defaultMode": 256,
                },
            },
            {"name": "scratch", "emptyDir": {}},  # defined but not mounted: harmless
        ],
        mounts=[
            {"name": "b", "mountPath": "/etc/tls/", "readOnly": True},
            {"name": "a", "mountPath": "//db"},
        ],
    )
    spec = parse_function(obj)
    assert spec.secrets == (
        SecretMount(
            secret="tls",
            mount_path="/etc/tls",
            volume="b",
            items=(("tls.crt", "certs/server.crt"),),
        ),
        SecretMount(secret="db", mount_path="/db", volume="a", optional=True),
    )


def test_env_from_a_secret_key_is_a_reference_not_a_value() -> None:
    obj = function(
        env=[
            {"name": "PLAIN", "value": "x"},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
            {
                "name": "MAYBE",
                "valueFrom": {"secretKeyRef": {"name": "api", "key": "x", "optional": True}},
            },
        ]
    )
    spec = parse_function(obj)
    assert spec.env == (("PLAIN", "x"),)
    assert spec.secret_env == (
        SecretKeyRef(env="TOKEN", secret="api", key="token"),
        SecretKeyRef(env="MAYBE", secret="api", key="x", optional=True),
    )
    assert spec.secret_names == {"api"}


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        (
            function(mounts=[{"name": "s-vol", "mountPath": "/s"}]),
            f"{CONTAINER}.volumeMounts[0].name",
            f'volume "s-vol" is not defined in {POD}.volumes',
        ),
        (
            function(
                volumes=[{"name": "cache", "emptyDir": {}}],
                mounts=[{"name": "cache", "mountPath": "/cache"}],
            ),
            f"{CONTAINER}.volumeMounts[0].name",
            "is of type emptyDir: funcmesh mounts secret volumes only",
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {"secretName": "s"}}],
                mounts=[{"name": "s-vol", "mountPath": "s"}],
            ),
            f"{CONTAINER}.volumeMounts[0].mountPath",
            'mountPath "s" must be an absolute path',
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {"secretName": "s"}}],
                mounts=[{"name": "s-vol", "mountPath": "/a/../etc"}],
            ),
            f"{CONTAINER}.volumeMounts[0].mountPath",
            'must not contain ".."',
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {"secretName": "s"}}],
                mounts=[{"name": "s-vol", "mountPath": "/"}],
            ),
            f"{CONTAINER}.volumeMounts[0].mountPath",
            "must not be / itself",
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {"secretName": "s"}}],
                mounts=[{"name": "s-vol"}],
            ),
            f"{CONTAINER}.volumeMounts[0].mountPath",
            "required",
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {"secretName": "s"}}],
                mounts=[{"name": "s-vol", "mountPath": "/s", "subPath": "key"}],
            ),
            f"{CONTAINER}.volumeMounts[0].subPath",
            "subPath is not supported",
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {}}],
                mounts=[{"name": "s-vol", "mountPath": "/s"}],
            ),
            f"{POD}.volumes[0].secret.secretName",
            "the Secret's name is required",
        ),
        (
            function(
                volumes=[{"name": "s-vol", "secret": {"secretName": "Not_A_Name"}}],
                mounts=[{"name": "s-vol", "mountPath": "/s"}],
            ),
            f"{POD}.volumes[0].secret.secretName",
            "DNS-1123 subdomain",
        ),
        (
            function(
                volumes=[
                    {
                        "name": "s-vol",
                        "secret": {"secretName": "s", "items": [{"key": "k", "path": "../k"}]},
                    }
                ],
                mounts=[{"name": "s-vol", "mountPath": "/s"}],
            ),
            f"{POD}.volumes[0].secret.items[0].path",
            "must be relative",
        ),
        (
            function(
                volumes=[
                    {"name": "a", "secret": {"secretName": "s"}},
                    {"name": "b", "secret": {"secretName": "s"}},
                ],
                mounts=[{"name": "a", "mountPath": "/a"}, {"name": "b", "mountPath": "/b"}],
            ),
            f"{CONTAINER}.volumeMounts[1].mountPath",
            'Secret "s" is mounted twice',
        ),
        (
            function(
                volumes=[
                    {"name": "a", "secret": {"secretName": "s"}},
                    {"name": "b", "secret": {"secretName": "t"}},
                ],
                mounts=[{"name": "a", "mountPath": "/a"}, {"name": "b", "mountPath": "/a/b"}],
            ),
            f"{CONTAINER}.volumeMounts[1].mountPath",
            'mountPath "/a/b" overlaps "/a"',
        ),
        (
            function(
                volumes=[{"name": "a", "secret": {"secretName": "s"}}, {"name": "a"}],
            ),
            f"{POD}.volumes[1].name",
            'volume "a" is defined twice',
        ),
        (
            function(env=[{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c"}}}]),
            f"{CONTAINER}.env[0].valueFrom",
            "valueFrom supports secretKeyRef {name, key} only (configMapKeyRef is not supported)",
        ),
        (
            function(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
            f"{CONTAINER}.env[0].valueFrom.secretKeyRef.key",
            "key must name a key",
        ),
        (
            function(
                env=[
                    {
                        "name": "X",
                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": "y"}},
                    }
                ]
            ),
            f"{CONTAINER}.env[0].valueFrom.secretKeyRef.optional",
            "must be true or false",
        ),
        (
            function(
                env=[
                    {
                        "name": "X",
                        "value": "v",
                        "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                    }
                ]
            ),
            f"{CONTAINER}.env[0]",
            "give value or valueFrom, not both",
        ),
        (
            function(
                env=[
                    {"name": "X", "value": "v"},
                    {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                ]
            ),
            f"{CONTAINER}.env",
            'env "X" is given both as a value and from a Secret',
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_field(
    obj: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(Invalid) as caught:
        parse_function(obj)
    assert any(
        c.field == field and words in c.message for c in caught.value.causes
    ), caught.value.causes


def test_every_secret_problem_is_reported_at_once() -> None:
    obj = copy.deepcopy(KUBELESS)
    container = obj["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]
    container["volumeMounts"].append({"name": "missing", "mountPath": "relative"})
    container["env"] = [{"name": "X", "valueFrom": {"fieldRef": {}}}]
    with pytest.raises(Invalid) as caught:
        parse_function(obj)
    assert {c.field for c in caught.value.causes} == {
        f"{CONTAINER}.volumeMounts[1].name",
        f"{CONTAINER}.volumeMounts[1].mountPath",
        f"{CONTAINER}.env[0].valueFrom",
    }


@pytest.mark.parametrize(
    ("path", "ok"),
    [("/s", True), ("/var/run/secrets/x", True), ("s", False), ("/..", False), ("//", False)],
)
def test_mount_paths(path: str, ok: bool) -> None:
    assert (mount_path_error(path) is None) is ok
