"""``funcmesh call get ID``: the outcome of an async call (``function call --async``).

Prints the phase, function, answer status, duration and callback outcome, then the function's
body; exits 1 when the call failed or was interrupted (a call still pending or running exits 0).
Read-only: it never changes calls or objects.
"""

from __future__ import annotations

import base64
from typing import Any

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.errors import FuncmeshError

FAILED_PHASES = frozenset({"Failed", "Interrupted"})


@click.group("call")
@global_options
def call() -> None:
    """Async calls (queued with `function call --async`)."""


@call.command("get")
@click.argument("call_id", metavar="ID")
@global_options
@click.pass_context
def get(ctx: click.Context, call_id: str) -> None:
    """Show an async call's outcome: phase, status, duration, callback, body."""
    document = session_of(ctx).client().get_call(call_id)
    for line in describe_call(document):
        click.echo(line)
    body = _body_of(document)
    if body is not None:
        click.echo(body, nl=False)
        if not body.endswith(b"\n"):
            click.echo()
    phase = str(document.get("phase"))
    if phase in FAILED_PHASES:
        reason = document.get("error") or f"the function answered {document.get('statusCode')}"
        raise FuncmeshError(f"call {call_id} {phase.lower()}: {reason}")


def describe_call(document: dict[str, Any]) -> list[str]:
    """The header lines ``call get`` prints before the body."""
    duration_s = document.get("durationSeconds")
    lines = [
        f"Call:     {document.get('id')}",
        f"Function: {document.get('function')}",
        f"Phase:    {document.get('phase')}",
        f"Status:   {document.get('statusCode') if document.get('statusCode') else '-'}",
        f"Duration: {f'{duration_s * 1000:.1f} ms' if duration_s is not None else '-'}",
    ]
    if document.get("callbackUrl"):
        callback = document.get("callback") or "pending"
        error = document.get("callbackError")
        lines.append(f"Callback: {callback}" + (f" ({error})" if error else ""))
    return lines


def _body_of(document: dict[str, Any]) -> bytes | None:
    if isinstance(document.get("body"), str):
        return str(document["body"]).encode()
    if isinstance(document.get("bodyBase64"), str):
        return base64.b64decode(str(document["bodyBase64"]))
    return None
