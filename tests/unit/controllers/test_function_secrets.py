"""Reading the Secrets a function names from a real store: files, env values, what is missing."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from funcmesh.controllers.function_secrets import SecretProblem, resolve_secrets
from funcmesh.model.function import FunctionSpec, parse_function
from funcmesh.model.kinds import SECRET
from funcmesh.store.sqlite import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state.db")
    yield opened
    await opened.close()


async def add_secret(store: Store, name: str, data: dict[str, bytes]) -> None:
    encoded = {key: base64.b64encode(value).decode() for key, value in data.items()}
    await store.create(SECRET, {"metadata": {"name": name}, "type": "Opaque", "data": encoded})


def spec(*, volumes: Any = (), mounts: Any = (), env: Any = ()) -> FunctionSpec:
    container = {"name": "", "volumeMounts": list(mounts), "env": list(env)}
    return parse_function(
        {
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {
                "runtime": "python3.11",
                "handler": "hello.handler",
                "deployment": {
                    "spec": {
                        "template": {"spec": {"volumes": list(volumes), "containers": [container]}}
                    }
                },
            },
        }
    )


def secret_volume(name: str, **secret: Any) -> dict[str, Any]:
    return {"name": f"{name}-vol", "secret": {"secretName": name, **secret}}


def mount(name: str) -> dict[str, Any]:
    return {"name": f"{name}-vol", "mountPath": f"/{name}"}


def env_ref(env: str, name: str, key: str, **extra: Any) -> dict[str, Any]:
    return {"name": env, "valueFrom": {"secretKeyRef": {"name": name, "key": key, **extra}}}


async def test_every_key_becomes_a_file_and_refs_become_values(store: Store) -> None:
    await add_secret(store, "db", {"user": b"admin", "blob": b"\x00\xff"})
    resolved = await resolve_secrets(
        store,
        spec(volumes=[secret_volume("db")], mounts=[mount("db")], env=[env_ref("U", "db", "user")]),
    )
    [volume] = resolved.volumes
    assert (volume.secret, volume.mount_path) == ("db", "/db")
    assert dict(volume.files) == {"user": b"admin", "blob": b"\x00\xff"}
    assert resolved.env == (("U", "admin"),)
    assert "admin" not in repr(resolved)


async def test_items_pick_keys_and_name_the_files(store: Store) -> None:
    await add_secret(store, "tls", {"tls.crt": b"CERT", "tls.key": b"KEY"})
    items = [{"key": "tls.crt", "path": "certs/server.crt"}]
    resolved = await resolve_secrets(
        store, spec(volumes=[secret_volume("tls", items=items)], mounts=[mount("tls")])
    )
    assert dict(resolved.volumes[0].files) == {"certs/server.crt": b"CERT"}


async def test_a_missing_secret_is_named_with_where_it_was_wanted(store: Store) -> None:
    with pytest.raises(SecretProblem) as caught:
        await resolve_secrets(store, spec(volumes=[secret_volume("db")], mounts=[mount("db")]))
    assert caught.value.reason == "SecretMissing"
    assert str(caught.value) == 'Secret "db" not found in namespace default (mounted at /db)'
    with pytest.raises(SecretProblem, match=r'Secret "api" not found .* \(env T\)'):
        await resolve_secrets(store, spec(env=[env_ref("T", "api", "token")]))


async def test_a_missing_key_is_named(store: Store) -> None:
    await add_secret(store, "api", {"other": b"x"})
    with pytest.raises(SecretProblem, match=r'Secret "api" has no key "token" \(env T\)'):
        await resolve_secrets(store, spec(env=[env_ref("T", "api", "token")]))
    items = [{"key": "token", "path": "token"}]
    with pytest.raises(SecretProblem, match='Secret "api" has no key "token"'):
        await resolve_secrets(
            store, spec(volumes=[secret_volume("api", items=items)], mounts=[mount("api")])
        )


async def test_optional_references_may_be_missing(store: Store) -> None:
    resolved = await resolve_secrets(
        store,
        spec(
            volumes=[secret_volume("db", optional=True)],
            mounts=[mount("db")],
            env=[env_ref("T", "api", "token", optional=True)],
        ),
    )
    assert [(v.secret, dict(v.files)) for v in resolved.volumes] == [("db", {})]
    assert resolved.env == ()


async def test_binary_values_cannot_be_env_values(store: Store) -> None:
    await add_secret(store, "bin", {"k": b"a\x00b", "u": b"\xff"})
    for key in ("k", "u"):
        with pytest.raises(SecretProblem) as caught:
            await resolve_secrets(store, spec(env=[env_ref("T", "bin", key)]))
        assert caught.value.reason == "SecretInvalid"
        assert "\x00" not in str(caught.value)


async def test_a_function_without_secrets_reads_nothing(store: Store) -> None:
    resolved = await resolve_secrets(store, spec())
    assert (resolved.volumes, resolved.env) == ((), ())
