from __future__ import annotations

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.selectors import parse_selector, selector_from_spec


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {"a": "1"}, True),
        ("app=web", {"app": "web"}, True),
        ("app=web", {"app": "db"}, False),
        ("app==web", {"app": "web"}, True),
        ("app!=web", {"app": "db"}, True),
        ("app!=web", {}, True),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("env in (a, b),tier notin (db)", {"env": "b", "tier": "web"}, True),
        ("env in (a,b)", {"env": "c"}, False),
        ("app=web,function=hello", {"app": "web"}, False),
    ],
)
def test_selector_matching(text: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(text).matches(labels) is expected


def test_label_selector_spec() -> None:
    selector = selector_from_spec(
        {"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}
    )
    assert selector.matches({"a": "1", "b": ""})
    assert not selector.matches({"a": "1"})


def test_bad_operator_is_invalid() -> None:
    with pytest.raises(Invalid, match="Bogus"):
        selector_from_spec({"matchExpressions": [{"key": "b", "operator": "Bogus"}]})
