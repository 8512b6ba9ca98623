"""``funcmesh traces [TRACE_ID] [--function F | --service S] [--limit N] [-o json|yaml]``.

The traces the mesh kept, the most recently active first, each as a tree: one row per span
(one hop through the mesh), a call's callee indented under its caller, with the request, the
status answered, the duration and Envoy's response flags. ``--function`` and ``--service``
look in the namespace of ``-n`` (or the context's) unless ``-A``. ``-o`` prints the API's
JSON (or YAML) instead.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import click

from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_value, format_table
from funcmesh.cli.session import session_of

HEADERS = ("SPAN", "REQUEST", "STATUS", "DURATION", "FLAGS")
INDENT = "  "


@click.command("traces")
@click.argument("trace_id", required=False, metavar="[TRACE_ID]")
@click.option("--function", metavar="NAME", help="Only traces with a call to this function.")
@click.option("--service", metavar="NAME", help="Only traces with a call to this Service.")
@click.option(
    "-A", "--all-namespaces", is_flag=True, help="Look for --function/--service in every namespace."
)
@click.option(
    "--limit",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    metavar="N",
    help="At most N traces.",
)
@output_option("json", "yaml")
@global_options
@click.pass_context
def traces(
    ctx: click.Context,
    /,
    trace_id: str | None,
    function: str | None,
    service: str | None,
    all_namespaces: bool,
    limit: int,
    output: str | None,
) -> None:
    """Show recent traces through the mesh as trees of spans, or the trace TRACE_ID."""
    session = session_of(ctx)
    client = session.client()
    if trace_id is not None:
        found: Sequence[Mapping[str, Any]] = [client.trace(trace_id)]
    else:
        filtered = function is not None or service is not None
        found = client.traces(
            function=function,
            service=service,
            namespace=session.namespace if filtered and not all_namespaces else None,
            limit=limit,
        )
    if output is not None:
        value = found[0] if trace_id is not None else {"traces": list(found)}
        click.echo(dump_value(value, output=output), nl=False)
        return
    if not found:
        click.echo("No traces found.", err=True)
        return
    click.echo("\n\n".join(trace_text(trace) for trace in found))


def trace_text(trace: Mapping[str, Any]) -> str:
    """A trace's heading line and its spans as an indented table."""
    spans = trace.get("spans") or []
    count = len(spans)
    heading = (
        f"TRACE {trace.get('traceId')}   {start_time(str(trace.get('startTimeUnixNano', '0')))}"
        f"   {duration(trace.get('durationMs'))}   {count} span{'s' if count != 1 else ''}"
    )
    rows = [span_row(span, depth) for span, depth in span_tree(spans)]
    return heading + "\n" + format_table(HEADERS, rows)


def span_tree(spans: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], int]]:
    """The spans depth first, children by start time; a span whose parent is not kept (the
    caller outside the mesh, or a span already dropped) is a root."""
    ordered = sorted(spans, key=lambda span: int(span.get("startTimeUnixNano") or 0))
    ids = {span.get("spanId") for span in ordered}
    children: dict[str, list[Mapping[str, Any]]] = {}
    roots = []
    for span in ordered:
        parent = span.get("parentSpanId")
        if parent in ids and parent != span.get("spanId"):
            children.setdefault(str(parent), []).append(span)
        else:
            roots.append(span)
    stack = [(span, 0) for span in reversed(roots)]
    seen: set[str] = set()
    while stack:
        span, depth = stack.pop()
        span_id = str(span.get("spanId"))
        if span_id in seen:  # a span id reused by a broken client: print it once
            continue
        seen.add(span_id)
        yield span, depth
        stack.extend((child, depth + 1) for child in reversed(children.get(span_id, [])))


def span_row(span: Mapping[str, Any], depth: int) -> list[str]:
    attributes = span.get("attributes") or {}
    method = attributes.get("http.request.method_original") or attributes.get(
        "http.request.method", ""
    )
    request = f"{method} {attributes.get('url.path', '')}".strip()
    status = span.get("statusCode") or 0
    return [
        INDENT * depth + str(span.get("name") or "-"),
        request or "-",
        str(status) if status else "-",
        duration(span.get("durationMs")),
        str(attributes.get("funcmesh.response_flags", "-")),
    ]


def duration(milliseconds: Any) -> str:
    if not isinstance(milliseconds, int | float):
        return "-"
    return f"{milliseconds:.1f} ms" if milliseconds >= 10 else f"{milliseconds:.2f} ms"


def start_time(unix_nano: str) -> str:
    """``2025-11-27T07:50:01.123Z`` (UTC, milliseconds), as the access log writes times."""
    try:
        nanoseconds = int(unix_nano)
    except ValueError:
        return "-"
    moment = datetime.datetime.fromtimestamp(nanoseconds / 1e9, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
