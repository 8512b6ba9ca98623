"""``funcmesh create secret generic|tls NAME``: Secrets as ``kubectl create secret`` makes them.

Values come from ``--from-literal KEY=VALUE`` and ``--from-file [KEY=]PATH`` (the key defaults to
the file's base name), or ``--cert``/``--key`` for a ``kubernetes.io/tls`` Secret. Values are
base64-encoded here and never echoed: the confirmation names the Secret and its keys only.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path

import click

from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_value
from funcmesh.cli.session import session_of
from funcmesh.errors import Invalid
from funcmesh.model.kinds import SECRET
from funcmesh.model.objects import RawObject
from funcmesh.model.secrets import OPAQUE, TLS


@click.group("create")
@global_options
def create() -> None:
    """Create objects from flags (kubectl create ...)."""


@create.group("secret")
@global_options
def secret() -> None:
    """Create a Secret: generic (from literals and files) or tls (certificate and key)."""


@secret.command("generic")
@click.argument("name")
@click.option("--from-literal", "literals", multiple=True, metavar="KEY=VALUE", help="A value.")
@click.option("--from-file", "files", multiple=True, metavar="[KEY=]PATH", help="A file's bytes.")
@click.option("--type", "secret_type", default=OPAQUE, show_default=True, help="Secret type.")
@click.option("--dry-run", "dryrun", is_flag=True, help="Print the Secret instead of sending it.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def generic(
    ctx: click.Context,
    /,
    name: str,
    literals: Sequence[str],
    files: Sequence[str],
    secret_type: str,
    dryrun: bool,
    output: str,
) -> None:
    """Create a Secret from literal values and files."""
    data = {**read_literals(literals), **read_files(files)}
    _send(ctx, build_secret(name, session_of(ctx).namespace, data, secret_type), dryrun, output)


@secret.command("tls")
@click.argument("name")
@click.option("--cert", required=True, metavar="PATH", help="PEM certificate (chain).")
@click.option("--key", required=True, metavar="PATH", help="PEM private key.")
@click.option("--dry-run", "dryrun", is_flag=True, help="Print the Secret instead of sending it.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def tls(ctx: click.Context, /, name: str, cert: str, key: str, dryrun: bool, output: str) -> None:
    """Create a kubernetes.io/tls Secret from a certificate and its key."""
    data = {"tls.crt": read_file(cert), "tls.key": read_file(key)}
    _send(ctx, build_secret(name, session_of(ctx).namespace, data, TLS), dryrun, output)


def _send(ctx: click.Context, obj: RawObject, dryrun: bool, output: str) -> None:
    if dryrun:
        click.echo(dump_value(obj, output=output), nl=False)
        return
    session = session_of(ctx)
    session.client().create(SECRET, obj)
    click.echo(f"secret/{obj['metadata']['name']} created")


def build_secret(name: str, namespace: str, data: dict[str, bytes], secret_type: str) -> RawObject:
    """A v1 Secret with ``data`` base64-encoded."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": secret_type,
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def read_literals(literals: Sequence[str]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for literal in literals:
        key, sep, value = literal.partition("=")
        if not sep or not key:
            raise Invalid(f"--from-literal needs KEY=VALUE, got {key or literal!r} without '='")
        _add(data, key, value.encode())
    return data


def read_files(specs: Sequence[str]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for spec in specs:
        key, sep, path = spec.partition("=")
        if not sep:
            key, path = Path(spec).name, spec
        _add(data, key, read_file(path))
    return data


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise Invalid(f"cannot read {path}: {exc.strerror}") from exc


def _add(data: dict[str, bytes], key: str, value: bytes) -> None:
    if key in data:
        raise Invalid(f"key {key} is given twice")
    data[key] = value
