"""``funcmesh function``: the Kubeless function commands; here deploy, update and delete.

``deploy`` and ``update`` check every flag and read the code before they contact the API, then
wait until the function is ready (or failed) unless ``--no-wait``. The other subcommands live in
``function_views`` (ls, describe, top) and ``function_call`` (call, logs) and load lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

import click

from funcmesh.cli.function_flags import (
    FunctionFlags,
    apply_merge_patch,
    build_function,
    build_update_patch,
    check_flags,
    normalize_timeout,
    parse_names,
    parse_pairs,
    require_changes,
    require_deploy_flags,
)
from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_objects, dump_value, for_each_name
from funcmesh.cli.session import Session, session_of
from funcmesh.errors import AlreadyExists, Conflict, FuncmeshError, Invalid
from funcmesh.model.durations import parse_duration_s
from funcmesh.model.function import parse_function
from funcmesh.model.kinds import CRONJOB_TRIGGER, FUNCTION
from funcmesh.model.objects import RawObject, metadata_of, name_of

if TYPE_CHECKING:
    from funcmesh.client.api import ApiClient

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_WAIT_TIMEOUT = "10m"
UPDATE_ATTEMPTS = 3

FUNCTION_COMMANDS = {
    "deploy": "funcmesh.cli.function:deploy",
    "update": "funcmesh.cli.function:update",
    "delete": "funcmesh.cli.function:delete",
    "ls": "funcmesh.cli.function_views:list_functions",
    "describe": "funcmesh.cli.function_views:describe",
    "top": "funcmesh.cli.function_views:top",
    "call": "funcmesh.cli.function_call:call",
    "logs": "funcmesh.cli.function_call:logs",
}


@click.group(
    cls=LazyGroup,
    lazy_commands=FUNCTION_COMMANDS,
    aliases={"list": "ls", "stats": "top"},
)
@global_options
def function() -> None:
    """Deploy, call and inspect functions (kubeless function ...)."""


_SHARED_OPTIONS = (
    click.option("-r", "--runtime", help="Runtime id, e.g. python3.11 or nodejs20."),
    click.option("--handler", help="module_name.handler_name, e.g. hello.handler."),
    click.option("-f", "--from-file", "from_file", metavar="FILE|URL", help="The code."),
    click.option("-d", "--dependencies", metavar="FILE|URL", help="requirements.txt etc."),
    click.option("-e", "--env", multiple=True, metavar="K=V[,K=V]", help="Environment."),
    click.option("-l", "--label", "labels", multiple=True, metavar="K=V[,K=V]", help="Labels."),
    click.option("--timeout", metavar="SECONDS", help="Per-call timeout (default 180)."),
    click.option("--memory", metavar="QUANTITY", help="Memory request and limit, e.g. 128Mi."),
    click.option("--cpu", metavar="QUANTITY", help="CPU request and limit, e.g. 500m."),
    click.option("--port", type=int, help="Service port and target port (default 8080)."),
    click.option(
        "--secrets",
        multiple=True,
        metavar="NAME[,NAME]",
        help="Secrets whose keys become files at /NAME/KEY and under $FUNCMESH_SECRETS_DIR.",
    ),
    click.option("--dryrun", is_flag=True, help="Print the Function instead of sending it."),
    output_option("yaml", "json", default="yaml"),
    click.option("--no-wait", is_flag=True, help="Return once the API accepted the Function."),
    click.option(
        "--wait-timeout",
        default=DEFAULT_WAIT_TIMEOUT,
        metavar="DURATION",
        help=f"How long to wait for readiness (default {DEFAULT_WAIT_TIMEOUT}).",
    ),
)


def _shared_options(command: F) -> F:
    for option in reversed(_SHARED_OPTIONS):
        command = option(command)
    return command


@click.command("deploy")
@click.argument("name")
@_shared_options
@click.option(
    "--schedule",
    metavar="CRON",
    help="Also create a CronJobTrigger named after the function, calling it on this schedule.",
)
@global_options
@click.pass_context
def deploy(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Deploy a new function."""
    require_deploy_flags(
        runtime=options["runtime"], handler=options["handler"], from_file=options["from_file"]
    )
    wait_timeout_s = parse_duration_s(options["wait_timeout"], what="--wait-timeout")
    session = session_of(ctx)
    flags = _flags_from(name, options)
    obj = build_function(name=name, namespace=session.namespace, flags=flags)
    parse_function(obj)  # the checks the API will run, before anything is sent
    trigger = _scheduled_trigger(name, session.namespace, options["schedule"])
    if options["dryrun"]:
        objects = [obj] if trigger is None else [obj, trigger]
        click.echo(dump_objects(objects, output=options["output"], single=True), nl=False)
        return
    client = session.client()
    click.echo(f"Deploying function {name}...")
    try:
        created = client.create(FUNCTION, obj)
    except AlreadyExists as exc:
        raise AlreadyExists(f"{exc}: change it with funcmesh function update {name}") from exc
    click.echo(f"Function {name} submitted for deployment")
    if trigger is not None:
        _create_scheduled_trigger(client, trigger)
    _wait_unless(options["no_wait"], session, created, timeout_s=wait_timeout_s)


@click.command("update")
@click.argument("name")
@_shared_options
@global_options
@click.pass_context
def update(ctx: click.Context, /, name: str, **options: Any) -> None:
    """Change only what the flags give (env, labels and secrets given replace the old ones)."""
    wait_timeout_s = parse_duration_s(options["wait_timeout"], what="--wait-timeout")
    session = session_of(ctx)
    flags = _flags_from(name, options)
    require_changes(flags)
    if options["dryrun"]:
        current = session.client().get(FUNCTION, session.namespace, name)
        preview = apply_merge_patch(current, build_update_patch(current, flags))
        click.echo(dump_value(preview, output=options["output"]), nl=False)
        return
    client = session.client()
    click.echo(f"Redeploying function {name}...")
    updated = _patch_function(client, session.namespace, name, flags)
    click.echo(f"Function {name} submitted for deployment")
    _wait_unless(options["no_wait"], session, updated, timeout_s=wait_timeout_s)


@click.command("delete")
@click.argument("names", nargs=-1, required=True)
@global_options
@click.pass_context
def delete(ctx: click.Context, names: Sequence[str]) -> None:
    """Delete functions (an error for one does not stop the others)."""
    session = session_of(ctx)
    client = session.client()

    def delete_one(name: str) -> str:
        client.delete(FUNCTION, session.namespace, name)
        return f'function.kubeless.io "{name}" deleted'

    for_each_name(ctx, names, delete_one)


def _scheduled_trigger(name: str, namespace: str, schedule: str | None) -> RawObject | None:
    """The CronJobTrigger ``--schedule`` asks for: named and labelled as Kubeless did."""
    if not schedule:
        return None
    from funcmesh.cli.trigger_cron import build_cronjob_trigger
    from funcmesh.model.schedules import parse_schedule

    try:
        parse_schedule(schedule)
    except Invalid as exc:
        raise Invalid(f"Invalid value for --schedule: {exc}") from exc
    labels = {"created-by": "kubeless", "function": name}
    return build_cronjob_trigger(
        name, namespace, function_name=name, schedule=schedule, payload=None, labels=labels
    )


def _create_scheduled_trigger(client: ApiClient, trigger: RawObject) -> None:
    name, namespace = name_of(trigger), str(metadata_of(trigger)["namespace"])
    try:
        client.create(CRONJOB_TRIGGER, trigger)
    except FuncmeshError as exc:  # the function stays: say what is missing
        raise FuncmeshError(
            f"function {name} was deployed, but its cron trigger was not: {exc}"
        ) from exc
    click.echo(f"Cronjob trigger {name} created in namespace {namespace} successfully!")


def _flags_from(name: str, options: dict[str, Any]) -> FunctionFlags:
    """Parse and check every flag, then read the code and dependency files (or URLs)."""
    flags = FunctionFlags(
        runtime=options["runtime"],
        handler=options["handler"],
        env=parse_pairs(options["env"], flag="--env") if options["env"] else None,
        labels=parse_pairs(options["labels"], flag="--label") if options["labels"] else None,
        timeout=normalize_timeout(options["timeout"]) if options["timeout"] else None,
        memory=options["memory"],
        cpu=options["cpu"],
        port=options["port"],
        secrets=parse_names(options["secrets"]) if options["secrets"] else None,
    )
    check_flags(name, flags)
    if not options["from_file"] and not options["dependencies"]:
        return flags
    from funcmesh.cli.sources import read_dependencies, read_source
    from funcmesh.client.download import fetch_url

    source = read_source(options["from_file"], fetch=fetch_url) if options["from_file"] else None
    deps = (
        read_dependencies(options["dependencies"], fetch=fetch_url)
        if options["dependencies"]
        else None
    )
    return replace(flags, source=source, deps=deps)


def _patch_function(
    client: ApiClient, namespace: str, name: str, flags: FunctionFlags
) -> RawObject:
    """Merge-patch with the read resourceVersion; re-read and retry when someone else wrote."""
    for attempt in range(1, UPDATE_ATTEMPTS + 1):
        current = client.get(FUNCTION, namespace, name)
        patch = build_update_patch(current, flags)
        parse_function(apply_merge_patch(current, patch))
        try:
            return client.merge_patch(FUNCTION, namespace, name, patch)
        except Conflict:
            if attempt == UPDATE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _wait_unless(no_wait: bool, session: Session, obj: RawObject, *, timeout_s: float) -> None:
    name = name_of(obj)
    if no_wait:
        click.echo(f"Check the deployment status with: funcmesh function ls {name}")
        return
    from funcmesh.cli.waiting import FunctionWaiter, progress_view

    generation = int(metadata_of(obj).get("generation") or 1)
    try:
        with progress_view() as view:
            waiter = FunctionWaiter(
                session.client(),
                namespace=session.namespace,
                name=name,
                generation=generation,
                view=view,
            )
            waiter.wait(timeout_s=timeout_s)
    except KeyboardInterrupt:
        click.echo(f"\nstopped waiting; function {name} keeps deploying", err=True)
        raise
    click.echo(f"Function {name} is ready")
