"""``get KIND [NAME...]``: objects as kubectl shows them.

Tables come from the server (a meta.k8s.io Table: ``-o wide`` adds the columns of priority > 0,
``-A`` a NAMESPACE column first); ``-o yaml|json`` prints one object as itself and several as a
``kind: List``; ``-o name`` prints ``function.kubeless.io/NAME``; ``-w`` goes on with a line
per change (``get_watch``). Read-only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import (
    cell_text,
    dump_objects,
    format_table,
    object_reference,
    report_error,
)
from funcmesh.cli.session import session_of
from funcmesh.errors import FuncmeshError, Invalid
from funcmesh.model.kinds import ResourceType, find_resource
from funcmesh.model.objects import RawObject, namespace_of
from funcmesh.model.selectors import parse_selector

if TYPE_CHECKING:
    from funcmesh.client.responses import Table


@click.command("get")
@click.argument("kind")
@click.argument("names", nargs=-1)
@output_option("yaml", "json", "wide", "name")
@click.option("-l", "--selector", metavar="SELECTOR", help="Label selector, e.g. app=web.")
@click.option("-A", "--all-namespaces", is_flag=True, help="Objects of every namespace.")
@click.option("-w", "--watch", is_flag=True, help="After the table, print a line per change.")
@global_options
@click.pass_context
def get(
    ctx: click.Context,
    kind: str,
    names: Sequence[str],
    output: str | None,
    selector: str | None,
    all_namespaces: bool,
    watch: bool,
) -> None:
    """Show objects of one kind (functions, pods, namespaces, events), of several
    (``deployments,services``), or named as KIND/NAME (``pod/web-x2k``), as kubectl does."""
    groups = _requested(kind, names)
    if selector:
        parse_selector(selector)  # a syntax error is reported here, not by the server
    if any(wanted for _, wanted in groups) and all_namespaces:
        raise Invalid("a name cannot be looked up across all namespaces: drop -A or the names")
    if watch:
        if len(groups) > 1:
            raise Invalid("watch is only supported on one kind of object at a time")
        rt, wanted = groups[0]
        _watch(ctx, rt, wanted, output, selector, all_namespaces=all_namespaces and rt.namespaced)
        return
    failed = False
    for index, (rt, wanted) in enumerate(groups):
        every_namespace = all_namespaces and rt.namespaced
        if index and output not in ("yaml", "json", "name"):
            click.echo()  # kubectl parts the tables of several kinds with a blank line
        if output in ("yaml", "json", "name"):
            failed |= _print_objects(
                ctx, rt, wanted, output, selector, all_namespaces=every_namespace
            )
        else:
            failed |= _print_tables(ctx, rt, wanted, output == "wide", selector, every_namespace)
    if failed:
        ctx.exit(1)


def _requested(kind: str, names: Sequence[str]) -> list[tuple[ResourceType, tuple[str, ...]]]:
    """The kinds and names of ``get KIND [NAME...]``, ``get K1,K2`` or ``get KIND/NAME...``."""
    if "/" not in kind:
        kinds = [find_resource(part) for part in kind.split(",") if part]
        if not kinds:
            raise Invalid("name a kind of object, e.g. functions")
        if len(kinds) > 1 and names:
            raise Invalid("names cannot be given with several kinds: use KIND/NAME for each")
        return [(rt, tuple(names)) for rt in kinds]
    groups: dict[str, tuple[ResourceType, list[str]]] = {}
    for argument in (kind, *names):
        type_name, slash, name = argument.partition("/")
        if not slash or not type_name or not name:
            raise Invalid(
                f"{argument!r}: with KIND/NAME every argument must be KIND/NAME "
                "(there is no need to give the kind on its own)"
            )
        rt = find_resource(type_name)
        groups.setdefault(rt.key, (rt, []))[1].append(name)
    return [(rt, tuple(wanted)) for rt, wanted in groups.values()]


def _watch(
    ctx: click.Context,
    rt: ResourceType,
    names: Sequence[str],
    output: str | None,
    selector: str | None,
    *,
    all_namespaces: bool,
) -> None:
    if len(names) > 1:
        raise Invalid("-w watches one object or a list: give at most one name")
    if output not in (None, "wide"):
        raise Invalid(f"-w prints table lines: -o {output} is not supported with it")
    from funcmesh.cli.get_watch import watch_tables

    session = session_of(ctx)
    watch_tables(
        session.client(),
        rt,
        session.namespace,
        name=names[0] if names else None,
        selector=selector,
        wide=output == "wide",
        all_namespaces=all_namespaces,
        echo=lambda line: click.echo(line),
    )


def _print_objects(
    ctx: click.Context,
    rt: ResourceType,
    names: Sequence[str],
    output: str,
    selector: str | None,
    *,
    all_namespaces: bool,
) -> bool:
    session = session_of(ctx)
    client = session.client()
    objects: list[RawObject] = []
    failed = False
    if names:
        for name in names:
            try:
                objects.append(client.get(rt, session.namespace, name))
            except FuncmeshError as exc:
                report_error(exc)
                failed = True
    else:
        listing = client.list(
            rt, session.namespace, selector=selector, all_namespaces=all_namespaces
        )
        objects = listing.items
        if not objects:
            _no_resources(rt, session.namespace, all_namespaces=all_namespaces)
            return False
    if output == "name":
        for obj in objects:
            click.echo(object_reference(rt, obj))
    elif objects or not names:
        click.echo(dump_objects(objects, output=output, single=len(names) == 1), nl=False)
    return failed


def _print_tables(
    ctx: click.Context,
    rt: ResourceType,
    names: Sequence[str],
    wide: bool,
    selector: str | None,
    all_namespaces: bool,
) -> bool:
    session = session_of(ctx)
    client = session.client()
    tables: list[Table] = []
    failed = False
    if names:
        for name in names:
            try:
                tables.append(client.table(rt, session.namespace, name))
            except FuncmeshError as exc:
                report_error(exc)
                failed = True
    else:
        tables.append(
            client.table(rt, session.namespace, selector=selector, all_namespaces=all_namespaces)
        )
    if any(table.rows for table in tables):
        click.echo(render_tables(tables, wide=wide, with_namespace=all_namespaces))
    elif not names:
        _no_resources(rt, session.namespace, all_namespaces=all_namespaces)
    return failed


def render_tables(tables: Sequence[Table], *, wide: bool, with_namespace: bool) -> str:
    """The rows of ``tables`` (same columns) under the first one's headers."""
    columns = tables[0].columns
    shown = [i for i, column in enumerate(columns) if wide or column.priority == 0]
    headers = [columns[i].name.upper() for i in shown]
    rows = []
    for table in tables:
        for row in table.rows:
            cells = [cell_text(row.cells[i]) if i < len(row.cells) else "" for i in shown]
            rows.append([namespace_of(row.object), *cells] if with_namespace else cells)
    return format_table(["NAMESPACE", *headers] if with_namespace else headers, rows)


def _no_resources(rt: ResourceType, namespace: str, *, all_namespaces: bool) -> None:
    where = f" in {namespace} namespace" if rt.namespaced and not all_namespaces else ""
    click.echo(f"No resources found{where}.", err=True)
