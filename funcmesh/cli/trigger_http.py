"""``funcmesh trigger http``: Kubeless's HTTP trigger commands.

``create`` and ``update`` check the trigger as the API will before sending it (the API also
checks that the function and the Secrets exist). ``update`` changes only the flags given, where
Kubeless re-applied ``--enableTLSAcme`` every time (bug 7.11); ``--no-cors``, ``--no-tls``,
``--no-basic-auth`` switch a feature off again. ``ls`` adds HOST and PATH to Kubeless's columns.
The gateway is always funcmesh's own: ``--gateway`` is kept on the object for Kubernetes export.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import click

from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_objects, dump_value, format_table
from funcmesh.cli.session import session_of
from funcmesh.errors import Invalid
from funcmesh.model.http_triggers import parse_http_trigger
from funcmesh.model.kinds import HTTP_TRIGGER
from funcmesh.model.objects import RawObject, name_of, namespace_of

LIST_HEADERS = ("NAME", "NAMESPACE", "HOST", "PATH", "FUNCTION NAME")
GATEWAYS = ("nginx", "traefik", "kong")


@click.group(cls=LazyGroup, aliases={"list": "ls"})
@global_options
def http() -> None:
    """HTTP triggers: call a function for requests to a host and path on the gateway."""


@http.command("create")
@click.argument("name")
@click.option("--function-name", required=True, metavar="NAME", help="Function to call.")
@click.option("--hostname", metavar="HOST", help="Host to match (default: any host).")
@click.option("--path", metavar="PATH", help="Path prefix to match (default: /).")
@click.option("--basic-auth-secret", metavar="SECRET", help="Secret with an htpasswd key 'auth'.")
@click.option("--tls-secret", metavar="SECRET", help="kubernetes.io/tls Secret for the host.")
@click.option("--cors-enable", is_flag=True, help="Answer CORS preflights, allow any origin.")
@click.option("--gateway", type=click.Choice(GATEWAYS), help="Kept for Kubernetes export.")
@click.option("--dryrun", is_flag=True, help="Print the HTTPTrigger instead of sending it.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def create(
    ctx: click.Context,
    /,
    name: str,
    dryrun: bool,
    output: str,
    **flags: Any,
) -> None:
    """Create an HTTP trigger."""
    session = session_of(ctx)
    obj = build_http_trigger(name, session.namespace, spec_changes(flags, allow_empty=True))
    if dryrun:
        click.echo(dump_value(obj, output=output), nl=False)
        return
    session.client().create(HTTP_TRIGGER, obj)
    click.echo(f"HTTP trigger {name} created in namespace {session.namespace} successfully!")


@http.command("update")
@click.argument("name")
@click.option("--function-name", metavar="NAME", help="New function.")
@click.option("--hostname", metavar="HOST", help="New host.")
@click.option("--path", metavar="PATH", help="New path prefix.")
@click.option("--basic-auth-secret", metavar="SECRET", help="New htpasswd Secret.")
@click.option("--tls-secret", metavar="SECRET", help="New TLS Secret.")
@click.option("--cors-enable", is_flag=True, default=None, help="Turn CORS on.")
@click.option("--gateway", type=click.Choice(GATEWAYS), help="Kept for Kubernetes export.")
@click.option("--no-cors", is_flag=True, help="Turn CORS off.")
@click.option("--no-basic-auth", is_flag=True, help="Drop basic auth.")
@click.option("--no-tls", is_flag=True, help="Drop the TLS Secret.")
@click.option("--dryrun", is_flag=True, help="Print the updated trigger, change nothing.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def update(
    ctx: click.Context,
    /,
    name: str,
    dryrun: bool,
    output: str,
    **flags: Any,
) -> None:
    """Change what the flags give; everything else stays as it is."""
    changes = spec_changes(flags, allow_empty=False)
    session = session_of(ctx)
    updated = session.update(
        HTTP_TRIGGER, name, lambda current: apply_changes(current, changes), dry_run=dryrun
    )
    if dryrun:
        click.echo(dump_value(updated, output=output), nl=False)
        return
    click.echo(f"HTTP trigger {name} updated in namespace {session.namespace} successfully!")


@http.command("delete")
@click.argument("names", nargs=-1, required=True)
@global_options
@click.pass_context
def delete(ctx: click.Context, names: Sequence[str]) -> None:
    """Delete HTTP triggers (an error for one does not stop the others)."""
    session_of(ctx).delete_each(ctx, HTTP_TRIGGER, names, noun="HTTP trigger")


@http.command("ls")
@output_option("yaml", "json")
@global_options
@click.pass_context
def list_triggers(ctx: click.Context, output: str | None) -> None:
    """List the HTTP triggers of the namespace."""
    session = session_of(ctx)
    items = sorted(session.client().list(HTTP_TRIGGER, session.namespace).items, key=name_of)
    if output in ("yaml", "json"):
        click.echo(dump_objects(items, output=output, single=False), nl=False)
    elif items:
        click.echo(format_table(LIST_HEADERS, [trigger_row(item) for item in items]))
    else:
        click.echo(f"No HTTP triggers found in {session.namespace} namespace.", err=True)


_FLAG_FIELDS = {
    "function_name": "function-name",
    "hostname": "host-name",
    "path": "path",
    "basic_auth_secret": "basic-auth-secret",
    "tls_secret": "tls-secret",
    "gateway": "gateway",
}
_REMOVE = object()


def spec_changes(flags: Mapping[str, Any], *, allow_empty: bool) -> dict[str, Any]:
    """The spec fields the flags set; ``_REMOVE`` marks a field to drop."""
    changes: dict[str, Any] = {
        field: flags[flag] for flag, field in _FLAG_FIELDS.items() if flags.get(flag) is not None
    }
    if "path" in changes:
        changes["path"] = changes["path"].lstrip("/")  # stored without "/", as Kubeless did
    _switch(changes, flags, on="cors_enable", off="no_cors", field="cors-enable")
    for off, field in (("no_basic_auth", "basic-auth-secret"), ("no_tls", "tls-secret")):
        if flags.get(off):
            if field in changes:
                raise Invalid(f"--{off.replace('_', '-')} cannot go with --{field}")
            changes[field] = _REMOVE
    if not changes and not allow_empty:
        raise Invalid(
            "nothing to update: give --function-name, --hostname, --path, --basic-auth-secret, "
            "--tls-secret, --cors-enable or one of --no-cors, --no-basic-auth, --no-tls"
        )
    return changes


def _switch(
    changes: dict[str, Any], flags: Mapping[str, Any], *, on: str, off: str, field: str
) -> None:
    if flags.get(on) and flags.get(off):
        raise Invalid("--cors-enable cannot go with --no-cors")
    if flags.get(on):
        changes[field] = True
    elif flags.get(off):
        changes[field] = _REMOVE


def build_http_trigger(name: str, namespace: str, spec: Mapping[str, Any]) -> RawObject:
    """The HTTPTrigger the flags describe, checked as the API will check it."""
    obj: RawObject = {
        "apiVersion": HTTP_TRIGGER.api_version,
        "kind": HTTP_TRIGGER.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"created-by": "kubeless"}},
        "spec": {field: value for field, value in spec.items() if value is not _REMOVE},
    }
    parse_http_trigger(obj)
    return obj


def apply_changes(current: RawObject, changes: Mapping[str, Any]) -> RawObject:
    """``current`` with the given spec fields replaced or dropped, checked."""
    updated = copy.deepcopy(current)
    spec = updated.setdefault("spec", {})
    for field, value in changes.items():
        if value is _REMOVE:
            spec.pop(field, None)
        else:
            spec[field] = value
    parse_http_trigger(updated)
    return updated


def trigger_row(obj: RawObject) -> list[str]:
    spec = obj.get("spec") or {}
    path = str(spec.get("path") or "")
    return [
        name_of(obj),
        namespace_of(obj),
        str(spec.get("host-name") or "*"),
        path if path.startswith("/") else "/" + path,
        str(spec.get("function-name") or ""),
    ]
