"""``get-server-config`` and ``version``: what the server can run and which versions talk.

Kubeless prints ``Current Server Config:`` and ``Supported Runtimes are: ...``; here the list
comes from the daemon's runtime catalog (the interpreters found on this machine). Read-only.
"""

from __future__ import annotations

import click

from funcmesh import __version__
from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of


@click.command("get-server-config")
@global_options
@click.pass_context
def get_server_config(ctx: click.Context) -> None:
    """Show the runtimes the server supports."""
    config = session_of(ctx).client().server_config()
    runtimes = ", ".join(runtime.id for runtime in config.runtimes) or "none"
    click.echo("Current Server Config:")
    click.echo(f"Supported Runtimes are: {runtimes}")


@click.command("version")
@global_options
@click.pass_context
def version(ctx: click.Context) -> None:
    """Show the client and server versions."""
    click.echo(f"Client Version: {__version__}")
    client = session_of(ctx).client()
    server_version = client.server_config().version or "unknown"
    api_version = client.version().get("gitVersion")
    suffix = f" (Kubernetes API {api_version})" if api_version else ""
    click.echo(f"Server Version: {server_version}{suffix}")
