"""``funcmesh run NAME --command "CMD ARGS"`` and ``funcmesh scale deployment NAME --replicas N``.

``run`` is the ``kubectl run`` of a process: it creates an ``apps/v1`` Deployment whose one
container runs the command (split like a shell would, without a shell: ``$(PORT)`` and
``$(HOST)`` are expanded by funcmesh from the pod's environment, as Kubernetes does), labelled
and selected by ``run: NAME`` unless ``--labels`` says otherwise. ``scale`` changes
``spec.replicas`` of a Deployment, retrying when someone else wrote meanwhile. Both talk to the
API only.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

import click

from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_value
from funcmesh.cli.session import session_of
from funcmesh.errors import Invalid
from funcmesh.model.kinds import DEPLOYMENT, find_resource
from funcmesh.model.objects import RawObject


@click.command("run")
@click.argument("name")
@click.option("--command", "command", required=True, metavar='"CMD ARGS"', help="What to run.")
@click.option("--replicas", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), help="The port it listens on ($PORT).")
@click.option("--labels", "-l", "labels", metavar="K=V,...", help="Labels (default run=NAME).")
@click.option("--env", "env", multiple=True, metavar="K=V", help="An environment variable.")
@click.option("--image", help="Kept for export to Kubernetes; funcmesh runs the command.")
@click.option("--dry-run", "dryrun", is_flag=True, help="Print the Deployment, do not create it.")
@output_option("yaml", "json", default="yaml")
@global_options
@click.pass_context
def run(
    ctx: click.Context,
    /,
    name: str,
    command: str,
    replicas: int,
    port: int | None,
    labels: str | None,
    env: Sequence[str],
    image: str | None,
    dryrun: bool,
    output: str,
) -> None:
    """Run a command as a Deployment: REPLICAS processes, each with its own pod IP."""
    deployment = build_deployment(
        name,
        namespace=session_of(ctx).namespace,
        command=split_command(command),
        replicas=replicas,
        port=port,
        labels=parse_labels(labels) if labels else {"run": name},
        env=parse_env(env),
        image=image,
    )
    if dryrun:
        click.echo(dump_value(deployment, output=output), nl=False)
        return
    session_of(ctx).client().create(DEPLOYMENT, deployment)
    click.echo(f"deployment.apps/{name} created")


@click.command("scale")
@click.argument("target")
@click.argument("name", required=False)
@click.option("--replicas", type=click.IntRange(min=0), required=True, help="How many pods.")
@global_options
@click.pass_context
def scale(ctx: click.Context, /, target: str, name: str | None, replicas: int) -> None:
    """Set the replicas of a Deployment: scale deployment NAME (or deployment/NAME)."""
    kind, _, slash_name = target.partition("/")
    name = slash_name or name
    if not name:
        raise click.UsageError("name the deployment: scale deployment NAME --replicas N")
    if find_resource(kind) is not DEPLOYMENT:
        raise Invalid(f'funcmesh scales deployments only, not "{kind}"')

    def change(obj: RawObject) -> RawObject:
        obj.setdefault("spec", {})["replicas"] = replicas
        return obj

    session_of(ctx).update(DEPLOYMENT, name, change, dry_run=False)
    click.echo(f"deployment.apps/{name} scaled")


def build_deployment(
    name: str,
    *,
    namespace: str,
    command: list[str],
    replicas: int,
    port: int | None,
    labels: dict[str, str],
    env: list[dict[str, str]],
    image: str | None,
) -> RawObject:
    """The Deployment ``run`` creates."""
    container: RawObject = {"name": name, "command": command}
    if image:
        container["image"] = image
    if env:
        container["env"] = env
    if port is not None:
        container["ports"] = [{"containerPort": port, "protocol": "TCP"}]
    return {
        "apiVersion": DEPLOYMENT.api_version,
        "kind": DEPLOYMENT.kind,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}},
        },
    }


def split_command(text: str) -> list[str]:
    """Words of ``--command`` as a POSIX shell splits them (quotes kept together)."""
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise Invalid(f"--command {text!r}: {exc}") from None
    if not words:
        raise Invalid("--command is empty: give the command to run")
    return words


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise Invalid(f"--labels needs KEY=VALUE pairs separated by commas, got {item!r}")
        labels[key] = value
    return labels


def parse_env(items: Sequence[str]) -> list[dict[str, str]]:
    env = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Invalid(f"--env needs KEY=VALUE, got {item!r}")
        env.append({"name": key, "value": value})
    return env
