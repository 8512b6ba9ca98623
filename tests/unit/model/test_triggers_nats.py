"""NATSTrigger parsing (model.triggers): subjects, label selectors, and selector text."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.selectors import parse_selector
from funcmesh.model.triggers import (
    label_selector_spec,
    nats_subject_error,
    parse_nats_trigger,
    selector_text,
)

# As ``kubeless trigger nats create orders --function-selector topic=orders
# --trigger-topic orders.created`` stores it.
KUBELESS_EXAMPLE: dict[str, Any] = {
    "apiVersion": "kubeless.io/v1beta1",
    "kind": "NATSTrigger",
    "metadata": {
        "name": "orders",
        "namespace": "shop",
        "labels": {"created-by": "kubeless"},
        "generation": 3,
    },
    "spec": {"topic": "orders.created", "functionSelector": {"matchLabels": {"topic": "orders"}}},
}


def with_spec(**fields: Any) -> dict[str, Any]:
    obj = copy.deepcopy(KUBELESS_EXAMPLE)
    obj["spec"].update(fields)
    return obj


def test_a_kubeless_trigger_parses() -> None:
    spec = parse_nats_trigger(KUBELESS_EXAMPLE)

    assert (spec.namespace, spec.name, spec.generation) == ("shop", "orders", 3)
    assert spec.topic == "orders.created"
    assert spec.queue_group == "shop_orders"
    assert spec.selector.matches({"topic": "orders", "function": "x"})
    assert not spec.selector.matches({"topic": "invoices"})


def test_match_expressions_select_too() -> None:
    selector = {
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["a", "b"]},
            {"key": "legacy", "operator": "DoesNotExist"},
        ]
    }
    spec = parse_nats_trigger(with_spec(functionSelector=selector))

    assert spec.selector.matches({"tier": "b"})
    assert not spec.selector.matches({"tier": "b", "legacy": "yes"})
    assert not spec.selector.matches({"tier": "c"})


@pytest.mark.parametrize(
    ("subject", "error"),
    [
        ("orders", None),
        ("orders.created.eu", None),
        ("orders.*.eu", None),
        ("orders.>", None),
        (">", None),
        ("orders created", 'topic "orders created" must not contain whitespace'),
        ("orders..created", "has an empty token"),
        (".orders", "has an empty token"),
        ("orders.", "has an empty token"),
        ("orders.>.eu", 'the wildcard ">" must be the last token'),
        ("orders.a>", 'the wildcard ">" must be the last token'),
        ("orders.a*", 'the wildcard "*" must be a token on its own'),
    ],
)
def test_subject_syntax(subject: str, error: str | None) -> None:
    found = nats_subject_error(subject)
    if error is None:
        assert found is None
    else:
        assert found is not None
        assert error in found


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"topic": ""}, "spec.topic", "topic is required"),
        ({"topic": 7}, "spec.topic", "topic is required"),
        ({"topic": "a b"}, "spec.topic", "must not contain whitespace"),
        ({"functionSelector": None}, "spec.functionSelector", "a function selector is required"),
        ({"functionSelector": "topic=orders"}, "spec.functionSelector", "label selector object"),
        ({"functionSelector": {}}, "spec.functionSelector", "an empty selector would pick"),
        (
            {"functionSelector": {"matchLabels": {"topic": "a b"}}},
            "spec.functionSelector.matchLabels",
            'label value "a b"',
        ),
        (
            {"functionSelector": {"matchLabels": {"-bad": "x"}}},
            "spec.functionSelector.matchLabels",
            'label key "-bad"',
        ),
        (
            {"functionSelector": {"matchLabels": {"n": 1}}},
            "spec.functionSelector.matchLabels",
            'label "n" must have a string value',
        ),
        (
            {"functionSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            "spec.functionSelector.matchExpressions[0].operator",
            'Unsupported value: "Near": supported values: "In", "NotIn", "Exists", "DoesNotExist"',
        ),
        (
            {"functionSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
            "spec.functionSelector.matchExpressions[0].values",
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            {
                "functionSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                }
            },
            "spec.functionSelector.matchExpressions[0].values",
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        (
            {"functionSelector": {"matchExpressions": [{"operator": "Exists"}]}},
            "spec.functionSelector.matchExpressions[0].key",
            "key is required",
        ),
        (
            {"functionSelector": {"matchExpressions": {"key": "a"}}},
            "spec.functionSelector.matchExpressions",
            "must be a list",
        ),
    ],
)
def test_bad_specs_name_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(Invalid) as caught:
        parse_nats_trigger(with_spec(**spec))

    assert str(caught.value).startswith('NATSTrigger "orders" is invalid: ')
    assert [cause.field for cause in caught.value.causes] == [field]
    assert message in caught.value.causes[0].message


def test_every_problem_is_reported_at_once() -> None:
    obj = with_spec(topic="a..b", functionSelector={})
    obj["metadata"]["name"] = "Bad_Name"
    with pytest.raises(Invalid) as caught:
        parse_nats_trigger(obj)

    fields = [cause.field for cause in caught.value.causes]
    assert fields == ["metadata.name", "spec.topic", "spec.functionSelector"]


def test_a_spec_that_is_no_object_is_invalid() -> None:
    obj = copy.deepcopy(KUBELESS_EXAMPLE)
    obj["spec"] = ["topic"]
    with pytest.raises(Invalid, match="spec must be an object with topic and functionSelector"):
        parse_nats_trigger(obj)


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("topic=orders", {"matchLabels": {"topic": "orders"}}),
        ("a=1,b=2", {"matchLabels": {"a": "1", "b": "2"}}),
        (
            "app=web,tier in (b,a)",
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
            },
        ),
        (
            "env!=prod",
            {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}]},
        ),
        ("beta", {"matchExpressions": [{"key": "beta", "operator": "Exists"}]}),
        ("!legacy", {"matchExpressions": [{"key": "legacy", "operator": "DoesNotExist"}]}),
        ("", {}),
    ],
)
def test_label_selector_spec_from_the_flag_syntax(text: str, spec: dict[str, Any]) -> None:
    assert label_selector_spec(parse_selector(text)) == spec


@pytest.mark.parametrize(
    "text",
    ["topic=orders", "app=web,tier in (a,b)", "env!=prod", "tier notin (a,b)", "beta,!legacy"],
)
def test_selector_text_writes_what_the_flag_reads(text: str) -> None:
    assert selector_text(parse_selector(text)) == text
