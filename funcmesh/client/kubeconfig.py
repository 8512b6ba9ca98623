"""Where the API is and how to prove who we are: the kubeconfig file.

Picks the file (``--kubeconfig`` > ``$KUBECONFIG`` > ``$FUNCMESH_HOME/kubeconfig`` >
``~/.funcmesh/kubeconfig``), the context, its cluster (server URL and CA) and user (bearer token),
and the context's namespace. The environment comes in as a mapping. This module reads files only:
it must not talk to the network.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from funcmesh.errors import FuncmeshError, Invalid
from funcmesh.model.codec import load_manifests
from funcmesh.settings import default_home


class KubeconfigMissing(FuncmeshError):
    """There is no kubeconfig file where we looked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeconfigLocation:
    """The file to read and the reason it was chosen (for error messages)."""

    path: Path
    origin: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Kubeconfig:
    """What one context of a kubeconfig says about reaching the API."""

    path: Path
    context: str
    server: str
    ca_pem: str | None
    insecure_skip_tls_verify: bool
    token: str | None
    namespace: str | None


def locate_kubeconfig(env: Mapping[str, str], *, explicit: str | None = None) -> KubeconfigLocation:
    """The kubeconfig path by precedence; the file may not exist."""
    if explicit:
        return KubeconfigLocation(path=Path(explicit).expanduser(), origin="--kubeconfig")
    first = next((entry for entry in env.get("KUBECONFIG", "").split(os.pathsep) if entry), None)
    if first:
        return KubeconfigLocation(path=Path(first).expanduser(), origin="$KUBECONFIG")
    return KubeconfigLocation(path=default_home(env) / "kubeconfig", origin="default")


def load_kubeconfig(
    env: Mapping[str, str], *, explicit: str | None = None, context: str | None = None
) -> Kubeconfig:
    """Read the kubeconfig and resolve one context (``context`` or the current one)."""
    location = locate_kubeconfig(env, explicit=explicit)
    text = _read_text(location, env)
    shown = display_path(location.path, env)
    documents = load_manifests(text, source=f"kubeconfig {shown}") if text.strip() else []
    if len(documents) != 1:
        raise Invalid(f"kubeconfig {shown} must hold exactly one Config document")
    return _resolve(documents[0], path=location.path, shown=shown, context=context)


def display_path(path: Path, env: Mapping[str, str]) -> str:
    """``~/.funcmesh/kubeconfig`` rather than the full home directory."""
    home = env.get("HOME")
    if home and path.is_relative_to(home):
        return str(Path("~") / path.relative_to(home))
    return str(path)


def _read_text(location: KubeconfigLocation, env: Mapping[str, str]) -> str:
    shown = display_path(location.path, env)
    try:
        return location.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        hint = {
            "--kubeconfig": "check the --kubeconfig path",
            "$KUBECONFIG": "check $KUBECONFIG (or pass --kubeconfig)",
        }.get(location.origin, "start the daemon with funcmesh up (or pass --kubeconfig)")
        raise KubeconfigMissing(f"no kubeconfig at {shown}: {hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FuncmeshError(f"cannot read kubeconfig {shown}: {exc}") from exc


def _resolve(doc: Mapping[str, Any], *, path: Path, shown: str, context: str | None) -> Kubeconfig:
    name = context or doc.get("current-context")
    if not name:
        raise Invalid(f"kubeconfig {shown} has no current-context: pass --context")
    ctx = _named(doc, "contexts", "context", str(name), shown)
    cluster = _named(doc, "clusters", "cluster", str(ctx.get("cluster") or ""), shown)
    user_name = ctx.get("user")
    user = _named(doc, "users", "user", str(user_name), shown) if user_name else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise Invalid(f'kubeconfig {shown}: cluster "{ctx.get("cluster")}" has no server')
    namespace = ctx.get("namespace")
    return Kubeconfig(
        path=path,
        context=str(name),
        server=server.rstrip("/"),
        ca_pem=_ca_pem(cluster, base=path.parent, shown=shown),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify")),
        token=_token(user, base=path.parent, shown=shown),
        namespace=str(namespace) if namespace else None,
    )


def _named(doc: Mapping[str, Any], section: str, key: str, name: str, shown: str) -> dict[str, Any]:
    """The ``key`` body of the entry called ``name`` in the list ``section``."""
    entries = doc.get(section) or []
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(key)
            return body if isinstance(body, dict) else {}
    known = ", ".join(str(e.get("name")) for e in entries if isinstance(e, dict)) or "none"
    raise Invalid(f'{key} "{name}" not found in kubeconfig {shown} ({section}: {known})')


def _ca_pem(cluster: Mapping[str, Any], *, base: Path, shown: str) -> str | None:
    data = cluster.get("certificate-authority-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise Invalid(
                f"kubeconfig {shown}: certificate-authority-data is not base64 of a PEM file"
            ) from exc
    file = cluster.get("certificate-authority")
    if file:
        return _read_referenced(base, str(file), what="certificate-authority", shown=shown)
    return None


def _token(user: Mapping[str, Any], *, base: Path, shown: str) -> str | None:
    if user.get("token"):
        return str(user["token"]).strip()
    file = user.get("tokenFile")
    if file:
        return _read_referenced(base, str(file), what="tokenFile", shown=shown).strip()
    return None


def _read_referenced(base: Path, file: str, *, what: str, shown: str) -> str:
    """A file the kubeconfig names; relative paths are relative to the kubeconfig (as kubectl)."""
    path = base / Path(file).expanduser()
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise FuncmeshError(f"kubeconfig {shown}: cannot read {what} {path}: {exc}") from exc
