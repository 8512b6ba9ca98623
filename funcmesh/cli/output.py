"""How the CLI shows things: plain aligned tables (kubectl style), YAML/JSON of objects, names.

Tables have no boxes: left-aligned columns three spaces apart; a cell with several lines makes
its row span several lines. Errors become ``error: ...`` lines. Nothing here talks to the API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import zip_longest
from typing import Any

import click

from funcmesh.errors import FuncmeshError, Invalid
from funcmesh.model.kinds import ResourceType
from funcmesh.model.objects import RawObject, name_of

COLUMN_GAP = "   "


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned text of ``rows`` under ``headers``; multi-line cells continue on the next lines."""
    split_rows = [[cell.splitlines() or [""] for cell in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in split_rows:
        for index, lines in enumerate(row):
            widths[index] = max(widths[index], *(len(line) for line in lines))
    lines = [_join(headers, widths)]
    for row in split_rows:
        for parts in zip_longest(*row, fillvalue=""):
            lines.append(_join(parts, widths))
    return "\n".join(lines)


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return COLUMN_GAP.join(
        cell.ljust(width) for cell, width in zip(cells, widths, strict=False)
    ).rstrip()


def resource_label(rt: ResourceType) -> str:
    """``function.kubeless.io`` or ``namespace``: how kubectl names a kind in messages."""
    return f"{rt.singular}.{rt.group}" if rt.group else rt.singular


def object_reference(rt: ResourceType, obj: RawObject) -> str:
    """``function.kubeless.io/hello``, as ``kubectl apply`` and ``-o name`` print it."""
    return f"{resource_label(rt)}/{name_of(obj)}"


def list_object(items: Sequence[RawObject], *, resource_version: str = "") -> RawObject:
    """The ``kind: List`` kubectl prints for several objects."""
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": list(items),
        "metadata": {"resourceVersion": resource_version},
    }


def dump_value(value: Any, *, output: str) -> str:
    """YAML or JSON text of ``value``, ending with a newline."""
    from funcmesh.model.codec import dump_json, dump_yaml

    if output == "json":
        return dump_json(value) + "\n"
    return dump_yaml(value)


def dump_objects(objects: Sequence[RawObject], *, output: str, single: bool) -> str:
    """One object as itself when ``single``, else a ``kind: List`` (as kubectl does)."""
    value = objects[0] if single and len(objects) == 1 else list_object(objects)
    return dump_value(value, output=output)


def cell_text(value: Any) -> str:
    """A Table cell as text: ``<none>`` for null, lowercase booleans, lists joined by commas."""
    if value is None:
        return "<none>"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(cell_text(item) for item in value)
    return str(value)


def format_duration_ms(value_ms: float | None) -> str:
    """``850µs``, ``1.2ms``, ``35ms``, ``2.5s`` (or ``-`` when unknown)."""
    if value_ms is None:
        return "-"
    if value_ms < 1:
        return f"{value_ms * 1000:.0f}µs"
    if value_ms < 10:
        return f"{value_ms:.1f}ms"
    if value_ms < 1000:
        return f"{value_ms:.0f}ms"
    return f"{value_ms / 1000:.1f}s"


def error_lines(exc: FuncmeshError) -> list[str]:
    """``error: <first line>``; further message lines and unmentioned causes indented."""
    message = str(exc).strip() or type(exc).__name__
    first, *rest = message.splitlines()
    lines = [f"error: {first}", *(f"  {line}" for line in rest)]
    if isinstance(exc, Invalid):
        for cause in exc.causes:
            if cause.message and cause.message not in message:
                field = f"{cause.field}: " if cause.field else ""
                lines.append(f"  {field}{cause.message}")
    return lines


def for_each_name(ctx: click.Context, names: Sequence[str], act: Callable[[str], str]) -> None:
    """Run ``act`` on each name and print the line it returns; an error for one name is
    reported and does not stop the others, and the command then exits 1."""
    failed = False
    for name in names:
        try:
            click.echo(act(name))
        except FuncmeshError as exc:
            report_error(exc)
            failed = True
    if failed:
        ctx.exit(1)


def report_error(exc: FuncmeshError) -> None:
    """Print the error lines of ``exc`` on stderr (for commands that go on after an error)."""
    for line in error_lines(exc):
        click.echo(line, err=True)
