"""The Secrets a function reads, from the store: files per secret volume, and env values.

A Secret that is missing, or lacks a key a volume's ``items`` or an env ``secretKeyRef`` names,
is a :class:`SecretProblem` naming the Secret and the key (reason ``SecretMissing``), unless the
reference is ``optional``: then the env variable is left out, and the volume mounts what there
is (an empty directory for a missing Secret), as in Kubernetes. An env value that is not text
is ``SecretInvalid``. Only names and keys ever go into messages, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from funcmesh.errors import FuncmeshError, NotFound
from funcmesh.model.function import FunctionSpec
from funcmesh.model.function_secrets import SecretKeyRef, SecretMount
from funcmesh.model.kinds import SECRET
from funcmesh.model.secrets import secret_value
from funcmesh.runtime.secret_files import SecretVolume
from funcmesh.store.sqlite import Store


class SecretProblem(FuncmeshError):
    """A Secret the function needs is missing or unusable; ``reason`` is the condition's."""

    def __init__(self, message: str, *, reason: str = "SecretMissing") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedSecrets:
    """The function's secret volumes (in mount order) and env values from Secret keys."""

    volumes: tuple[SecretVolume, ...] = field(default=(), repr=False)
    env: tuple[tuple[str, str], ...] = field(default=(), repr=False)


async def resolve_secrets(store: Store, spec: FunctionSpec) -> ResolvedSecrets:
    """Read every Secret ``spec`` names (once each) and pick the files and values it uses."""
    if not spec.secret_names:
        return ResolvedSecrets()
    found: dict[str, Mapping[str, Any] | None] = {}
    for name in sorted(spec.secret_names):
        try:
            found[name] = await store.get(SECRET, spec.namespace, name)
        except NotFound:
            found[name] = None
    volumes = tuple(_volume(mount, found[mount.secret], spec.namespace) for mount in spec.secrets)
    env = tuple(
        (ref.env, value)
        for ref in spec.secret_env
        if (value := _env_value(ref, found[ref.secret], spec.namespace)) is not None
    )
    return ResolvedSecrets(volumes=volumes, env=env)


def _volume(mount: SecretMount, secret: Mapping[str, Any] | None, namespace: str) -> SecretVolume:
    files: dict[str, bytes] = {}
    if secret is None and not mount.optional:
        raise SecretProblem(_missing(mount.secret, namespace) + f" (mounted at {mount.mount_path})")
    if secret is not None:
        wanted = mount.items or tuple((key, key) for key in sorted(_keys(secret)))
        for key, path in wanted:
            value = secret_value(secret, key)
            if value is not None:
                files[path] = value
            elif not mount.optional:
                raise SecretProblem(f'Secret "{mount.secret}" has no key "{key}"')
    return SecretVolume(secret=mount.secret, mount_path=mount.mount_path, files=files)


def _env_value(ref: SecretKeyRef, secret: Mapping[str, Any] | None, namespace: str) -> str | None:
    if secret is None:
        if ref.optional:
            return None
        raise SecretProblem(_missing(ref.secret, namespace) + f" (env {ref.env})")
    value = secret_value(secret, ref.key)
    if value is None:
        if ref.optional:
            return None
        raise SecretProblem(f'Secret "{ref.secret}" has no key "{ref.key}" (env {ref.env})')
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise SecretProblem(
            f'key "{ref.key}" of Secret "{ref.secret}" is not text without NUL characters, '
            f"so it cannot be the value of env {ref.env}; mount the Secret as files instead",
            reason="SecretInvalid",
        )
    return text


def _keys(secret: Mapping[str, Any]) -> list[str]:
    data = secret.get("data")
    return [key for key in data if isinstance(key, str)] if isinstance(data, Mapping) else []


def _missing(name: str, namespace: str) -> str:
    return f'Secret "{name}" not found in namespace {namespace}'
