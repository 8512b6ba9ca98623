"""Query parameters of list and watch requests, field selectors and pagination."""

from __future__ import annotations

from typing import Any

import pytest

from funcmesh.api.options import (
    DEFAULT_WATCH_TIMEOUT_S,
    paginate,
    parse_field_selector,
    parse_list_options,
)
from funcmesh.api.status import BadRequest

POD = {
    "metadata": {"name": "p", "namespace": "a", "labels": {"app": "web"}},
    "status": {"phase": "Running"},
    "spec": {"hostNetwork": False},
}


def test_defaults() -> None:
    options = parse_list_options({})
    assert options.resource_version is None
    assert options.watch is False
    assert options.timeout_s == DEFAULT_WATCH_TIMEOUT_S
    assert options.include_object == "Metadata"
    assert options.matches(POD)


def test_kubectl_parameters() -> None:
    options = parse_list_options(
        {
            "watch": "1",
            "resourceVersion": "42",
            "timeoutSeconds": "30",
            "labelSelector": "app=web",
            "fieldSelector": "metadata.name=p",
            "limit": "500",
            "allowWatchBookmarks": "true",
            "fieldManager": "kubectl-edit",
        }
    )
    assert (options.watch, options.resource_version, options.timeout_s) == (True, 42, 30.0)
    assert options.limit == 500
    assert options.matches(POD)
    assert not parse_list_options({"labelSelector": "app!=web"}).matches(POD)


def test_resource_version_zero_means_the_current_state() -> None:
    assert parse_list_options({"resourceVersion": "0"}).resource_version is None


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("metadata.name=p", True),
        ("metadata.name==p", True),
        ("metadata.name!=p", False),
        ("metadata.namespace=a,status.phase=Running", True),
        ("status.phase=Pending", False),
        ("spec.hostNetwork=false", True),
        ("spec.missing=", True),
        ("", True),
    ],
)
def test_field_selectors(selector: str, matches: bool) -> None:
    assert parse_field_selector(selector).matches(POD) is matches


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"limit": "ten"}, "limit"),
        ({"timeoutSeconds": "-1"}, "timeoutSeconds"),
        ({"resourceVersion": "abc"}, "resourceVersion"),
        ({"fieldSelector": "metadata.name"}, "fieldSelector"),
        ({"labelSelector": "a in (b"}, "labelSelector"),
        ({"includeObject": "Everything"}, "includeObject"),
    ],
)
def test_malformed_parameters_are_bad_requests(query: dict[str, str], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_list_options(query)


def items(*keys: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"metadata": {"namespace": ns, "name": name}} for ns, name in keys]


def test_pagination_walks_every_item_once() -> None:
    everything = items(("a", "x"), ("a", "y"), ("b", "x"), ("b", "z"), ("c", "a"))
    seen, token, pages = [], None, 0
    while True:
        page = paginate(everything, limit=2, continue_token=token, resource_version="7")
        seen += page.items
        pages += 1
        if page.continue_token is None:
            break
        assert page.remaining == len(everything) - len(seen)
        token = page.continue_token
    assert (seen, pages) == (everything, 3)


def test_without_limit_everything_is_one_page() -> None:
    page = paginate(items(("a", "x")), limit=None, continue_token=None, resource_version="1")
    assert (len(page.items), page.continue_token) == (1, None)


def test_malformed_continue_token() -> None:
    with pytest.raises(BadRequest, match="continue"):
        paginate(items(("a", "x")), limit=1, continue_token="garbage!", resource_version="1")
