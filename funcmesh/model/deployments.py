"""The ``apps/v1`` Deployment: admission (Kubernetes's defaults and checks) and a typed view.

A Deployment keeps ``replicas`` copies of its pod template running; funcmesh runs each copy as a
process (``funcmesh.runtime.workloads``). Admission fills in what the Kubernetes API server
fills in (replicas 1, RollingUpdate 25%/25%, restartPolicy Always, a 30 s grace period, probe
timings), checks that the selector selects the template's labels, keeps the selector immutable,
and refuses what funcmesh cannot run (several containers, no command, env ``valueFrom``) with a
422 that names the field. The template hash tells the pods of one template version apart, like
Kubernetes's ``pod-template-hash``. This module does no I/O.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from funcmesh.errors import Cause, Invalid
from funcmesh.model.containers import (
    DEFAULT_SERVICE_ACCOUNT,
    Container,
    parse_container,
    service_account_of,
)
from funcmesh.model.kinds import DEPLOYMENT
from funcmesh.model.names import dns1123_label_error, label_key_error, label_value_error
from funcmesh.model.objects import (
    RawObject,
    metadata_causes,
    metadata_of,
    name_of,
    namespace_of,
    raise_if_causes,
)
from funcmesh.model.selectors import Selector, selector_from_spec

KIND = "Deployment.apps"  # how Kubernetes names the kind in its Invalid messages
HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes's alphabet for generated names
TEMPLATE_HASH_LABEL = "pod-template-hash"
DEFAULT_GRACE_S = 30
STRATEGIES = ("RollingUpdate", "Recreate")
SPEC_DEFAULTS: dict[str, Any] = {
    "replicas": 1,
    "revisionHistoryLimit": 10,
    "progressDeadlineSeconds": 600,
}
POD_SPEC_DEFAULTS: dict[str, Any] = {
    "restartPolicy": "Always",
    "terminationGracePeriodSeconds": DEFAULT_GRACE_S,
    "dnsPolicy": "ClusterFirst",
}
UNSUPPORTED_POD_FIELDS = ("initContainers", "ephemeralContainers")


@dataclass(frozen=True, slots=True, kw_only=True)
class Strategy:
    """How pods of an old template are replaced: ``RollingUpdate`` or ``Recreate``."""

    type: str = "RollingUpdate"
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"

    def surge(self, replicas: int) -> int:
        """Pods allowed above ``replicas`` during a rollout (a percentage rounds up)."""
        return _scaled(self.max_surge, replicas, round_up=True)

    def unavailable(self, replicas: int) -> int:
        """Pods allowed to be unavailable during a rollout (a percentage rounds down)."""
        return _scaled(self.max_unavailable, replicas, round_up=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class PodTemplate:
    """What every pod of one template version gets."""

    labels: Mapping[str, str]
    container: Container
    container_object: Mapping[str, Any]  # as stored, with defaults: what Pods show
    hostname: str | None
    subdomain: str | None
    termination_grace_s: int
    hash: str  # the pod-template-hash: 10 characters of HASH_ALPHABET
    # serviceAccountName: the pods' mesh identity is spiffe://cluster.local/ns/<ns>/sa/<this>
    service_account: str = DEFAULT_SERVICE_ACCOUNT


@dataclass(frozen=True, slots=True, kw_only=True)
class DeploymentSpec:
    """A checked Deployment, as the workload supervisor needs it."""

    namespace: str
    name: str
    uid: str
    generation: int
    replicas: int
    selector: Selector
    strategy: Strategy
    template: PodTemplate
    min_ready_s: int
    progress_deadline_s: int

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def admit_deployment(obj: RawObject, old: RawObject | None) -> RawObject:
    """The Deployment to store: Kubernetes's defaults filled in; raises Invalid (422) naming
    every bad field, or when an update changes the selector."""
    admitted = copy.deepcopy(obj)
    spec = admitted.get("spec")
    if isinstance(spec, dict):
        _fill_defaults(spec)
    _parse(admitted)  # raises unless spec is an object
    selector = admitted["spec"].get("selector")
    if old is not None and (old.get("spec") or {}).get("selector") != selector:
        cause = Cause(
            field="spec.selector",
            message=f"Invalid value: {json.dumps(selector)}: field is immutable",
        )
        raise_if_causes([cause], kind=KIND, name=name_of(obj))
    return admitted


def parse_deployment(obj: Mapping[str, Any]) -> DeploymentSpec:
    """The typed view of a Deployment; Invalid lists every problem at once."""
    return _parse(copy.deepcopy(dict(obj)))


def _parse(raw: RawObject) -> DeploymentSpec:
    """Parse ``raw``, writing the container's defaults into it."""
    causes = metadata_causes(raw, DEPLOYMENT)
    spec = raw.get("spec")
    if not isinstance(spec, dict):
        causes.append(Cause(field="spec", message="Required value", reason="FieldValueRequired"))
        raise_if_causes(causes, kind=KIND, name=name_of(raw))
        raise AssertionError("unreachable")
    replicas = _replicas(spec.get("replicas", 1), causes)
    selector = _selector(spec.get("selector"), causes)
    template = _template(spec.get("template"), causes, selector)
    strategy = _strategy(spec.get("strategy"), causes)
    min_ready = _seconds(spec, "minReadySeconds", 0, causes)
    deadline = _seconds(spec, "progressDeadlineSeconds", 600, causes)
    raise_if_causes(causes, kind=KIND, name=name_of(raw))
    assert selector is not None  # else causes were raised
    assert template is not None
    return DeploymentSpec(
        namespace=namespace_of(raw) or "default",
        name=name_of(raw),
        uid=str(metadata_of(raw).get("uid") or ""),
        generation=int(metadata_of(raw).get("generation") or 1),
        replicas=replicas,
        selector=selector,
        strategy=strategy,
        template=template,
        min_ready_s=min_ready,
        progress_deadline_s=deadline,
    )


def template_hash(template: Any) -> str:
    """10 characters of HASH_ALPHABET from the canonical JSON of the pod template."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"), default=str)
    number = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big")
    letters = []
    for _ in range(10):
        number, index = divmod(number, len(HASH_ALPHABET))
        letters.append(HASH_ALPHABET[index])
    return "".join(letters)


def _fill_defaults(spec: dict[str, Any]) -> None:
    for key, value in SPEC_DEFAULTS.items():
        spec.setdefault(key, value)
    strategy = spec.setdefault("strategy", {})
    if isinstance(strategy, dict):
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            if isinstance(rolling, dict):
                rolling.setdefault("maxSurge", "25%")
                rolling.setdefault("maxUnavailable", "25%")
    template = spec.get("template")
    pod_spec = template.get("spec") if isinstance(template, dict) else None
    if isinstance(pod_spec, dict):
        for key, value in POD_SPEC_DEFAULTS.items():
            pod_spec.setdefault(key, value)


def _replicas(value: Any, causes: list[Cause]) -> int:
    if not _whole(value) or value < 0:
        causes.append(
            Cause(
                field="spec.replicas",
                message=f"Invalid value: {value!r}: must be greater than or equal to 0",
            )
        )
        return 0
    return int(value)


def _selector(value: Any, causes: list[Cause]) -> Selector | None:
    if not isinstance(value, dict):
        causes.append(
            Cause(field="spec.selector", message="Required value", reason="FieldValueRequired")
        )
        return None
    labels = value.get("matchLabels")
    if labels is not None and not isinstance(labels, dict):
        causes.append(Cause(field="spec.selector.matchLabels", message="must be a map of strings"))
        return None
    for key, item in (labels or {}).items():
        error = label_key_error(str(key)) or label_value_error(str(item))
        if error:
            causes.append(Cause(field="spec.selector.matchLabels", message=error))
    try:
        selector = selector_from_spec(value)
    except (Invalid, KeyError, TypeError, AttributeError) as exc:
        causes.append(Cause(field="spec.selector.matchExpressions", message=str(exc)))
        return None
    if not selector.requirements:
        causes.append(
            Cause(
                field="spec.selector",
                message=f"Invalid value: {json.dumps(value)}: empty selector is invalid for "
                "deployment",
            )
        )
        return None
    return selector


def _template(value: Any, causes: list[Cause], selector: Selector | None) -> PodTemplate | None:
    field = "spec.template"
    if not isinstance(value, dict):
        causes.append(Cause(field=field, message="Required value", reason="FieldValueRequired"))
        return None
    metadata = value.get("metadata")
    labels = (metadata.get("labels") if isinstance(metadata, dict) else None) or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        causes.append(Cause(field=f"{field}.metadata.labels", message="must be a map of strings"))
        labels = {}
    if selector is not None and not selector.matches(labels):
        causes.append(
            Cause(
                field=f"{field}.metadata.labels",
                message=f"Invalid value: {json.dumps(labels, sort_keys=True)}: `selector` does "
                "not match template `labels`",
            )
        )
    pod_spec = value.get("spec")
    if not isinstance(pod_spec, dict):
        causes.append(
            Cause(field=f"{field}.spec", message="Required value", reason="FieldValueRequired")
        )
        return None
    container = _only_container(pod_spec, causes)
    _check_pod_fields(pod_spec, causes)
    grace = _seconds(pod_spec, "terminationGracePeriodSeconds", DEFAULT_GRACE_S, causes, field)
    if container is None:
        return None
    return PodTemplate(
        labels=dict(labels),
        container=container,
        container_object=copy.deepcopy(pod_spec["containers"][0]),
        hostname=_dns_label(pod_spec, "hostname", causes),
        subdomain=_dns_label(pod_spec, "subdomain", causes),
        termination_grace_s=grace,
        hash=template_hash(value),
        service_account=service_account_of(
            pod_spec, "spec.template.spec.serviceAccountName", causes
        ),
    )


def _only_container(pod_spec: dict[str, Any], causes: list[Cause]) -> Container | None:
    field = "spec.template.spec.containers"
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        causes.append(Cause(field=field, message="Required value", reason="FieldValueRequired"))
        return None
    if len(containers) > 1:
        causes.append(
            Cause(
                field=field,
                message=f"Too many: {len(containers)}: funcmesh runs exactly one container per "
                "pod (a process); split the others into Deployments of their own",
                reason="FieldValueTooMany",
            )
        )
    return parse_container(containers[0], f"{field}[0]", causes)


def _check_pod_fields(pod_spec: dict[str, Any], causes: list[Cause]) -> None:
    for name in UNSUPPORTED_POD_FIELDS:
        if pod_spec.get(name):
            causes.append(
                Cause(
                    field=f"spec.template.spec.{name}",
                    message=f"{name} are not supported by funcmesh yet",
                    reason="FieldValueForbidden",
                )
            )
    policy = pod_spec.get("restartPolicy", "Always")
    if policy != "Always":
        causes.append(
            Cause(
                field="spec.template.spec.restartPolicy",
                message=f'Unsupported value: "{policy}": supported values: "Always"',
                reason="FieldValueNotSupported",
            )
        )


def _dns_label(pod_spec: dict[str, Any], key: str, causes: list[Cause]) -> str | None:
    value = pod_spec.get(key)
    if value in (None, ""):
        return None
    error = dns1123_label_error(value) if isinstance(value, str) else "must be a string"
    if error:
        causes.append(Cause(field=f"spec.template.spec.{key}", message=error))
        return None
    return str(value)


def _strategy(value: Any, causes: list[Cause]) -> Strategy:
    field = "spec.strategy"
    if value is None:
        return Strategy()
    kind = value.get("type", "RollingUpdate") if isinstance(value, dict) else None
    if kind not in STRATEGIES:
        causes.append(
            Cause(
                field=f"{field}.type",
                message=f'Unsupported value: "{kind}": supported values: "Recreate", '
                '"RollingUpdate"',
                reason="FieldValueNotSupported",
            )
        )
        return Strategy()
    assert isinstance(value, dict)
    if kind == "Recreate":
        if value.get("rollingUpdate"):
            causes.append(
                Cause(
                    field=f"{field}.rollingUpdate",
                    message="may not be specified when strategy `type` is 'Recreate'",
                    reason="FieldValueForbidden",
                )
            )
        return Strategy(type="Recreate", max_surge=0, max_unavailable="100%")
    rolling = value.get("rollingUpdate") or {}
    surge = _int_or_percent(
        rolling.get("maxSurge", "25%"), f"{field}.rollingUpdate.maxSurge", causes
    )
    unavailable = _int_or_percent(
        rolling.get("maxUnavailable", "25%"), f"{field}.rollingUpdate.maxUnavailable", causes
    )
    strategy = Strategy(max_surge=surge, max_unavailable=unavailable)
    if strategy.surge(100) == 0 and strategy.unavailable(100) == 0:
        causes.append(
            Cause(
                field=f"{field}.rollingUpdate.maxUnavailable",
                message="Invalid value: 0: may not be 0 when `maxSurge` is 0",
            )
        )
    return strategy


def _int_or_percent(value: Any, field: str, causes: list[Cause]) -> int | str:
    if _whole(value) and value >= 0:
        return int(value)
    percent = isinstance(value, str) and value.endswith("%") and value[:-1].isdigit()
    if percent and (int(value[:-1]) <= 100 or not field.endswith("maxUnavailable")):
        return str(value)
    causes.append(
        Cause(
            field=field,
            message=f"Invalid value: {value!r}: must be a non-negative integer or a percentage "
            "(e.g. 25%), at most 100% for maxUnavailable",
        )
    )
    return 0


def _scaled(value: int | str, replicas: int, *, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    share = int(value.rstrip("%")) * replicas / 100
    return math.ceil(share) if round_up else math.floor(share)


def _seconds(
    spec: Mapping[str, Any], key: str, default: int, causes: list[Cause], field: str = "spec"
) -> int:
    value = spec.get(key, default)
    if not _whole(value) or value < 0:
        causes.append(
            Cause(field=f"{field}.{key}", message=f"Invalid value: {value!r}: must be >= 0")
        )
        return default
    return int(value)


def _whole(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
