"""``funcmesh trigger cronjob``: Kubeless's cron trigger commands.

``create`` and ``update`` check the schedule and the payload as the API will before sending
anything (the API also checks that the function exists). ``update`` changes only what its flags
give, where Kubeless blanked every field not given again (quirk 7.10), and
``--payload-from-file`` reads YAML as well as JSON (Kubeless refused ``.yaml`` though its docs
promised it). ``ls`` adds the last run and its result to Kubeless's columns.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_objects, dump_value, format_table
from funcmesh.cli.session import session_of
from funcmesh.errors import Invalid
from funcmesh.model.kinds import CRONJOB_TRIGGER
from funcmesh.model.objects import RawObject, name_of, namespace_of, parse_rfc3339
from funcmesh.model.triggers import parse_cronjob_trigger

F = TypeVar("F", bound=Callable[..., Any])

LIST_HEADERS = ("NAME", "NAMESPACE", "SCHEDULE", "FUNCTION NAME", "LAST RUN", "RESULT")
PAYLOAD_SUFFIXES = (".json", ".yaml", ".yml")

_PAYLOAD_OPTIONS = (
    click.option("-p", "--payload", metavar="JSON", help="JSON object to POST on each run."),
    click.option(
        "-f",
        "--payload-from-file",
        "payload_file",
        metavar="FILE",
        help="File with the payload object (.json, .yaml or .yml).",
    ),
)


def _payload_flags(command: F) -> F:
    for option in reversed(_PAYLOAD_OPTIONS):
        command = option(command)
    return command


@click.group(cls=LazyGroup, aliases={"list": "ls"})
@global_options
def cronjob() -> None:
    """Cron job triggers: call a function on a schedule."""


@cronjob.command("create")
@click.argument("name")
@click.option("--function", "function_name", required=True, metavar="NAME", help="Function.")
@click.option(
    "--schedule",
    required=True,
    metavar="CRON",
    help="Five cron fields, @hourly, @daily, ... or @every 10s (UTC unless CRON_TZ=zone).",
)
@_payload_flags
@click.option("--dryrun", is_flag=True, help="Print the CronJobTrigger instead of sending it.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def create(
    ctx: click.Context,
    /,
    name: str,
    function_name: str,
    schedule: str,
    payload: str | None,
    payload_file: str | None,
    dryrun: bool,
    output: str,
) -> None:
    """Create a cron job trigger (without a payload each run is a GET)."""
    session = session_of(ctx)
    obj = build_cronjob_trigger(
        name,
        session.namespace,
        function_name=function_name,
        schedule=schedule,
        payload=read_payload(payload, payload_file),
    )
    if dryrun:
        click.echo(dump_value(obj, output=output), nl=False)
        return
    session.client().create(CRONJOB_TRIGGER, obj)
    click.echo(f"Cronjob trigger {name} created in namespace {session.namespace} successfully!")


@cronjob.command("update")
@click.argument("name")
@click.option("--function", "function_name", metavar="NAME", help="New function.")
@click.option("--schedule", metavar="CRON", help="New schedule.")
@_payload_flags
@click.option("--no-payload", is_flag=True, help="Drop the payload: each run becomes a GET.")
@click.option("--dryrun", is_flag=True, help="Print the updated trigger, change nothing.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def update(
    ctx: click.Context,
    /,
    name: str,
    function_name: str | None,
    schedule: str | None,
    payload: str | None,
    payload_file: str | None,
    no_payload: bool,
    dryrun: bool,
    output: str,
) -> None:
    """Change what the flags give; everything else stays as it is."""
    changes = _spec_changes(function_name, schedule, payload, payload_file, no_payload)
    session = session_of(ctx)
    updated = session.update(
        CRONJOB_TRIGGER, name, lambda current: apply_changes(current, changes), dry_run=dryrun
    )
    if dryrun:
        click.echo(dump_value(updated, output=output), nl=False)
        return
    click.echo(f"Cronjob trigger {name} updated in namespace {session.namespace} successfully!")


@cronjob.command("delete")
@click.argument("names", nargs=-1, required=True)
@global_options
@click.pass_context
def delete(ctx: click.Context, names: Sequence[str]) -> None:
    """Delete cron job triggers (an error for one does not stop the others)."""
    session_of(ctx).delete_each(ctx, CRONJOB_TRIGGER, names, noun="Cronjob trigger")


@cronjob.command("ls")
@output_option("yaml", "json")
@global_options
@click.pass_context
def list_triggers(ctx: click.Context, output: str | None) -> None:
    """List the cron job triggers of the namespace, with their last run."""
    session = session_of(ctx)
    items = sorted(session.client().list(CRONJOB_TRIGGER, session.namespace).items, key=name_of)
    if output in ("yaml", "json"):
        click.echo(dump_objects(items, output=output, single=False), nl=False)
    elif items:
        now_s = time.time()
        click.echo(format_table(LIST_HEADERS, [trigger_row(item, now_s) for item in items]))
    else:
        click.echo(f"No cronjob triggers found in {session.namespace} namespace.", err=True)


def build_cronjob_trigger(
    name: str,
    namespace: str,
    *,
    function_name: str,
    schedule: str,
    payload: Mapping[str, Any] | None,
    labels: Mapping[str, str] | None = None,
) -> RawObject:
    """The CronJobTrigger the flags describe, checked as the API will check it."""
    spec: dict[str, Any] = {"function-name": function_name, "schedule": schedule}
    if payload is not None:
        spec["payload"] = dict(payload)
    obj: RawObject = {
        "apiVersion": CRONJOB_TRIGGER.api_version,
        "kind": CRONJOB_TRIGGER.kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": dict(labels or {"created-by": "kubeless"}),
        },
        "spec": spec,
    }
    parse_cronjob_trigger(obj)
    return obj


def read_payload(text: str | None, file_name: str | None) -> dict[str, Any] | None:
    """The payload from ``--payload`` or ``--payload-from-file`` (JSON or YAML), or None."""
    if text is not None and file_name is not None:
        raise Invalid("You can't provide both raw payload and a payload file")
    if file_name is not None:
        return _payload_from_file(Path(file_name))
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise Invalid(f"--payload is not valid JSON: {exc}") from None
    return _checked_payload(value, "--payload")


def _payload_from_file(path: Path) -> dict[str, Any]:
    if path.suffix.lower() not in PAYLOAD_SUFFIXES:
        raise Invalid(f"--payload-from-file {path}: the file must end in .json, .yaml or .yml")
    try:
        text = path.read_text()
    except OSError as exc:
        raise Invalid(f"cannot read --payload-from-file {path}: {exc.strerror or exc}") from None
    from funcmesh.model.codec import load_yaml_object

    try:  # JSON is YAML; the YAML reader keeps timestamps as strings, as JSON would
        value: Any = load_yaml_object(text, source=str(path))
    except Invalid as exc:
        raise Invalid(f"--payload-from-file {exc}") from None
    return _checked_payload(value, str(path))


def _checked_payload(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"{source}: the payload must be a JSON object, e.g. '{{\"key\": 1}}'")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise Invalid(f"{source}: the payload must be plain JSON data: {exc}") from None
    return value


_UNSET = object()


def _spec_changes(
    function_name: str | None,
    schedule: str | None,
    payload: str | None,
    payload_file: str | None,
    no_payload: bool,
) -> dict[str, Any]:
    """The spec fields to replace; a payload of ``_UNSET`` removes the payload."""
    if no_payload and (payload is not None or payload_file is not None):
        raise Invalid("--no-payload cannot go with --payload or --payload-from-file")
    changes: dict[str, Any] = {}
    if function_name is not None:
        changes["function-name"] = function_name
    if schedule is not None:
        changes["schedule"] = schedule
    if no_payload:
        changes["payload"] = _UNSET
    elif (value := read_payload(payload, payload_file)) is not None:
        changes["payload"] = value
    if not changes:
        raise Invalid(
            "nothing to update: give --function, --schedule, --payload, --payload-from-file "
            "or --no-payload"
        )
    return changes


def apply_changes(current: RawObject, changes: Mapping[str, Any]) -> RawObject:
    """``current`` with the given spec fields replaced, checked."""
    updated = copy.deepcopy(current)
    spec = updated.setdefault("spec", {})
    for field, value in changes.items():
        if value is _UNSET:
            spec.pop(field, None)
        else:
            spec[field] = value
    parse_cronjob_trigger(updated)
    return updated


def trigger_row(obj: RawObject, now_s: float) -> list[str]:
    spec = obj.get("spec") or {}
    last_run, result = last_run_cells(obj.get("status") or {}, now_s)
    return [
        name_of(obj),
        namespace_of(obj),
        str(spec.get("schedule") or ""),
        str(spec.get("function-name") or ""),
        last_run,
        result,
    ]


def last_run_cells(status: Mapping[str, Any], now_s: float) -> tuple[str, str]:
    """When the newest run with a result was due, and its result (``Running`` if none has one
    yet); ``never`` and ``-`` before the first run."""
    runs = [run for run in status.get("lastRuns") or [] if isinstance(run, dict)]
    if not runs:
        return "never", "-"
    run = next((r for r in runs if r.get("outcome") != "Running"), runs[0])
    moment = run.get("lastMissedTime") or run.get("scheduleTime")
    try:
        when = f"{_age_text(now_s - parse_rfc3339(str(moment)))} ago"
    except ValueError:
        when = "?"
    return when, result_text(run)


def result_text(run: Mapping[str, Any]) -> str:
    """``Succeeded (200)``, ``Failed (504)``, ``Failed`` (not reached), ``Missed (3 runs)``."""
    outcome = str(run.get("outcome") or "?")
    if run.get("httpStatus") is not None:
        return f"{outcome} ({run['httpStatus']})"
    if outcome == "Missed":
        count = int(run.get("missedRuns") or 1)
        return f"Missed ({count} run{'s' if count != 1 else ''})"
    return outcome


def _age_text(seconds: float) -> str:
    """``5s``, ``3m``, ``7h``, ``2d``: the coarse ages kubectl shows."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= 2 * size:
            return f"{whole // size}{unit}"
    return f"{whole}s"
