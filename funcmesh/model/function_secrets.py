"""Which Secrets a Function uses: secret volumes on its container, and env from Secret keys.

Kubeless's ``function deploy --secrets s`` writes, in ``spec.deployment.spec.template.spec``, a
volume ``{name: s-vol, secret: {secretName: s}}`` and on ``containers[0]`` a volumeMount
``{name: s-vol, mountPath: /s}``; Kubernetes' ``env[].valueFrom.secretKeyRef`` names one key of
a Secret. This module parses both into typed references and records a Cause, with the field
path, for anything funcmesh cannot honour (a mount of another kind of volume, a relative
mountPath, ``subPath``). No I/O: reading the Secrets is the function controller's business.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Cause
from funcmesh.model.names import dns1123_subdomain_error

POD_SPEC = "spec.deployment.spec.template.spec"
CONTAINER = f"{POD_SPEC}.containers[0]"
MAX_PATH_CHARS = 4096
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretMount:
    """A Secret whose keys become files, under ``$FUNCMESH_SECRETS_DIR/<secret>/`` and at
    ``mount_path`` (where the daemon may use a private mount namespace)."""

    secret: str
    mount_path: str
    volume: str
    optional: bool = False
    # (key, relative file path) from the volume's ``items``; empty: every key, named as the key
    items: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SecretKeyRef:
    """An environment variable whose value is one key of a Secret."""

    env: str
    secret: str
    key: str
    optional: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Volume:
    name: str
    kind: str
    mount: SecretMount | None  # the secret's part, mount_path still empty; None for other kinds


def parse_secret_mounts(
    pod_spec: Mapping[str, Any], container: Mapping[str, Any], causes: list[Cause]
) -> tuple[SecretMount, ...]:
    """The secret volumes that ``containers[0]`` mounts, in volumeMounts order."""
    volumes = _volumes(pod_spec.get("volumes"), causes)
    raw_mounts = container.get("volumeMounts")
    if raw_mounts is None:
        return ()
    if not isinstance(raw_mounts, list):
        causes.append(Cause(field=f"{CONTAINER}.volumeMounts", message="must be a list"))
        return ()
    mounts: list[SecretMount] = []
    for index, item in enumerate(raw_mounts):
        mount = _mount(item, f"{CONTAINER}.volumeMounts[{index}]", volumes, causes)
        if mount is not None and _fits(mount, mounts, f"{CONTAINER}.volumeMounts[{index}]", causes):
            mounts.append(mount)
    return tuple(mounts)


def parse_secret_key_ref(
    name: str, value_from: Any, field: str, causes: list[Cause]
) -> SecretKeyRef | None:
    """``env[i].valueFrom``: only ``secretKeyRef {name, key, optional}`` is understood."""
    ref = value_from.get("secretKeyRef") if isinstance(value_from, dict) else None
    others = sorted(set(value_from) - {"secretKeyRef"}) if isinstance(value_from, dict) else []
    if not isinstance(ref, dict) or others:
        wanted = f" ({', '.join(others)} is not supported)" if others else ""
        message = f'env "{name}": valueFrom supports secretKeyRef {{name, key}} only{wanted}'
        causes.append(Cause(field=f"{field}.valueFrom", message=message))
        return None
    where = f"{field}.valueFrom.secretKeyRef"
    secret = _secret_name(ref.get("name"), f"{where}.name", causes)
    key = ref.get("key")
    if not isinstance(key, str) or not _SECRET_KEY.match(key):
        message = "key must name a key of the Secret ('-', '_', '.' and alphanumerics)"
        causes.append(Cause(field=f"{where}.key", message=message, reason=_reason(key)))
        return None
    optional = _flag(ref.get("optional"), f"{where}.optional", causes)
    if secret is None:
        return None
    return SecretKeyRef(env=name, secret=secret, key=key, optional=optional)


def mount_path_error(path: str) -> str | None:
    """Why ``path`` cannot be a mountPath, or None."""
    if not path.startswith("/"):
        return f'mountPath "{path}" must be an absolute path, e.g. /{path.lstrip("./") or "x"}'
    if len(path) > MAX_PATH_CHARS or "\0" in path:
        return "mountPath is too long or holds a NUL character"
    if ".." in path.split("/"):
        return f'mountPath "{path}" must not contain ".."'
    if normal_mount_path(path) == "/":
        return "mountPath must not be / itself"
    return None


def normal_mount_path(path: str) -> str:
    """``path`` without ``.``, doubled or trailing slashes (``//s/`` is ``/s``)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _volumes(value: Any, causes: list[Cause]) -> dict[str, _Volume]:
    if value is None:
        return {}
    if not isinstance(value, list):
        causes.append(Cause(field=f"{POD_SPEC}.volumes", message="must be a list"))
        return {}
    volumes: dict[str, _Volume] = {}
    for index, item in enumerate(value):
        field = f"{POD_SPEC}.volumes[{index}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            causes.append(Cause(field=f"{field}.name", message="required", reason=_reason(name)))
            continue
        if name in volumes:
            causes.append(Cause(field=f"{field}.name", message=f'volume "{name}" is defined twice'))
            continue
        assert isinstance(item, dict)
        kinds = [key for key in item if key != "name"]
        kind = kinds[0] if kinds else "empty"
        is_secret = "secret" in item
        source = item.get("secret")
        mount = _secret_source(name, source, f"{field}.secret", causes) if is_secret else None
        volumes[name] = _Volume(name=name, kind="secret" if is_secret else kind, mount=mount)
    return volumes


def _secret_source(volume: str, source: Any, field: str, causes: list[Cause]) -> SecretMount | None:
    if not isinstance(source, dict):
        causes.append(Cause(field=field, message="must be an object with secretName"))
        return None
    secret = _secret_name(source.get("secretName"), f"{field}.secretName", causes)
    optional = _flag(source.get("optional"), f"{field}.optional", causes)
    items = _items(source.get("items"), f"{field}.items", causes)
    if secret is None:
        return None
    return SecretMount(secret=secret, mount_path="", volume=volume, optional=optional, items=items)


def _items(value: Any, field: str, causes: list[Cause]) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        causes.append(Cause(field=field, message="must be a list of {key, path}"))
        return ()
    items: list[tuple[str, str]] = []
    for index, item in enumerate(value):
        key = item.get("key") if isinstance(item, dict) else None
        path = item.get("path") if isinstance(item, dict) else None
        if not isinstance(key, str) or not _SECRET_KEY.match(key):
            causes.append(Cause(field=f"{field}[{index}].key", message="must name a key"))
        elif error := _relative_path_error(path):
            causes.append(Cause(field=f"{field}[{index}].path", message=error))
        elif any(path == taken for _, taken in items):
            causes.append(Cause(field=f"{field}[{index}].path", message=f'"{path}" is given twice'))
        else:
            assert isinstance(path, str)
            items.append((key, path))
    return tuple(items)


def _relative_path_error(path: Any) -> str | None:
    if not isinstance(path, str) or not path:
        return "path is required"
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or "" in parts or "." in parts or "\0" in path:
        return f'path "{path}" must be relative, without "..", "." or empty parts'
    return None


def _mount(
    item: Any, field: str, volumes: Mapping[str, _Volume], causes: list[Cause]
) -> SecretMount | None:
    if not isinstance(item, dict):
        causes.append(Cause(field=field, message="each volumeMount needs a name and a mountPath"))
        return None
    name, path = item.get("name"), item.get("mountPath")
    volume = volumes.get(name) if isinstance(name, str) else None
    problems = len(causes)
    if volume is None:
        message = f'volume "{name}" is not defined in {POD_SPEC}.volumes'
        causes.append(Cause(field=f"{field}.name", message=message, reason="FieldValueNotFound"))
    elif volume.kind != "secret":
        message = (
            f'volume "{name}" is of type {volume.kind}: funcmesh mounts secret volumes only '
            "(function deploy --secrets NAME)"
        )
        causes.append(
            Cause(field=f"{field}.name", message=message, reason="FieldValueNotSupported")
        )
    if not isinstance(path, str) or not path:
        causes.append(Cause(field=f"{field}.mountPath", message="required", reason=_reason(path)))
    elif error := mount_path_error(path):
        causes.append(Cause(field=f"{field}.mountPath", message=error))
    for unsupported in ("subPath", "subPathExpr"):
        if item.get(unsupported):
            message = f"{unsupported} is not supported: the whole Secret is mounted"
            causes.append(Cause(field=f"{field}.{unsupported}", message=message))
    if len(causes) > problems or volume is None or volume.mount is None:
        return None
    assert isinstance(path, str)
    mount = volume.mount
    return SecretMount(
        secret=mount.secret,
        mount_path=normal_mount_path(path),
        volume=mount.volume,
        optional=mount.optional,
        items=mount.items,
    )


def _fits(mount: SecretMount, others: list[SecretMount], field: str, causes: list[Cause]) -> bool:
    """One mount per Secret, and no mountPath inside another."""
    for other in others:
        if other.secret == mount.secret:
            message = f'Secret "{mount.secret}" is mounted twice; mount it once'
        elif _inside(mount.mount_path, other.mount_path) or _inside(
            other.mount_path, mount.mount_path
        ):
            message = f'mountPath "{mount.mount_path}" overlaps "{other.mount_path}"'
        else:
            continue
        causes.append(Cause(field=f"{field}.mountPath", message=message))
        return False
    return True


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _secret_name(value: Any, field: str, causes: list[Cause]) -> str | None:
    if not isinstance(value, str) or not value:
        causes.append(
            Cause(field=field, message="the Secret's name is required", reason=_reason(value))
        )
        return None
    if error := dns1123_subdomain_error(value):
        causes.append(Cause(field=field, message=error))
        return None
    return value


def _flag(value: Any, field: str, causes: list[Cause]) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        causes.append(Cause(field=field, message="must be true or false"))
        return False
    return value


def _reason(value: Any) -> str:
    return "FieldValueRequired" if value in (None, "") else "FieldValueInvalid"
