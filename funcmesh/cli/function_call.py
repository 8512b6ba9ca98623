"""``function call`` and ``function logs``: talking to a running function and reading its output.

``call`` goes through the API's service proxy with Kubeless's event headers; data that parses
as any JSON value (arrays and numbers too: the fix of Kubeless bug 7.4) is sent as
``application/json``, other text as ``text/plain``. A 2xx answer's body goes to stdout as is;
anything else goes to stderr and exits 1. This module must not change objects.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.errors import FuncmeshError, Invalid
from funcmesh.model.objects import rfc3339

EVENT_NAMESPACE = "cli.kubeless.io"
EVENT_ID_BYTES = 11  # 15 url-safe characters, as Kubeless's GetRandString
TIMEOUT_STATUSES = (408, 504)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    method: str
    body: bytes | None
    headers: dict[str, str]


def data_content_type(data: bytes) -> str:
    """``application/json`` for any JSON value, ``text/plain`` for other text, else octets."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    try:
        json.loads(text)
    except ValueError:
        return "text/plain"
    return "application/json"


def build_call_request(
    data: bytes | None, *, method: str | None, event_id: str, event_time: str
) -> CallRequest:
    """No data: GET; data: POST with Content-Type and event-type; always the event headers."""
    headers = {
        "event-id": event_id,
        "event-time": event_time,
        "event-namespace": EVENT_NAMESPACE,
    }
    if not data:
        return CallRequest(method=(method or "GET").upper(), body=None, headers=headers)
    content_type = data_content_type(data)
    headers |= {"Content-Type": content_type, "event-type": content_type}
    return CallRequest(method=(method or "POST").upper(), body=data, headers=headers)


@click.command("call")
@click.argument("name")
@click.option("-d", "--data", help="Request body (JSON is sent as application/json).")
@click.option("--data-file", metavar="FILE", help="Read the request body from FILE (- for stdin).")
@click.option("--method", "-X", metavar="METHOD", help="HTTP method (default GET, or POST).")
@click.option("--path", default="", metavar="PATH", help="Path (and query) after the function.")
@click.option(
    "--async", "is_async", is_flag=True, help="Queue the call; print its id (see `call get ID`)."
)
@click.option("--callback-url", metavar="URL", help="With --async: POST the result to URL.")
@global_options
@click.pass_context
def call(
    ctx: click.Context,
    name: str,
    data: str | None,
    data_file: str | None,
    method: str | None,
    path: str,
    is_async: bool,
    callback_url: str | None,
) -> None:
    """Call a function and print its answer (with --async: queue it and print the call id)."""
    if callback_url is not None and not is_async:
        raise click.UsageError("--callback-url needs --async")
    if data is not None and data_file is not None:
        raise click.UsageError("give either --data or --data-file, not both")
    body = _read_data_file(data_file) if data_file is not None else (data or "").encode()
    request = build_call_request(
        body,
        method=method,
        event_id=secrets.token_urlsafe(EVENT_ID_BYTES),
        event_time=rfc3339(),
    )
    session = session_of(ctx)
    if is_async:
        headers = request.headers | ({"X-Callback-Url": callback_url} if callback_url else {})
        call_id = session.client().async_call(
            session.namespace,
            name,
            method=request.method,
            path=path,
            body=request.body,
            headers=headers,
        )
        click.echo(call_id)
        return
    response = session.client().proxy(
        session.namespace,
        name,
        method=request.method,
        path=path,
        body=request.body,
        headers=request.headers,
    )
    to_stderr = not response.ok
    click.echo(response.body, nl=False, err=to_stderr)  # bytes go out unchanged
    if not response.body.endswith(b"\n") and (response.ok or response.body):
        click.echo(b"\n", nl=False, err=to_stderr)
    if response.ok:
        return
    if response.status in TIMEOUT_STATUSES:
        click.echo("Request timeout exceeded", err=True)
    raise FuncmeshError(
        f"function {name} answered {response.status} {response.reason_phrase}".rstrip()
    )


def _read_data_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise Invalid(f"--data-file {path}: {exc.strerror or exc}") from None


@click.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, metavar="N", help="Only the last N lines.")
@click.option("--build", is_flag=True, help="The dependency build's log instead.")
@click.option("--timestamps", is_flag=True, help="Put the time each line came before it.")
@global_options
@click.pass_context
def logs(
    ctx: click.Context, name: str, follow: bool, tail: int | None, build: bool, timestamps: bool
) -> None:
    """Print a function's log (its instances', or its dependency build's)."""
    session = session_of(ctx)
    lines = session.client().function_log(
        session.namespace,
        name,
        follow=follow,
        tail_lines=tail if tail is not None and tail >= 0 else None,
        build=build,
        timestamps=timestamps,
    )
    for line in lines:
        click.echo(line)
