"""The Kubeless trigger objects: validation and typed views of what their controllers need.

Field names on the wire are Kubeless's exactly. Parsing checks everything a controller would
otherwise trip over later (a NATS subject the server refuses, a label selector that cannot be
evaluated), so admission refuses such objects and nothing half-working is stored. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from funcmesh.errors import Cause, Invalid
from funcmesh.model.kinds import CRONJOB_TRIGGER, NATS_TRIGGER
from funcmesh.model.names import dns1123_label_error, label_key_error, label_value_error
from funcmesh.model.objects import (
    metadata_causes,
    metadata_of,
    name_of,
    namespace_of,
    parse_rfc3339,
    raise_if_causes,
)
from funcmesh.model.schedules import Schedule, parse_schedule
from funcmesh.model.selectors import Requirement, Selector, selector_from_spec

# -- NATSTrigger ---------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s")
_SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsTriggerSpec:
    """One NATSTrigger: deliver each message on ``topic`` to every Function ``selector`` picks."""

    namespace: str
    name: str
    generation: int
    topic: str
    selector: Selector

    @property
    def queue_group(self) -> str:
        """The NATS queue group: several daemons subscribed share the messages, once each."""
        return f"{self.namespace}_{self.name}"


def parse_nats_trigger(obj: Mapping[str, Any]) -> NatsTriggerSpec:
    """The typed view of a NATSTrigger, or Invalid naming every bad field."""
    causes = metadata_causes(obj, NATS_TRIGGER) + _nats_spec_causes(obj.get("spec"))
    raise_if_causes(causes, kind=NATS_TRIGGER.kind, name=name_of(obj))
    spec = obj["spec"]
    return NatsTriggerSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        generation=int(metadata_of(obj).get("generation") or 1),
        topic=spec["topic"],
        selector=selector_from_spec(spec["functionSelector"]),
    )


def _nats_spec_causes(spec: object) -> list[Cause]:
    if not isinstance(spec, dict):
        return [
            Cause(field="spec", message="spec must be an object with topic and functionSelector")
        ]
    causes = []
    topic = spec.get("topic")
    if not isinstance(topic, str) or not topic:
        causes.append(
            Cause(field="spec.topic", message="topic is required", reason="FieldValueRequired")
        )
    elif error := nats_subject_error(topic):
        causes.append(Cause(field="spec.topic", message=error))
    return causes + label_selector_causes(spec.get("functionSelector"), "spec.functionSelector")


def nats_subject_error(subject: str) -> str | None:
    """Why nats-server would refuse to subscribe to ``subject``, or None.

    Tokens are separated by single dots; ``*`` matches one token and ``>`` the rest, and each
    wildcard must be a token of its own (``>`` only the last one).
    """
    if _WHITESPACE.search(subject):
        return f'topic "{subject}" must not contain whitespace'
    tokens = subject.split(".")
    if "" in tokens:
        return f'topic "{subject}" has an empty token: tokens are separated by single dots'
    for index, token in enumerate(tokens):
        if ">" in token and (token != ">" or index != len(tokens) - 1):
            return f'topic "{subject}": the wildcard ">" must be the last token, on its own'
        if "*" in token and token != "*":
            return f'topic "{subject}": the wildcard "*" must be a token on its own'
    return None


def label_selector_causes(value: object, field: str) -> list[Cause]:
    """What is wrong with a Kubernetes ``LabelSelector``; it must select by something.

    An empty selector would match every Function of the namespace: for a trigger that is a
    mistake far more often than a wish, so it is refused (Kubeless's CLI required it too).
    """
    if value is None:
        return [
            Cause(
                field=field, message="a function selector is required", reason="FieldValueRequired"
            )
        ]
    if not isinstance(value, dict):
        return [Cause(field=field, message="must be a label selector object")]
    causes = _match_labels_causes(value.get("matchLabels"), f"{field}.matchLabels")
    causes += _match_expressions_causes(value.get("matchExpressions"), f"{field}.matchExpressions")
    if not causes and not value.get("matchLabels") and not value.get("matchExpressions"):
        causes.append(
            Cause(
                field=field,
                message="give matchLabels or matchExpressions: an empty selector would pick "
                "every function of the namespace",
                reason="FieldValueRequired",
            )
        )
    return causes


def _match_labels_causes(labels: object, field: str) -> list[Cause]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [Cause(field=field, message="must be a map of label keys to values")]
    causes = []
    for key, value in labels.items():
        error = label_key_error(str(key))
        if error is None:
            error = (
                label_value_error(value)
                if isinstance(value, str)
                else f'label "{key}" must have a string value, got {value!r}'
            )
        if error:
            causes.append(Cause(field=field, message=error))
    return causes


def _match_expressions_causes(expressions: object, field: str) -> list[Cause]:
    if expressions is None:
        return []
    if not isinstance(expressions, list):
        return [Cause(field=field, message="must be a list of label selector requirements")]
    causes = []
    for index, expression in enumerate(expressions):
        causes += _expression_causes(expression, f"{field}[{index}]")
    return causes


def _expression_causes(expression: object, field: str) -> list[Cause]:
    if not isinstance(expression, dict):
        return [Cause(field=field, message="must be an object with key, operator and values")]
    key, operator, values = (expression.get(k) for k in ("key", "operator", "values"))
    key_error = label_key_error(key) if isinstance(key, str) and key else "key is required"
    if key_error:
        return [Cause(field=f"{field}.key", message=key_error)]
    if operator not in _SELECTOR_OPERATORS:
        supported = ", ".join(f'"{op}"' for op in _SELECTOR_OPERATORS)
        message = f'Unsupported value: "{operator}": supported values: {supported}'
        return [Cause(field=f"{field}.operator", message=message, reason="FieldValueNotSupported")]
    if values is not None and (
        not isinstance(values, list) or not all(isinstance(v, str) for v in values)
    ):
        return [Cause(field=f"{field}.values", message="must be a list of strings")]
    if operator in ("In", "NotIn") and not values:
        message = "must be specified when `operator` is 'In' or 'NotIn'"
        return [Cause(field=f"{field}.values", message=message, reason="FieldValueRequired")]
    if operator in ("Exists", "DoesNotExist") and values:
        message = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        return [Cause(field=f"{field}.values", message=message, reason="FieldValueForbidden")]
    return [
        Cause(field=f"{field}.values", message=e)
        for v in values or []
        if (e := label_value_error(v))
    ]


def label_selector_spec(selector: Selector) -> dict[str, Any]:
    """The ``LabelSelector`` for a parsed ``-l`` style selector (``a=b,env in (x,y),!old``).

    ``=`` clauses become ``matchLabels``, the others ``matchExpressions`` (``!=`` is ``NotIn``
    with one value), as Kubernetes's ``ParseToLabelSelector`` does.
    """
    labels: dict[str, str] = {}
    expressions: list[dict[str, Any]] = []
    operators = {"!=": "NotIn", "in": "In", "notin": "NotIn", "exists": "Exists"}
    for req in selector.requirements:
        if req.op == "=" and len(req.values) == 1 and req.key not in labels:
            labels[req.key] = next(iter(req.values))
            continue
        expression: dict[str, Any] = {
            "key": req.key,
            "operator": operators.get(req.op, "In" if req.op == "=" else "DoesNotExist"),
        }
        if req.values:
            expression["values"] = sorted(req.values)
        expressions.append(expression)
    result: dict[str, Any] = {}
    if labels:
        result["matchLabels"] = labels
    if expressions:
        result["matchExpressions"] = expressions
    return result


def selector_text(selector: Selector) -> str:
    """``a=b,env in (x,y),!old``: a selector as ``kubectl`` writes one."""
    return ",".join(_requirement_text(req) for req in selector.requirements)


def _requirement_text(req: Requirement) -> str:
    values = sorted(req.values)
    match req.op:
        case "=" | "!=" if len(values) == 1:
            return f"{req.key}{req.op}{values[0]}"
        case "exists":
            return req.key
        case "!exists":
            return f"!{req.key}"
        case _:
            op = "notin" if req.op in ("notin", "!=") else "in"
            return f"{req.key} {op} ({','.join(values)})"


# -- CronJobTrigger ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CronJobTriggerSpec:
    """One CronJobTrigger: call ``function_name`` on ``schedule``, POSTing ``payload`` if any."""

    namespace: str
    name: str
    uid: str
    generation: int
    created_s: float | None  # the anchor of ``@every``; None until the store has the object
    function_name: str
    schedule: Schedule
    payload: Mapping[str, Any] | None  # None: a GET without a body, as Kubeless's curl did


def parse_cronjob_trigger(obj: Mapping[str, Any]) -> CronJobTriggerSpec:
    """The typed view of a CronJobTrigger, or Invalid naming every bad field."""
    causes = metadata_causes(obj, CRONJOB_TRIGGER) + _cronjob_spec_causes(obj.get("spec"))
    raise_if_causes(causes, kind=CRONJOB_TRIGGER.kind, name=name_of(obj))
    spec, meta = obj["spec"], metadata_of(obj)
    created = meta.get("creationTimestamp")
    return CronJobTriggerSpec(
        namespace=namespace_of(obj) or "default",
        name=name_of(obj),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 1),
        created_s=parse_rfc3339(created) if isinstance(created, str) and created else None,
        function_name=spec["function-name"],
        schedule=parse_schedule(spec["schedule"]),
        payload=spec.get("payload"),
    )


def _cronjob_spec_causes(spec: object) -> list[Cause]:
    if not isinstance(spec, dict):
        message = "spec must be an object with schedule and function-name"
        return [Cause(field="spec", message=message, reason="FieldValueRequired")]
    causes = []
    schedule = spec.get("schedule")
    if not isinstance(schedule, str) or not schedule.strip():
        message = "schedule is required, e.g. */5 * * * *, @hourly or @every 10s"
        causes.append(Cause(field="spec.schedule", message=message, reason="FieldValueRequired"))
    else:
        try:
            parse_schedule(schedule)
        except Invalid as exc:
            causes.append(Cause(field="spec.schedule", message=str(exc)))
    function_name = spec.get("function-name")
    if not isinstance(function_name, str) or not function_name:
        message = "function-name is required"
        causes.append(
            Cause(field="spec.function-name", message=message, reason="FieldValueRequired")
        )
    elif error := dns1123_label_error(function_name):
        causes.append(Cause(field="spec.function-name", message=error))
    payload = spec.get("payload")
    if payload is not None and not isinstance(payload, dict):
        message = f"payload must be a JSON object, got {_json_type(payload)}"
        causes.append(Cause(field="spec.payload", message=message))
    return causes


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "a number"
