"""``funcmesh autoscale create|list|delete``: Kubeless's autoscale command on funcmesh annotations.

A rule is written twice in one conditional JSON merge patch: as the ``autoscaling.funcmesh.io/*``
annotations the instance pool reads (``min-scale``, ``max-scale``, ``target-concurrency``; for
``cpu`` and ``qps`` also ``metric`` and ``target``), and as Kubeless's
``spec.horizontalPodAutoscaler`` (autoscaling/v2beta1 shape) so ``kubectl get function -o yaml``
shows what a Kubeless user expects. ``min 0`` is allowed (Kubeless refuses it): it means scale
to zero. The daemon's instance pools act on every metric (``funcmesh.runtime.autoscaler``); this
module builds patches and prints, it does not scale anything itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from funcmesh.cli.function_flags import apply_merge_patch
from funcmesh.cli.lazy import LazyGroup
from funcmesh.cli.options import global_options, output_option
from funcmesh.cli.output import dump_objects, format_table, report_error
from funcmesh.cli.session import session_of
from funcmesh.errors import Conflict, FuncmeshError, Invalid, NotFound
from funcmesh.model.function import (
    CPU_TARGET_MAX_PERCENT,
    SCALING_METRICS,
    SCALING_PREFIX,
    parse_function,
)
from funcmesh.model.kinds import FUNCTION
from funcmesh.model.objects import (
    RawObject,
    annotations_of,
    labels_of,
    metadata_of,
    name_of,
    namespace_of,
)

if TYPE_CHECKING:
    from funcmesh.client.api import ApiClient

METRICS = SCALING_METRICS
DEFAULT_METRIC = "concurrency"
HPA_FIELD = "horizontalPodAutoscaler"
LIST_HEADERS = ("NAME", "NAMESPACE", "TARGET", "MIN", "MAX", "METRIC", "VALUE")
RULE_ANNOTATIONS = ("min-scale", "max-scale", "target-concurrency", "metric", "target")
PATCH_ATTEMPTS = 3

AUTOSCALE_COMMANDS = {
    "create": "funcmesh.cli.autoscale:create",
    "ls": "funcmesh.cli.autoscale:list_rules",
    "delete": "funcmesh.cli.autoscale:delete",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscaleRule:
    """What ``autoscale create`` asks for; ``value`` is None for concurrency without --value."""

    min_scale: int
    max_scale: int
    metric: str = DEFAULT_METRIC
    value: str | None = None


def check_rule(rule: AutoscaleRule) -> None:
    """Kubeless's checks, except that min 0 (scale to zero) is allowed."""
    problems = []
    if rule.min_scale < 0:
        problems.append("min can't be negative (0 means scale to zero when idle)")
    if rule.max_scale < 1:
        problems.append("max must be at least 1")
    if rule.max_scale < rule.min_scale:
        problems.append("max must be greater than or equal to min")
    if rule.metric not in METRICS:
        problems.append(f'only supported metrics: {", ".join(METRICS)} (got "{rule.metric}")')
    elif rule.value is None and rule.metric != DEFAULT_METRIC:
        problems.append(f"--value is required with --metric {rule.metric}")
    if rule.value is not None and not _is_positive_number(rule.value, whole=rule.metric != "qps"):
        kind = "a positive number" if rule.metric == "qps" else "a whole number of at least 1"
        problems.append(f'--value must be {kind} (got "{rule.value}")')
    elif (
        rule.metric == "cpu" and rule.value is not None and int(rule.value) > CPU_TARGET_MAX_PERCENT
    ):
        problems.append(
            f"--value for cpu is a percentage of one CPU core per instance, at most "
            f'{CPU_TARGET_MAX_PERCENT} (got "{rule.value}")'
        )
    if problems:
        raise Invalid("invalid autoscaling rule: " + "; ".join(problems))


def _is_positive_number(text: str, *, whole: bool) -> bool:
    try:
        number = int(text) if whole else float(text)
    except ValueError:
        return False
    return math.isfinite(number) and number > 0


def build_create_patch(function: RawObject, rule: AutoscaleRule) -> dict[str, Any]:
    """The conditional merge patch that writes ``rule`` onto ``function`` (annotations + HPA)."""
    annotations: dict[str, str | None] = {
        SCALING_PREFIX + "min-scale": str(rule.min_scale),
        SCALING_PREFIX + "max-scale": str(rule.max_scale),
    }
    if rule.metric == DEFAULT_METRIC:
        if rule.value is not None:
            annotations[SCALING_PREFIX + "target-concurrency"] = rule.value
        annotations[SCALING_PREFIX + "metric"] = None
        annotations[SCALING_PREFIX + "target"] = None
    else:
        annotations[SCALING_PREFIX + "metric"] = rule.metric
        annotations[SCALING_PREFIX + "target"] = rule.value
    value = rule.value or annotations_of(function).get(SCALING_PREFIX + "target-concurrency", "1")
    return {
        "metadata": {
            "resourceVersion": metadata_of(function).get("resourceVersion"),
            "annotations": annotations,
        },
        "spec": {HPA_FIELD: build_hpa(function, rule, value=value)},
    }


def build_hpa(function: RawObject, rule: AutoscaleRule, *, value: str) -> dict[str, Any]:
    """Kubeless's ``spec.horizontalPodAutoscaler`` (autoscaling/v2beta1) for ``rule``."""
    name = name_of(function)
    return {
        "metadata": {
            "name": name,
            "namespace": namespace_of(function),
            "labels": labels_of(function),
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1beta1", "kind": "Deployment", "name": name},
            "minReplicas": rule.min_scale,
            "maxReplicas": rule.max_scale,
            "metrics": [_hpa_metric(rule.metric, name=name, value=value)],
        },
    }


def _hpa_metric(metric: str, *, name: str, value: str) -> dict[str, Any]:
    if metric == "cpu":
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "targetAverageUtilization": int(value)},
        }
    if metric == "qps":
        return {
            "type": "Object",
            "object": {
                "metricName": "function_calls",
                "targetValue": value,
                "target": {"kind": "Service", "name": name},
            },
        }
    return {"type": "Pods", "pods": {"metricName": "concurrency", "targetAverageValue": value}}


def has_rule(function: RawObject) -> bool:
    annotations = annotations_of(function)
    spec = function.get("spec")
    in_spec = isinstance(spec, Mapping) and spec.get(HPA_FIELD) is not None
    return in_spec or any(SCALING_PREFIX + key in annotations for key in RULE_ANNOTATIONS[:2])


def build_delete_patch(function: RawObject) -> dict[str, Any]:
    """The conditional merge patch that removes the rule's annotations and the HPA spec."""
    return {
        "metadata": {
            "resourceVersion": metadata_of(function).get("resourceVersion"),
            "annotations": {SCALING_PREFIX + key: None for key in RULE_ANNOTATIONS},
        },
        "spec": {HPA_FIELD: None},
    }


def rule_row(function: RawObject) -> list[str]:
    """One ``autoscale ls`` row: NAME NAMESPACE TARGET MIN MAX METRIC VALUE."""
    annotations = annotations_of(function)
    metric = annotations.get(SCALING_PREFIX + "metric", DEFAULT_METRIC)
    if metric == DEFAULT_METRIC:
        value = annotations.get(SCALING_PREFIX + "target-concurrency", "1")
    else:
        value = annotations.get(SCALING_PREFIX + "target", "")
    name = name_of(function)
    return [
        name,
        namespace_of(function),
        name,
        annotations.get(SCALING_PREFIX + "min-scale", ""),
        annotations.get(SCALING_PREFIX + "max-scale", ""),
        metric,
        value,
    ]


@click.group(cls=LazyGroup, lazy_commands=AUTOSCALE_COMMANDS, aliases={"list": "ls"})
@global_options
def autoscale() -> None:
    """Scale functions between a min and a max (kubeless autoscale ...)."""


@click.command("create")
@click.argument("name")
@click.option("--min", "min_scale", type=int, default=1, show_default=True, help="0: to zero.")
@click.option("--max", "max_scale", type=int, default=1, show_default=True)
@click.option("--metric", default=DEFAULT_METRIC, show_default=True, help="concurrency|cpu|qps")
@click.option(
    "--value",
    metavar="V",
    help="Target per instance: calls in flight, percent of one CPU core (1-100), or calls/s.",
)
@global_options
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    min_scale: int,
    max_scale: int,
    metric: str,
    value: str | None,
) -> None:
    """Set the autoscaling rule of function NAME (replaces an existing one)."""
    rule = AutoscaleRule(min_scale=min_scale, max_scale=max_scale, metric=metric, value=value)
    check_rule(rule)
    session = session_of(ctx)
    click.echo("Adding autoscaling rule to the function...")
    _patch_with_retry(session.client(), session.namespace, name, rule)
    click.echo(f"Autoscaling rule for {name} submitted for deployment")


def _patch_with_retry(
    client: ApiClient, namespace: str, name: str, rule: AutoscaleRule | None
) -> RawObject:
    """Merge-patch with the read resourceVersion; re-read and retry when someone else wrote."""
    for attempt in range(1, PATCH_ATTEMPTS + 1):
        current = client.get(FUNCTION, namespace, name)
        if rule is None and not has_rule(current):
            raise NotFound(f"Not found an autoscale definition for {name}")
        patch = build_delete_patch(current) if rule is None else build_create_patch(current, rule)
        parse_function(apply_merge_patch(current, patch))
        try:
            return client.merge_patch(FUNCTION, namespace, name, patch)
        except Conflict:
            if attempt == PATCH_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


@click.command("ls")
@output_option("yaml", "json")
@global_options
@click.pass_context
def list_rules(ctx: click.Context, output: str | None) -> None:
    """List the functions of the namespace that have an autoscaling rule."""
    session = session_of(ctx)
    functions = session.client().list(FUNCTION, session.namespace).items
    ruled = sorted((obj for obj in functions if has_rule(obj)), key=name_of)
    if output in ("yaml", "json"):
        hpas = [_hpa_of(obj) for obj in ruled]
        click.echo(dump_objects(hpas, output=output, single=False), nl=False)
    elif ruled:
        click.echo(format_table(LIST_HEADERS, [rule_row(obj) for obj in ruled]))
    else:
        click.echo(f"No autoscaling rules found in {session.namespace} namespace.", err=True)


def _hpa_of(function: RawObject) -> RawObject:
    spec = function.get("spec")
    hpa = spec.get(HPA_FIELD) if isinstance(spec, Mapping) else None
    body = dict(hpa) if isinstance(hpa, Mapping) else {"metadata": {"name": name_of(function)}}
    return {"apiVersion": "autoscaling/v2beta1", "kind": "HorizontalPodAutoscaler", **body}


@click.command("delete")
@click.argument("names", nargs=-1, required=True)
@global_options
@click.pass_context
def delete(ctx: click.Context, names: Sequence[str]) -> None:
    """Remove the autoscaling rule of functions (the functions stay)."""
    session = session_of(ctx)
    client = session.client()
    failed = False
    for name in names:
        try:
            _patch_with_retry(client, session.namespace, name, None)
        except FuncmeshError as exc:
            report_error(exc)
            failed = True
            continue
        click.echo(f"Autoscaling rule for {name} deleted")
    if failed:
        ctx.exit(1)
