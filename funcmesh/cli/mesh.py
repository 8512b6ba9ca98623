"""``funcmesh mesh logs [-f] [--tail N]``: the mesh's access log, one line per request.

The lines are Istio's default access log format (Envoy's, with Istio's additions), so tools
that read an ``istio-proxy`` container's log read these too. ``-f`` keeps printing new lines
until Ctrl-C, as ``funcmesh logs -f`` does.
"""

from __future__ import annotations

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of


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
