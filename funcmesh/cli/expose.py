"""``funcmesh expose deployment NAME``: a Service for a Deployment, as ``kubectl expose`` makes it.

The selector is the Deployment's ``spec.selector.matchLabels`` (``--selector`` overrides it),
the Service's labels are the Deployment's (``--labels`` overrides them), and without ``--port``
the ports are the pod template's container ports (``port-1``, ``port-2``, ... when there are
several). ``--target-port`` (a number or a container port's name) applies to every port and
defaults to the port. The server allocates the ClusterIP (``--cluster-ip`` asks for one, or
``None`` for a headless Service). Prints ``service/NAME exposed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import click

from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_value
from funcmesh.cli.session import session_of
from funcmesh.errors import Invalid
from funcmesh.model.kinds import DEPLOYMENT, FUNCTION, SERVICE, find_resource
from funcmesh.model.objects import RawObject, labels_of, name_of
from funcmesh.model.selectors import parse_selector

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExposeFlags:
    """What the flags of ``expose`` say; None where a flag was not given."""

    name: str | None = None
    port: int | None = None
    target_port: str | None = None
    protocol: str | None = None
    service_type: str = "ClusterIP"
    cluster_ip: str | None = None
    session_affinity: str | None = None
    selector: str | None = None
    labels: str | None = None
    external_ips: tuple[str, ...] = ()


@click.command("expose")
@click.argument("kind")
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535), help="The Service's port.")
@click.option("--target-port", metavar="PORT|NAME", help="The pods' port (default: --port).")
@click.option("--name", "service_name", help="The Service's name (default: NAME).")
@click.option(
    "--protocol", type=click.Choice(["TCP", "UDP", "SCTP"]), help="Default: the container's."
)
@click.option("--type", "service_type", type=click.Choice(SERVICE_TYPES), default="ClusterIP")
@click.option("--cluster-ip", metavar="IP|None", help="Ask for this ClusterIP; None: headless.")
@click.option("--session-affinity", type=click.Choice(["None", "ClientIP"]))
@click.option("--selector", metavar="k=v,...", help="Pods to select (default: the Deployment's).")
@click.option("-l", "--labels", metavar="k=v,...", help="The Service's labels.")
@click.option("--external-ip", "external_ips", multiple=True, metavar="IP", help="Shown only.")
@click.option("--dry-run", "dryrun", is_flag=True, help="Print the Service instead of sending it.")
@output_option("yaml", "json", "name")
@global_options
@click.pass_context
def expose(
    ctx: click.Context,
    /,
    kind: str,
    name: str,
    port: int | None,
    target_port: str | None,
    service_name: str | None,
    protocol: str | None,
    service_type: str,
    cluster_ip: str | None,
    session_affinity: str | None,
    selector: str | None,
    labels: str | None,
    external_ips: tuple[str, ...],
    dryrun: bool,
    output: str | None,
) -> None:
    """Expose a Deployment as a new Service (kubectl expose deployment NAME)."""
    rt = find_resource(kind)
    if rt is FUNCTION:
        raise Invalid(
            f'function "{name}" has a Service of its name already: see funcmesh get service {name}'
        )
    if rt is not DEPLOYMENT:
        raise Invalid(f"cannot expose a {rt.kind}: only a deployment can be exposed")
    flags = ExposeFlags(
        name=service_name,
        port=port,
        target_port=target_port,
        protocol=protocol,
        service_type=service_type,
        cluster_ip=cluster_ip,
        session_affinity=session_affinity,
        selector=selector,
        labels=labels,
        external_ips=external_ips,
    )
    session = session_of(ctx)
    client = session.client()
    service = build_service(client.get(DEPLOYMENT, session.namespace, name), flags)
    if not dryrun:
        service = client.create(SERVICE, service)
    if output in ("yaml", "json"):
        click.echo(dump_value(service, output=output), nl=False)
    elif output == "name":
        click.echo(f"service/{name_of(service)}")
    else:
        click.echo(f"service/{name_of(service)} exposed{' (dry run)' if dryrun else ''}")


def build_service(deployment: Mapping[str, Any], flags: ExposeFlags) -> RawObject:
    """The Service ``kubectl expose`` would make for ``deployment``."""
    name = flags.name or name_of(deployment)
    spec: dict[str, Any] = {
        "selector": _selector(deployment, flags.selector),
        "type": flags.service_type,
    }
    ports = _ports(deployment, flags)
    if ports:
        spec["ports"] = ports
    if flags.cluster_ip:
        spec["clusterIP"] = flags.cluster_ip
    if flags.session_affinity:
        spec["sessionAffinity"] = flags.session_affinity
    if flags.external_ips:
        spec["externalIPs"] = list(flags.external_ips)
    metadata: dict[str, Any] = {"name": name}
    labels = _label_map(flags.labels, "--labels") if flags.labels else labels_of(deployment)
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def _selector(deployment: Mapping[str, Any], text: str | None) -> dict[str, str]:
    if text:
        return _label_map(text, "--selector")
    selector = (deployment.get("spec") or {}).get("selector") or {}
    if selector.get("matchExpressions"):
        raise Invalid(
            f'deployment "{name_of(deployment)}" selects pods with matchExpressions, which a '
            "Service cannot: give --selector k=v,..."
        )
    labels = selector.get("matchLabels") or {}
    if not labels:
        raise Invalid(f'deployment "{name_of(deployment)}" has no selector: give --selector')
    return {str(key): str(value) for key, value in labels.items()}


def _label_map(text: str, flag: str) -> dict[str, str]:
    """``k=v,k2=v2`` (only equality: a Service selects by exact labels)."""
    found: dict[str, str] = {}
    for requirement in parse_selector(text).requirements:
        if requirement.op != "=" or len(requirement.values) != 1:
            raise Invalid(f"{flag} takes k=v pairs separated by commas, got {text!r}")
        found[requirement.key] = next(iter(requirement.values))
    return found


def _ports(deployment: Mapping[str, Any], flags: ExposeFlags) -> list[dict[str, Any]]:
    declared = _container_ports(deployment)
    if flags.port is not None:
        numbers = [flags.port]
    else:
        numbers = list(dict.fromkeys(number for number, _ in declared))
    if not numbers and flags.cluster_ip != "None" and flags.service_type != "ExternalName":
        raise Invalid(
            f"couldn't find port via --port flag or introspection: deployment \""
            f'{name_of(deployment)}" declares no container port'
        )
    protocols = dict(declared)
    ports = []
    for i, number in enumerate(numbers):
        port: dict[str, Any] = {
            "port": number,
            "protocol": flags.protocol or protocols.get(number, "TCP"),
            "targetPort": _target_port(flags.target_port, number),
        }
        if len(numbers) > 1:
            port = {"name": f"port-{i + 1}", **port}
        ports.append(port)
    return ports


def _target_port(text: str | None, port: int) -> int | str:
    if not text:
        return port
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= 65535:
            raise Invalid(f"--target-port {text} is not a port number (1-65535)")
        return number
    return text


def _container_ports(deployment: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(containerPort, protocol) of every container of the pod template, in order."""
    template = ((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}
    found = []
    for container in template.get("containers") or ():
        for port in container.get("ports") or ():
            number = port.get("containerPort")
            if isinstance(number, int):
                found.append((number, str(port.get("protocol") or "TCP")))
    return found
