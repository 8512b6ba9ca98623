"""``function ls``, ``describe`` and ``top``: what the functions of a namespace look like.

``ls`` makes one list request whatever the number of functions (no request per function) and
shows Kubeless's columns, ``-o wide`` adding MEMORY, ENV and LABEL with headers and cells
aligned (the fix of Kubeless bug 7.3). Read-only: nothing here changes an object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_objects, dump_value, format_duration_ms, format_table
from funcmesh.cli.session import session_of
from funcmesh.errors import NotFound
from funcmesh.model.conditions import function_status_text
from funcmesh.model.kinds import FUNCTION
from funcmesh.model.objects import RawObject, labels_of, name_of, namespace_of

LIST_HEADERS = ("NAME", "NAMESPACE", "HANDLER", "RUNTIME", "DEPENDENCIES", "STATUS")
WIDE_HEADERS = ("MEMORY", "ENV", "LABEL")
TOP_HEADERS = (
    "NAME",
    "NAMESPACE",
    "CALLS",
    "FAILURES",
    "P50",
    "P99",
    "INSTANCES",
    "COLD-STARTS",
)
DESCRIBE_LABEL_WIDTH = 15


@click.command("ls")
@click.argument("names", nargs=-1)
@output_option("yaml", "json", "wide")
@global_options
@click.pass_context
def list_functions(ctx: click.Context, names: Sequence[str], output: str | None) -> None:
    """List functions (all of the namespace, or the NAMES given)."""
    session = session_of(ctx)
    namespace = session.namespace
    items = sorted(session.client().list(FUNCTION, namespace).items, key=name_of)
    missing: list[str] = []
    if names:
        by_name = {name_of(item): item for item in items}
        missing = [name for name in names if name not in by_name]
        items = [by_name[name] for name in dict.fromkeys(names) if name in by_name]
    if output in ("yaml", "json"):
        click.echo(dump_objects(items, output=output, single=False), nl=False)
    elif items:
        click.echo(function_table(items, wide=output == "wide"))
    elif not names:
        click.echo(f"No functions found in {namespace} namespace.", err=True)
    for name in missing:
        click.echo(f'error: function "{name}" not found in namespace "{namespace}"', err=True)
    if missing:
        ctx.exit(1)


def function_table(items: Sequence[RawObject], *, wide: bool) -> str:
    headers = LIST_HEADERS + WIDE_HEADERS if wide else LIST_HEADERS
    return format_table(headers, [function_row(item, wide=wide) for item in items])


def function_row(obj: RawObject, *, wide: bool) -> list[str]:
    spec = obj.get("spec") or {}
    row = [
        name_of(obj),
        namespace_of(obj),
        str(spec.get("handler") or ""),
        str(spec.get("runtime") or ""),
        dependencies_text(spec),
        function_status_text(obj),
    ]
    if wide:
        env = "\n".join(f"{item.get('name')}={item.get('value', '')}" for item in _env(spec))
        labels = "\n".join(f"{key}={value}" for key, value in sorted(labels_of(obj).items()))
        row += [_memory(spec), env, labels]
    return row


def dependencies_text(spec: Mapping[str, Any]) -> str:
    """One line per dependency: requirement lines, or ``name: version`` from a package.json."""
    deps = str(spec.get("deps") or "")
    if str(spec.get("runtime") or "").startswith("nodejs"):
        try:
            package = json.loads(deps) if deps.strip() else {}
        except ValueError:
            package = None
        if isinstance(package, dict) and isinstance(package.get("dependencies"), dict):
            return "\n".join(f"{k}: {v}" for k, v in package["dependencies"].items())
    lines = (line.strip() for line in deps.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#"))


@click.command("describe")
@click.argument("name")
@output_option("yaml", "json")
@global_options
@click.pass_context
def describe(ctx: click.Context, name: str, output: str | None) -> None:
    """Show one function in detail."""
    session = session_of(ctx)
    client = session.client()
    obj = client.get(FUNCTION, session.namespace, name)
    if output:
        click.echo(dump_value(obj, output=output), nl=False)
        return
    click.echo(
        describe_text(obj, instances=client.function_stats(session.namespace, name).instances)
    )


def describe_text(obj: RawObject, *, instances: int) -> str:
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    runtime = str(spec.get("runtime") or "")
    if status.get("runtime") and status["runtime"] != runtime:
        runtime = f"{runtime} (running as {status['runtime']})"
    fields = [
        ("Name", name_of(obj)),
        ("Namespace", namespace_of(obj)),
        ("Handler", str(spec.get("handler") or "")),
        ("Runtime", runtime),
        ("Label", json.dumps(labels_of(obj), separators=(",", ":"))),
        ("Envvar", json.dumps(_env(spec), separators=(",", ":"))),
        *([("Secrets", secrets)] if (secrets := secrets_text(spec)) else []),
        ("Memory", _memory(spec) or "0"),
        ("Dependencies", str(spec.get("deps") or "").rstrip("\n")),
        ("Timeout", str(spec.get("timeout") or "180")),
        ("Status", function_status_text(obj)),
        ("Instances", str(instances)),
    ]
    lines = [_describe_line(label, value) for label, value in fields]
    lines.append("Conditions:")
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    rows = [
        [str(c.get(key) or "") for key in ("type", "status", "reason", "message")]
        for c in conditions
    ]
    table = format_table(("TYPE", "STATUS", "REASON", "MESSAGE"), rows) if rows else "<none>"
    lines += [f"  {line}" for line in table.splitlines()]
    return "\n".join(lines)


def secrets_text(spec: Mapping[str, Any]) -> str:
    """The mounted Secrets, one per line: ``NAME at /PATH`` (names only, never a value)."""
    volumes = _pod_spec(spec).get("volumes")
    secret_of = {
        volume.get("name"): (volume.get("secret") or {}).get("secretName")
        for volume in (volumes if isinstance(volumes, list) else [])
        if isinstance(volume, dict) and isinstance(volume.get("secret"), dict)
    }
    mounts = _first_container(spec).get("volumeMounts")
    return "\n".join(
        f"{secret_of[mount.get('name')]} at {mount.get('mountPath')}"
        for mount in (mounts if isinstance(mounts, list) else [])
        if isinstance(mount, dict) and secret_of.get(mount.get("name"))
    )


def _describe_line(label: str, value: str) -> str:
    first, *rest = value.splitlines() or [""]
    indent = " " * DESCRIBE_LABEL_WIDTH
    text = f"{label + ':':<{DESCRIBE_LABEL_WIDTH}}{first}".rstrip()
    return "\n".join([text, *(f"{indent}{line}".rstrip() for line in rest)])


@click.command("top")
@click.option("-f", "--function", "function_name", metavar="NAME", help="Only this function.")
@output_option("json", "yaml")
@global_options
@click.pass_context
def top(ctx: click.Context, function_name: str | None, output: str | None) -> None:
    """Calls, failures, latency and instances per function."""
    session = session_of(ctx)
    client = session.client()
    namespace = session.namespace
    if function_name:
        names = [function_name]
    else:
        names = sorted(name_of(item) for item in client.list(FUNCTION, namespace).items)
    records = []
    for name in names:
        try:
            stats = client.function_stats(namespace, name)
        except NotFound:
            if function_name:
                raise
            continue  # deleted since the list
        records.append(
            {
                "function": name,
                "namespace": namespace,
                "calls": stats.calls,
                "failures": stats.failures,
                "p50_ms": stats.p50_ms,
                "p99_ms": stats.p99_ms,
                "instances": stats.instances,
                "coldStarts": stats.cold_starts,
            }
        )
    if output:
        click.echo(dump_value(records, output=output), nl=False)
    elif records:
        click.echo(format_table(TOP_HEADERS, [_top_row(record) for record in records]))
    else:
        click.echo(f"No functions found in {namespace} namespace.", err=True)


def _top_row(record: Mapping[str, Any]) -> list[str]:
    return [
        str(record["function"]),
        str(record["namespace"]),
        str(record["calls"]),
        str(record["failures"]),
        format_duration_ms(record["p50_ms"]),
        format_duration_ms(record["p99_ms"]),
        str(record["instances"]),
        str(record["coldStarts"]),
    ]


def _pod_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        pod_spec = spec["deployment"]["spec"]["template"]["spec"]
    except (KeyError, TypeError):
        return {}
    return pod_spec if isinstance(pod_spec, dict) else {}


def _first_container(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        container = _pod_spec(spec)["containers"][0]
    except (KeyError, IndexError, TypeError):
        return {}
    return container if isinstance(container, dict) else {}


def _env(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    env = _first_container(spec).get("env")
    return [item for item in env if isinstance(item, dict)] if isinstance(env, list) else []


def _memory(spec: Mapping[str, Any]) -> str:
    resources = _first_container(spec).get("resources") or {}
    for section in ("requests", "limits"):
        value = (resources.get(section) or {}).get("memory")
        if value:
            return str(value)
    return ""
