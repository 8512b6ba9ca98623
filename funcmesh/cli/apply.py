"""``apply -f`` and ``delete``: objects from manifests, kubectl style.

Every file is read and parsed, and every kind resolved, before the first request, so a bad
manifest changes nothing. Then each object is created (absent), left alone (unchanged) or
replaced with the current resourceVersion, keeping the metadata the server owns. "Unchanged"
means the manifest is the one applied last time (a digest annotation says so) and the live
object still has every field of it; fields the server adds (defaults, the ``function`` label) do
not count. Namespaces are applied first and deleted last. A failing object gets an error line and
the others go on; the exit code is then 1.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from funcmesh.cli.options import global_flags, global_options
from funcmesh.cli.output import object_reference, report_error, resource_label
from funcmesh.cli.session import session_of
from funcmesh.errors import AlreadyExists, Conflict, FuncmeshError, Invalid, NotFound
from funcmesh.model.kinds import NAMESPACE, ResourceType, find_by_kind, find_resource
from funcmesh.model.objects import RawObject, annotations_of, metadata_of, name_of, namespace_of

if TYPE_CHECKING:
    from funcmesh.client.api import ApiClient

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
SERVER_OWNED_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "managedFields",
    "selfLink",
)
APPLY_ATTEMPTS = 3
APPLIED_DIGEST_ANNOTATION = "apply.funcmesh.io/last-applied-sha256"


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One object to act on, with its resource type and namespace resolved."""

    rt: ResourceType
    obj: RawObject

    @property
    def namespace(self) -> str:
        return namespace_of(self.obj)

    @property
    def name(self) -> str:
        return name_of(self.obj)


@click.command("apply")
@click.option("-f", "--filename", "filenames", multiple=True, required=True, metavar="FILE|DIR|-")
@global_options
@click.pass_context
def apply(ctx: click.Context, filenames: Sequence[str]) -> None:
    """Create or update the objects of manifest files (YAML or JSON, - for stdin)."""
    targets = sorted(_targets(ctx, filenames), key=lambda target: target.rt != NAMESPACE)
    client = session_of(ctx).client()
    failed = False
    for target in targets:
        try:
            outcome = apply_one(client, target)
        except FuncmeshError as exc:
            report_error(exc)
            failed = True
            continue
        click.echo(f"{object_reference(target.rt, target.obj)} {outcome}")
    if failed:
        ctx.exit(1)


@click.command("delete")
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "filenames", multiple=True, metavar="FILE|DIR|-")
@global_options
@click.pass_context
def delete(
    ctx: click.Context, kind: str | None, names: Sequence[str], filenames: Sequence[str]
) -> None:
    """Delete the objects of manifest files, or KIND NAME..."""
    if bool(filenames) == bool(kind):
        raise click.UsageError("give either -f FILE or KIND NAME...")
    if kind and not names:
        raise click.UsageError(f"name the {kind} to delete")
    session = session_of(ctx)
    if filenames:
        targets = _targets(ctx, filenames)
    else:
        rt = find_resource(str(kind))
        meta = {"namespace": session.namespace} if rt.namespaced else {}
        targets = [Target(rt=rt, obj={"metadata": {**meta, "name": name}}) for name in names]
    failed = False
    for target in sorted(targets, key=lambda target: target.rt == NAMESPACE):
        try:
            session.client().delete(target.rt, target.namespace, target.name)
        except FuncmeshError as exc:
            report_error(exc)
            failed = True
            continue
        click.echo(f'{resource_label(target.rt)} "{target.name}" deleted')
    if failed:
        ctx.exit(1)


def apply_one(client: ApiClient, target: Target) -> str:
    """``created``, ``configured`` or ``unchanged``; retries when someone else wrote meanwhile."""
    desired = with_applied_digest(target.obj)
    for attempt in range(1, APPLY_ATTEMPTS + 1):
        try:
            current = client.get(target.rt, target.namespace, target.name)
        except NotFound:
            try:
                client.create(target.rt, desired)
            except AlreadyExists:
                if attempt == APPLY_ATTEMPTS:
                    raise
                continue
            return "created"
        if is_unchanged(target.obj, current):
            return "unchanged"
        try:
            client.replace(target.rt, replacement(desired, current))
        except Conflict:
            if attempt == APPLY_ATTEMPTS:
                raise
            continue
        return "configured"
    raise AssertionError("unreachable")


def is_unchanged(desired: RawObject, current: RawObject) -> bool:
    """The same manifest as last time, and the live object still has every field of it."""
    recorded = annotations_of(current).get(APPLIED_DIGEST_ANNOTATION)
    if recorded is not None and recorded != applied_digest(desired):
        return False
    desired_meta, current_meta = metadata_of(desired), metadata_of(current)
    return _contains(_content(current), _content(desired)) and all(
        _contains(current_meta.get(key) or {}, desired_meta.get(key) or {})
        for key in ("labels", "annotations")
    )


def applied_digest(obj: RawObject) -> str:
    """sha256 of the manifest (without this annotation), in canonical JSON."""
    annotations = {k: v for k, v in annotations_of(obj).items() if k != APPLIED_DIGEST_ANNOTATION}
    metadata = {**metadata_of(obj), "annotations": annotations}
    canonical = json.dumps({**obj, "metadata": metadata}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def with_applied_digest(obj: RawObject) -> RawObject:
    annotations = {**annotations_of(obj), APPLIED_DIGEST_ANNOTATION: applied_digest(obj)}
    return {**obj, "metadata": {**metadata_of(obj), "annotations": annotations}}


def _contains(big: Any, small: Any) -> bool:
    """Every field of ``small`` is in ``big`` with the same value (lists compare whole)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            key in big and _contains(big[key], value) for key, value in small.items()
        )
    return bool(big == small)


def replacement(desired: RawObject, current: RawObject) -> RawObject:
    """``desired`` with the server-owned metadata of ``current`` (resourceVersion above all)."""
    current_meta = metadata_of(current)
    metadata = dict(metadata_of(desired))
    for key in SERVER_OWNED_METADATA:
        if key in current_meta:
            metadata[key] = current_meta[key]
    return {**desired, "metadata": metadata}


def _content(obj: RawObject) -> dict[str, Any]:
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


def read_manifests(filenames: Sequence[str]) -> list[RawObject]:
    """Every object of every file (directories: their .yaml/.yml/.json files; ``-``: stdin)."""
    from funcmesh.model.codec import load_manifests

    objects: list[RawObject] = []
    for filename in filenames:
        for source, text in _texts(filename):
            objects.extend(load_manifests(text, source=source))
    if not objects:
        raise Invalid("no objects passed: the files hold no manifests")
    return objects


def _texts(filename: str) -> list[tuple[str, str]]:
    if filename == "-":
        return [("<stdin>", sys.stdin.read())]
    path = Path(filename).expanduser()
    files = (
        sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES)
        if path.is_dir()
        else [path]
    )
    texts = []
    for file in files:
        try:
            texts.append((str(file), file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise Invalid(f"{file}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise Invalid(f"{file}: cannot read it ({exc})") from None
    return texts


def _targets(ctx: click.Context, filenames: Sequence[str]) -> list[Target]:
    """Resolve kinds and namespaces of every object up front: one bad object stops everything."""
    explicit_namespace = global_flags(ctx).namespace
    default_namespace = session_of(ctx).namespace
    targets = []
    for obj in read_manifests(filenames):
        rt = find_by_kind(str(obj.get("apiVersion")), str(obj.get("kind")))
        metadata = dict(metadata_of(obj))
        if not metadata.get("name"):
            raise Invalid(f"a {obj.get('kind')} in the manifests has no metadata.name")
        if rt.namespaced:
            own = metadata.get("namespace")
            if own and explicit_namespace and own != explicit_namespace:
                raise Invalid(
                    f'{rt.kind} "{metadata["name"]}" is in namespace "{own}", not '
                    f'"{explicit_namespace}" as -n says: pass -n {own} or remove one of them'
                )
            metadata["namespace"] = own or default_namespace
        else:
            metadata.pop("namespace", None)
        targets.append(Target(rt=rt, obj={**obj, "metadata": metadata}))
    return targets
