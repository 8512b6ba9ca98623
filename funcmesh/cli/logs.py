"""``funcmesh logs POD [-f] [--tail N]``: what a pod printed, as ``kubectl logs`` shows it.

A pod is a function instance or a Deployment replica; its log holds every restart of its
process. ``deployment/NAME`` picks one of the Deployment's pods (the newest ready one, else the
newest), as kubectl does, and says which on stderr.
"""

from __future__ import annotations

import click

from funcmesh.cli.options import global_options
from funcmesh.cli.session import session_of
from funcmesh.errors import NotFound
from funcmesh.model.kinds import DEPLOYMENT, POD, find_resource
from funcmesh.model.objects import RawObject, metadata_of, name_of


@click.command("logs")
@click.argument("pod", metavar="POD|deployment/NAME")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--tail", type=int, metavar="N", help="Only the last N lines (-1: all).")
@click.option("--timestamps", is_flag=True, help="Put the time each line came before it.")
@global_options
@click.pass_context
def logs(ctx: click.Context, /, pod: str, follow: bool, tail: int | None, timestamps: bool) -> None:
    """Print a pod's output."""
    session = session_of(ctx)
    name = _pod_name(ctx, pod)
    lines = session.client().pod_log(
        session.namespace,
        name,
        follow=follow,
        tail_lines=tail if tail is not None and tail >= 0 else None,
        timestamps=timestamps,
    )
    for line in lines:
        click.echo(line)


def _pod_name(ctx: click.Context, text: str) -> str:
    kind, slash, name = text.partition("/")
    if not slash:
        return text
    rt = find_resource(kind)
    if rt is POD:
        return name
    if rt is not DEPLOYMENT:
        raise NotFound(f'logs are read from pods or deployments, not "{kind}"')
    session = session_of(ctx)
    client = session.client()
    deployment = client.get(DEPLOYMENT, session.namespace, name)
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    selector = ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
    pods = client.list(POD, session.namespace, selector=selector).items
    if not pods:
        raise NotFound(f'deployment "{name}" has no pods')
    chosen = max(pods, key=_preference)
    if len(pods) > 1:
        click.echo(f"Found {len(pods)} pods, using pod/{name_of(chosen)}", err=True)
    return name_of(chosen)


def _preference(pod: RawObject) -> tuple[bool, str]:
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return ready, str(metadata_of(pod).get("creationTimestamp") or "")
