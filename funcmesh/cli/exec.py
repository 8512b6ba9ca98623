"""``funcmesh exec POD -- CMD ARGS``: run a command the way a pod's process runs.

funcmesh pods are processes on this machine, so ``exec`` runs CMD here, as the user who types
it, with the pod's environment (``spec.containers[0].env`` holds all of it: HOST, PORT, POD_*,
the service links and the container's own variables) in the pod's working directory, and exits
with CMD's exit code (128 + N when a signal N ended it), like ``kubectl exec``. Standard input,
output and error are the terminal's, so ``-i``/``-t`` are accepted and change nothing.

Cluster DNS for exec'd commands (the pod's resolv.conf in a private mount namespace) is a later
step: it belongs in ``_run``, around the ``subprocess.run``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.errors import Invalid, Unavailable
from funcmesh.model.kinds import POD
from funcmesh.model.objects import RawObject

EXIT_CANNOT_RUN = 126  # the command exists but cannot run (as a shell reports it)
EXIT_NOT_FOUND = 127


@click.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-i", "--stdin", "_stdin", is_flag=True, help="Accepted; stdin is always passed.")
@click.option("-t", "--tty", "_tty", is_flag=True, help="Accepted; the terminal is yours.")
@global_options
@click.pass_context
def exec_command(
    ctx: click.Context, /, pod: str, command: Sequence[str], _stdin: bool, _tty: bool
) -> None:
    """Run COMMAND with a pod's environment and working directory: exec POD -- CMD ARGS."""
    words = list(command[1:] if command and command[0] == "--" else command)
    if not words:
        raise click.UsageError("give the command after --: exec POD -- CMD ARGS")
    session = session_of(ctx)
    name = pod.removeprefix("pod/").removeprefix("pods/")
    obj = session.client().get(POD, session.namespace, name)
    env, cwd = pod_environment(obj), pod_working_dir(obj)
    ctx.exit(_run(words, env=env, cwd=cwd))


def pod_environment(pod: RawObject) -> dict[str, str]:
    """The environment of the pod's process, from its first container's ``env``."""
    env = {"PATH": os.defpath}
    for item in _container(pod).get("env") or ():
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            env[item["name"]] = str(item.get("value") or "")
    return env


def pod_working_dir(pod: RawObject) -> str | None:
    working_dir = _container(pod).get("workingDir")
    return str(working_dir) if working_dir else None


def _container(pod: RawObject) -> dict[str, Any]:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return containers[0] if isinstance(containers[0], dict) else {}


def _run(words: list[str], *, env: dict[str, str], cwd: str | None) -> int:
    if cwd is not None and not Path(cwd).is_dir():
        raise Unavailable(f"the pod's working directory {cwd} is gone: is the pod still running?")
    try:
        completed = subprocess.run(words, env=env, cwd=cwd, check=False)
    except FileNotFoundError:
        click.echo(f'error: exec: "{words[0]}": executable file not found in $PATH', err=True)
        return EXIT_NOT_FOUND
    except PermissionError as exc:
        click.echo(f'error: exec: "{words[0]}": {exc.strerror}', err=True)
        return EXIT_CANNOT_RUN
    except OSError as exc:
        raise Invalid(f'exec: "{words[0]}": {exc.strerror or exc}') from exc
    code = completed.returncode
    return 128 - code if code < 0 else code
