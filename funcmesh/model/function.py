"""The Kubeless ``Function`` object: validation and a typed view of what running it needs.

Field names on the wire are Kubeless's exactly (``function-content-type``, ``deps``, ...);
funcmesh settings Kubeless lacks are ``autoscaling.funcmesh.io/*`` annotations. Runtime ids are
only checked for syntax here: which runtimes exist is the runtime catalog's business.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Cause, Invalid
from funcmesh.model.containers import DEFAULT_SERVICE_ACCOUNT, service_account_of
from funcmesh.model.durations import parse_duration_s
from funcmesh.model.function_secrets import (
    SecretKeyRef,
    SecretMount,
    parse_secret_key_ref,
    parse_secret_mounts,
)
from funcmesh.model.kinds import FUNCTION
from funcmesh.model.objects import (
    annotations_of,
    labels_of,
    metadata_causes,
    metadata_of,
    name_of,
    namespace_of,
    raise_if_causes,
)
from funcmesh.model.quantity import parse_memory_bytes

DEFAULT_TIMEOUT_S = 180.0
SCALING_PREFIX = "autoscaling.funcmesh.io/"
SCALING_METRICS = ("concurrency", "cpu", "qps")
CPU_TARGET_MAX_PERCENT = 100  # percent of one core: one instance runs one handler thread at a time
CONTENT_TYPES = ("text", "base64", "url")
ARCHIVE_SUFFIXES = ("zip", "compressedtar")
_RUNTIME_ID = re.compile(r"^[a-zA-Z_-]+[0-9.]+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Scaling:
    """How many instances and how busy each may be.

    ``metric`` is what the autoscaler keeps near a target per instance: ``concurrency`` (calls in
    flight; the target is ``target_concurrency`` and ``target`` is None), ``cpu`` (``target``
    percent of one CPU core, 1-100) or ``qps`` (``target`` calls answered per second). Whatever
    the metric, ``target_concurrency`` also caps the calls one instance takes at once.
    """

    min_scale: int = 0
    max_scale: int = 10
    target_concurrency: int = 1
    scale_to_zero_after_s: float = 300.0
    metric: str = "concurrency"
    target: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionSpec:
    """Everything needed to build and run one Function, validated."""

    namespace: str
    name: str
    generation: int
    module: str
    handler: str
    runtime: str
    content: str
    content_type: str
    checksum: str
    deps: str
    timeout_s: float
    env: tuple[tuple[str, str], ...]
    memory_limit: str | None
    memory_limit_bytes: int | None
    labels: Mapping[str, str]
    scaling: Scaling
    # secret volumes mounted on containers[0], and env values from Secret keys
    secrets: tuple[SecretMount, ...] = ()
    secret_env: tuple[SecretKeyRef, ...] = ()
    # the pod spec's enableServiceLinks: the namespace's <NAME>_SERVICE_HOST... variables
    service_links: bool = True
    # the pod spec's serviceAccountName: the instances' mesh identity is
    # spiffe://cluster.local/ns/<namespace>/sa/<service_account>
    service_account: str = DEFAULT_SERVICE_ACCOUNT

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def secret_names(self) -> frozenset[str]:
        """Every Secret the function reads (its namespace's)."""
        return frozenset(
            [mount.secret for mount in self.secrets] + [ref.secret for ref in self.secret_env]
        )


def parse_function(obj: Mapping[str, Any]) -> FunctionSpec:
    """Validate a raw Function and return its typed view; Invalid lists every problem at once."""
    causes = metadata_causes(obj, FUNCTION)
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(Cause(field="spec", message="spec is required", reason="FieldValueRequired"))
        raise_if_causes(causes, kind="Function", name=name_of(obj))
        raise AssertionError("unreachable")
    parts = _Parts(causes)
    module, handler = parts.handler(spec.get("handler"))
    container = _container(spec)
    env, secret_env = parts.env(container.get("env"))
    result = FunctionSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        generation=int(metadata_of(obj).get("generation") or 1),
        module=module,
        handler=handler,
        runtime=parts.runtime(spec.get("runtime")),
        content=parts.text("function", spec.get("function")),
        content_type=parts.content_type(spec.get("function-content-type")),
        checksum=parts.checksum(spec.get("checksum")),
        deps=parts.text("deps", spec.get("deps")),
        timeout_s=parts.timeout(spec.get("timeout")),
        env=env,
        memory_limit=(memory := _memory_quantity(container)),
        memory_limit_bytes=parts.memory(memory),
        labels=labels_of(obj),
        scaling=parts.scaling(annotations_of(obj)),
        secrets=parse_secret_mounts(_pod_spec(spec), container, causes),
        secret_env=secret_env,
        service_links=_service_links(_pod_spec(spec), causes),
        service_account=service_account_of(
            _pod_spec(spec), "spec.deployment.spec.template.spec.serviceAccountName", causes
        ),
    )
    raise_if_causes(causes, kind="Function", name=result.name)
    return result


def _pod_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        pod_spec = spec["deployment"]["spec"]["template"]["spec"]
    except (KeyError, TypeError):
        return {}
    return pod_spec if isinstance(pod_spec, dict) else {}


def _service_links(pod_spec: Mapping[str, Any], causes: list[Cause]) -> bool:
    """``enableServiceLinks`` of the pod template (Kubernetes' default: true)."""
    value = pod_spec.get("enableServiceLinks", True)
    if not isinstance(value, bool):
        causes.append(
            Cause(
                field="spec.deployment.spec.template.spec.enableServiceLinks",
                message="must be true or false",
            )
        )
        return True
    return value


def _container(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        containers = _pod_spec(spec)["containers"]
        return containers[0] if isinstance(containers[0], dict) else {}
    except (KeyError, IndexError, TypeError):
        return {}


def _memory_quantity(container: Mapping[str, Any]) -> str | None:
    resources = container.get("resources") or {}
    for section in ("limits", "requests"):
        value = (resources.get(section) or {}).get("memory")
        if value not in (None, "", 0, "0"):
            return str(value)
    return None


class _Parts:
    """Field parsers that record a Cause instead of raising, so all problems surface together."""

    def __init__(self, causes: list[Cause]) -> None:
        self.causes = causes

    def fail(self, field: str, message: str, reason: str = "FieldValueInvalid") -> None:
        self.causes.append(Cause(field=field, message=message, reason=reason))

    def handler(self, value: Any) -> tuple[str, str]:
        text = str(value or "")
        module, dot, func = text.partition(".")
        if not dot or "." in func or not _IDENTIFIER.match(func) or not module:
            self.fail(
                "spec.handler",
                f'handler "{text}" must be module_name.handler_name (e.g. hello.handler)',
                "FieldValueRequired" if not text else "FieldValueInvalid",
            )
            return "", ""
        return module, func

    def runtime(self, value: Any) -> str:
        text = str(value or "")
        if not _RUNTIME_ID.match(text):
            self.fail("spec.runtime", f'runtime "{text}" must look like python3.11 or nodejs20')
        return text

    def text(self, field: str, value: Any) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            self.fail(f"spec.{field}", f"{field} must be a string")
            return ""
        return value

    def content_type(self, value: Any) -> str:
        text = str(value or "text")
        base, *suffixes = text.split("+")
        unknown = [s for s in suffixes if s not in (*ARCHIVE_SUFFIXES, "deps")]
        if base not in CONTENT_TYPES or unknown or len(set(suffixes) & set(ARCHIVE_SUFFIXES)) > 1:
            self.fail(
                "spec.function-content-type",
                f'unknown function-content-type "{text}": expected text, base64 or url, '
                "optionally +zip or +compressedtar",
            )
        return text

    def checksum(self, value: Any) -> str:
        text = str(value or "")
        algorithm, _, digest = text.partition(":")
        if text and (algorithm != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", digest)):
            self.fail("spec.checksum", f'checksum "{text}" must be sha256:<64 hex digits> or empty')
        return text.lower()

    def timeout(self, value: Any) -> float:
        if value in (None, ""):
            return DEFAULT_TIMEOUT_S
        try:
            seconds = parse_duration_s(value, what="timeout")
        except Invalid as exc:
            self.fail("spec.timeout", str(exc))
            return DEFAULT_TIMEOUT_S
        if seconds <= 0:
            self.fail("spec.timeout", f'timeout "{value}" must be more than 0 seconds')
        return seconds

    def env(self, value: Any) -> tuple[tuple[tuple[str, str], ...], tuple[SecretKeyRef, ...]]:
        """Plain values, and values from Secret keys; a name given twice across both is refused
        (which one wins would be a guess)."""
        if value is None:
            return (), ()
        pairs: list[tuple[str, str]] = []
        refs: list[SecretKeyRef] = []
        for index, item in enumerate(value if isinstance(value, list) else [None]):
            field = f"spec.deployment.spec.template.spec.containers[0].env[{index}]"
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                self.fail(field, "each env entry needs a name and a value")
            elif "valueFrom" in item and item.get("value") not in (None, ""):
                self.fail(field, f'env "{item["name"]}": give value or valueFrom, not both')
            elif "valueFrom" in item:
                ref = parse_secret_key_ref(item["name"], item["valueFrom"], field, self.causes)
                if ref is not None:
                    refs.append(ref)
            else:
                pairs.append((item["name"], str(item.get("value", ""))))
        plain = {name for name, _ in pairs}
        for ref in refs:
            if ref.env in plain:
                self.fail(
                    "spec.deployment.spec.template.spec.containers[0].env",
                    f'env "{ref.env}" is given both as a value and from a Secret',
                )
        return tuple(pairs), tuple(refs)

    def memory(self, quantity: str | None) -> int | None:
        if quantity is None:
            return None
        try:
            return parse_memory_bytes(quantity) or None
        except Invalid as exc:
            self.fail("spec.deployment.spec.template.spec.containers[0].resources", str(exc))
            return None

    def scaling(self, annotations: Mapping[str, str]) -> Scaling:
        defaults = Scaling()
        values: dict[str, Any] = {}
        for key in ("min-scale", "max-scale", "target-concurrency"):
            raw = annotations.get(SCALING_PREFIX + key)
            if raw is None:
                continue
            if not str(raw).strip().isdigit():
                self.fail(
                    f"metadata.annotations[{SCALING_PREFIX}{key}]",
                    f'"{raw}" must be a whole number',
                )
                continue
            values[key.replace("-", "_")] = int(raw)
        raw_idle = annotations.get(SCALING_PREFIX + "scale-to-zero-after")
        if raw_idle is not None:
            try:
                values["scale_to_zero_after_s"] = parse_duration_s(
                    raw_idle, what="scale-to-zero-after"
                )
            except Invalid as exc:
                self.fail(f"metadata.annotations[{SCALING_PREFIX}scale-to-zero-after]", str(exc))
        values.update(self._scaling_metric(annotations))
        scaling = Scaling(**{**_scaling_fields(defaults), **values})
        self._check_scaling(scaling)
        return scaling

    def _check_scaling(self, scaling: Scaling) -> None:
        field = "metadata.annotations"
        if scaling.max_scale < 1:
            self.fail(field, f"{SCALING_PREFIX}max-scale must be at least 1")
        if scaling.min_scale > scaling.max_scale:
            self.fail(
                field,
                f"{SCALING_PREFIX}min-scale ({scaling.min_scale}) must not exceed "
                f"max-scale ({scaling.max_scale})",
            )
        if scaling.target_concurrency < 1:
            self.fail(field, f"{SCALING_PREFIX}target-concurrency must be at least 1")

    def _scaling_metric(self, annotations: Mapping[str, str]) -> dict[str, Any]:
        """``metric`` and ``target``: a target only for cpu and qps, and then a required one."""
        metric = str(annotations.get(SCALING_PREFIX + "metric", "concurrency"))
        raw = annotations.get(SCALING_PREFIX + "target")
        field = f"metadata.annotations[{SCALING_PREFIX}target]"
        if metric not in SCALING_METRICS:
            self.fail(
                f"metadata.annotations[{SCALING_PREFIX}metric]",
                f'"{metric}" must be one of {", ".join(SCALING_METRICS)}',
            )
        elif metric == "concurrency" and raw is not None:
            self.fail(
                field,
                f"{SCALING_PREFIX}target applies to the cpu and qps metrics; for concurrency "
                f"set {SCALING_PREFIX}target-concurrency",
            )
        elif metric != "concurrency":
            target = None if raw is None else _metric_target(metric, str(raw))
            if target is not None:
                return {"metric": metric, "target": target}
            unit = (
                f"a whole percentage of one CPU core, 1 to {CPU_TARGET_MAX_PERCENT}"
                if metric == "cpu"
                else "calls per second, a number above 0"
            )
            if raw is None:
                self.fail(field, f"required with metric {metric}: {unit}", "FieldValueRequired")
            else:
                self.fail(field, f'"{raw}" must be {unit} (metric {metric})')
        return {}


def _scaling_fields(scaling: Scaling) -> dict[str, Any]:
    return {
        "min_scale": scaling.min_scale,
        "max_scale": scaling.max_scale,
        "target_concurrency": scaling.target_concurrency,
        "scale_to_zero_after_s": scaling.scale_to_zero_after_s,
        "metric": scaling.metric,
        "target": scaling.target,
    }


def _metric_target(metric: str, raw: str) -> float | None:
    """The target of a cpu (whole percent, 1-100) or qps (calls/s, above 0) rule; None if bad."""
    text = raw.strip()
    if metric == "cpu":
        ok = text.isdigit() and 1 <= int(text) <= CPU_TARGET_MAX_PERCENT
        return float(text) if ok else None
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number > 0 else None
