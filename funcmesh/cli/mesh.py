"""``funcmesh mesh logs [-f] [--tail N]``: the mesh's access log, one line per request;
``funcmesh mesh cert --service-account SA --out DIR``: a mesh certificate in files.

The lines are Istio's default access log format (Envoy's, with Istio's additions), so tools
that read an ``istio-proxy`` container's log read these too. ``-f`` keeps printing new lines
until Ctrl-C, as ``funcmesh logs -f`` does.

``cert`` asks the daemon's mesh CA for the identity ``spiffe://cluster.local/ns/NS/sa/SA``
and writes Istio's file names: ``cert-chain.pem``, ``key.pem`` (mode 0600) and
``root-cert.pem``, which a client presents (and trusts) to call a Service's VIP over mTLS.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.client.api import MeshCertificate


@click.group("mesh")
@global_options
def mesh() -> None:
    """Look at the traffic through the mesh."""


@mesh.command("logs")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, metavar="N", help="Only the last N lines (-1: all kept).")
@global_options
@click.pass_context
def logs(ctx: click.Context, /, follow: bool, tail: int | None) -> None:
    """Print the access log of the mesh (Istio's format)."""
    lines = (
        session_of(ctx)
        .client()
        .mesh_access_log(follow=follow, tail_lines=tail if tail is not None and tail >= 0 else None)
    )
    for line in lines:
        click.echo(line)


@mesh.command("cert")
@click.option(
    "--service-account",
    default="default",
    show_default=True,
    help="The identity's service account (its namespace is -n).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for cert-chain.pem, key.pem and root-cert.pem (created if needed).",
)
@global_options
@click.pass_context
def cert(ctx: click.Context, /, service_account: str, out: Path) -> None:
    """Get a mesh certificate (mTLS to Service VIPs) for a namespace's service account."""
    session = session_of(ctx)
    issued = session.client().mesh_certificate(session.namespace, service_account)
    write_certificate(out, issued)
    click.echo(f"{issued.spiffe_id}: certificate in {out} (valid until {issued.not_after})")


def write_certificate(out: Path, issued: MeshCertificate) -> None:
    """Istio's files of a certificate in ``out`` (created if needed): cert-chain.pem, key.pem
    (0600) and root-cert.pem."""
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "cert-chain.pem", issued.certificate, mode=0o644)
    _write(out / "key.pem", issued.private_key, mode=0o600)
    _write(out / "root-cert.pem", issued.ca_certificate, mode=0o644)


def _write(path: Path, text: str, *, mode: int) -> None:
    """Replace ``path`` with ``text``, never readable by others in between (a key)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(text)
    os.replace(temporary, path)
