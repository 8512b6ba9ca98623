"""Entry point of the ``funcmesh`` command: the root group, its commands and the CLI's error table.

Every FuncmeshError ends here as ``error: <message>`` on stderr (for Invalid, plus one indented
line per cause the message does not already say) and exit code 1; a traceback only with ``-v``.
Usage errors stay click's (exit code 2). Commands are imported lazily, so start-up stays fast;
this module must not import httpx, YAML or rich.
"""

from __future__ import annotations

import traceback
from typing import Any

import click

from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_flags, global_options
from funcmesh.cli.output import report_error
from funcmesh.errors import FuncmeshError

ROOT_COMMANDS = {
    "function": "funcmesh.cli.function:function",
    "apply": "funcmesh.cli.apply:apply",
    "autoscale": "funcmesh.cli.autoscale:autoscale",
    "call": "funcmesh.cli.calls:call",
    "create": "funcmesh.cli.create:create",
    "delete": "funcmesh.cli.apply:delete",
    "exec": "funcmesh.cli.exec:exec_command",
    "dns": "funcmesh.cli.dns:dns",
    "expose": "funcmesh.cli.expose:expose",
    "get": "funcmesh.cli.get:get",
    "get-server-config": "funcmesh.cli.serverconfig:get_server_config",
    "logs": "funcmesh.cli.logs:logs",
    "mesh": "funcmesh.cli.mesh:mesh",
    "run": "funcmesh.cli.run:run",
    "scale": "funcmesh.cli.run:scale",
    "traces": "funcmesh.cli.traces:traces",
    "trigger": "funcmesh.cli.trigger:trigger",
    "version": "funcmesh.cli.serverconfig:version",
    "up": "funcmesh.cli.up:up",
}
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


class RootGroup(LazyGroup):
    """The root group: turns exceptions from any command into the CLI's error output."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            raise  # click quiets a closed stdout (``funcmesh function ls | head``)
        except KeyboardInterrupt:
            click.echo(err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except FuncmeshError as exc:
            _show_traceback_if_verbose(ctx)
            report_error(exc)
        # The CLI's outer boundary: a bug still ends in one clear line (traceback with -v).
        except Exception as exc:  # noqa: BLE001
            _show_traceback_if_verbose(ctx)
            hint = "" if global_flags(ctx).verbose else " (run again with -v for the traceback)"
            click.echo(f"error: unexpected {type(exc).__name__}: {exc}{hint}", err=True)
        ctx.exit(EXIT_FAILURE)


def _show_traceback_if_verbose(ctx: click.Context) -> None:
    if global_flags(ctx).verbose:
        traceback.print_exc()


@click.group(
    cls=RootGroup,
    lazy_commands=ROOT_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@global_options
def cli() -> None:
    """funcmesh: serverless functions the Kubeless way, service discovery and a mesh, on one
    machine."""


def main() -> None:
    cli.main(prog_name="funcmesh")
