"""``funcmesh trigger nats``: Kubeless's NATS trigger commands, and ``publish`` to try them out.

``create`` and ``update`` check the subject and the selector as the API will before sending
anything. ``--function-selector`` takes the full ``-l`` syntax: ``k=v`` pairs become
``matchLabels`` and the rest (``k!=v``, ``k in (a,b)``, ``!k``) ``matchExpressions``, where
Kubeless silently dropped everything but the ``k=v`` pairs. ``publish`` talks to the NATS server
itself (nats-py), not to the daemon.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_objects, dump_value, format_table
from funcmesh.cli.session import session_of
from funcmesh.errors import AlreadyExists, Invalid, Unavailable
from funcmesh.model.conditions import find_condition
from funcmesh.model.kinds import FUNCTION, NATS_TRIGGER
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.model.selectors import parse_selector, selector_from_spec
from funcmesh.model.triggers import (
    label_selector_spec,
    nats_subject_error,
    parse_nats_trigger,
    selector_text,
)
from funcmesh.settings import parse_nats_url

if TYPE_CHECKING:
    from funcmesh.client.api import ApiClient

LIST_HEADERS = ("NAME", "NAMESPACE", "TOPIC", "FUNCTION SELECTOR")
WIDE_HEADERS = ("STATUS", "FUNCTIONS", "DELIVERED", "RETRIED", "FAILED")
DEFAULT_PUBLISH_TOPIC = "kubeless"
PUBLISH_TIMEOUT_S = 5


@click.group(cls=LazyGroup, aliases={"list": "ls"})
@global_options
def nats() -> None:
    """NATS triggers: deliver each message on a subject to the functions a selector picks."""


@nats.command("create")
@click.argument("name")
@click.option("--trigger-topic", "topic", required=True, metavar="SUBJECT", help="NATS subject.")
@click.option(
    "--function-selector",
    "selector",
    required=True,
    metavar="K=V[,K=V]",
    help="Label selector of the functions to call, e.g. topic=orders.",
)
@click.option("--dryrun", is_flag=True, help="Print the NATSTrigger instead of sending it.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def create(
    ctx: click.Context, /, name: str, topic: str, selector: str, dryrun: bool, output: str
) -> None:
    """Create a NATS trigger."""
    session = session_of(ctx)
    obj = build_nats_trigger(name, session.namespace, topic=topic, selector=selector)
    if dryrun:
        click.echo(dump_value(obj, output=output), nl=False)
        return
    client = session.client()
    try:
        client.create(NATS_TRIGGER, obj)
    except AlreadyExists as exc:
        raise AlreadyExists(f"{exc}: change it with funcmesh trigger nats update {name}") from exc
    click.echo(f"NATS trigger {name} created in namespace {session.namespace} successfully!")
    _warn_unless_selected(client, obj)


@nats.command("update")
@click.argument("name")
@click.option("--trigger-topic", "topic", metavar="SUBJECT", help="New NATS subject.")
@click.option("--function-selector", "selector", metavar="K=V[,K=V]", help="New selector.")
@click.option("--dryrun", is_flag=True, help="Print the updated NATSTrigger, change nothing.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def update(
    ctx: click.Context,
    /,
    name: str,
    topic: str | None,
    selector: str | None,
    dryrun: bool,
    output: str,
) -> None:
    """Change the subject or the function selector (the one given replaces the old one)."""
    if topic is None and selector is None:
        raise Invalid("nothing to update: give --trigger-topic and/or --function-selector")
    session = session_of(ctx)
    updated = session.update(
        NATS_TRIGGER,
        name,
        lambda current: apply_changes(current, topic=topic, selector=selector),
        dry_run=dryrun,
    )
    if dryrun:
        click.echo(dump_value(updated, output=output), nl=False)
        return
    click.echo(f"NATS trigger {name} updated in namespace {session.namespace} successfully!")
    _warn_unless_selected(session.client(), updated)


@nats.command("delete")
@click.argument("names", nargs=-1, required=True)
@global_options
@click.pass_context
def delete(ctx: click.Context, names: Sequence[str]) -> None:
    """Delete NATS triggers (an error for one does not stop the others)."""
    session_of(ctx).delete_each(ctx, NATS_TRIGGER, names, noun="NATS trigger")


@nats.command("ls")
@output_option("yaml", "json", "wide")
@global_options
@click.pass_context
def list_triggers(ctx: click.Context, output: str | None) -> None:
    """List the NATS triggers of the namespace."""
    session = session_of(ctx)
    items = sorted(session.client().list(NATS_TRIGGER, session.namespace).items, key=name_of)
    if output in ("yaml", "json"):
        click.echo(dump_objects(items, output=output, single=False), nl=False)
    elif items:
        wide = output == "wide"
        headers = LIST_HEADERS + WIDE_HEADERS if wide else LIST_HEADERS
        click.echo(format_table(headers, [trigger_row(item, wide=wide) for item in items]))
    else:
        click.echo(f"No NATS triggers found in {session.namespace} namespace.", err=True)


@nats.command("publish")
@click.option("--url", required=True, metavar="nats://HOST:PORT", help="The NATS server.")
@click.option(
    "--topic",
    default=DEFAULT_PUBLISH_TOPIC,
    show_default=True,
    metavar="SUBJECT",
    help="Subject to publish on.",
)
@click.option("--message", required=True, help="The message (JSON objects reach as JSON).")
@global_options
def publish(url: str, topic: str, message: str) -> None:
    """Publish one message to a NATS subject."""
    url = parse_nats_url(url)
    if error := nats_subject_error(topic):
        raise Invalid(error)
    if "*" in topic.split(".") or ">" in topic.split("."):
        raise Invalid(f'cannot publish to the wildcard subject "{topic}"')
    asyncio.run(publish_message(url, topic, message.encode()))
    click.echo(f"Published [{topic}] : '{message}'")


def build_nats_trigger(name: str, namespace: str, *, topic: str, selector: str) -> RawObject:
    """The NATSTrigger the flags describe, checked as the API will check it."""
    obj: RawObject = {
        "apiVersion": NATS_TRIGGER.api_version,
        "kind": NATS_TRIGGER.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": {"created-by": "kubeless"}},
        "spec": {"topic": topic, "functionSelector": function_selector_spec(selector)},
    }
    parse_nats_trigger(obj)
    return obj


def apply_changes(current: RawObject, *, topic: str | None, selector: str | None) -> RawObject:
    """``current`` with a new topic and/or selector (replacing the old one), checked."""
    updated = copy.deepcopy(current)
    spec = updated.setdefault("spec", {})
    if topic is not None:
        spec["topic"] = topic
    if selector is not None:
        spec["functionSelector"] = function_selector_spec(selector)
    parse_nats_trigger(updated)
    return updated


def function_selector_spec(text: str) -> dict[str, Any]:
    """A ``LabelSelector`` from ``--function-selector``, or Invalid saying what is wrong."""
    try:
        return label_selector_spec(parse_selector(text))
    except Invalid as exc:
        raise Invalid(f"invalid function selector {text!r}: {exc}") from exc


def trigger_row(obj: RawObject, *, wide: bool) -> list[str]:
    spec = obj.get("spec") or {}
    row = [name_of(obj), namespace_of(obj), str(spec.get("topic") or ""), _selector_cell(spec)]
    if wide:
        status = obj.get("status") or {}
        ready = find_condition(status, "Ready")
        row += [
            str(ready.get("reason")) if ready else "Pending",
            ",".join(status.get("functions") or []) or "<none>",
            *(str(status.get(key, 0)) for key in ("delivered", "retried", "failed")),
        ]
    return row


def _selector_cell(spec: dict[str, Any]) -> str:
    try:
        return selector_text(selector_from_spec(spec.get("functionSelector") or {}))
    except (Invalid, AttributeError, KeyError, TypeError):  # stored by an older, laxer version
        return str(spec.get("functionSelector"))


def _warn_unless_selected(client: ApiClient, obj: RawObject) -> None:
    """A selector that picks no function is legal (the functions may come later), but worth
    a word: it is often a typo."""
    text = selector_text(parse_nats_trigger(obj).selector)
    if not client.list(FUNCTION, namespace_of(obj), selector=text).items:
        click.echo(
            f"warning: no function in namespace {namespace_of(obj)} matches {text} yet; "
            "messages are dropped until one does",
            err=True,
        )


def server_address(url: str) -> str:
    """``nats://HOST:PORT`` of a server URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}"


async def publish_message(url: str, subject: str, payload: bytes) -> None:
    """Connect, publish, flush, disconnect; Unavailable when the server cannot be reached."""
    import nats
    import nats.errors

    errors: list[Exception] = []

    async def remember(error: Exception) -> None:
        """nats-py would log each failed attempt; the last one is raised instead."""
        errors.append(error)

    try:
        client = await nats.connect(
            url,
            connect_timeout=PUBLISH_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # nats-py tries twice at least; 0 would mean forever
            reconnect_time_wait=0,
            error_cb=remember,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        reason = errors[-1] if errors else exc
        raise Unavailable(
            f"cannot connect to the NATS server at {server_address(url)}: {reason}"
        ) from exc
    try:
        await client.publish(subject, payload)
        await client.flush(timeout=PUBLISH_TIMEOUT_S)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise Unavailable(
            f"publishing to {subject} at {server_address(url)} failed: {exc}"
        ) from exc
    finally:
        await client.close()
