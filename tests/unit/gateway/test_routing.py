"""Which function a request target calls, and what path the function sees."""

from __future__ import annotations

import pytest

from funcmesh.gateway.routing import (
    FunctionRoute,
    is_health_check,
    origin_form,
    route_function,
)


@pytest.mark.parametrize(
    ("target", "namespace", "name", "function_target"),
    [
        (b"/function/hello", "default", "hello", b"/"),
        (b"/function/hello/", "default", "hello", b"/"),
        (b"/function/hello/a/b?x=1", "default", "hello", b"/a/b?x=1"),
        (b"/function/hello?x=1&y=2", "default", "hello", b"/?x=1&y=2"),
        (b"/function/hello.team-a", "team-a", "hello", b"/"),
        (b"/function/hello.team-a/deep/path/", "team-a", "hello", b"/deep/path/"),
        (b"/function/hello.team-a?q=a.b/c", "team-a", "hello", b"/?q=a.b/c"),
        (b"/function/get-python/a%20b", "default", "get-python", b"/a%20b"),
        (b"/function/hello//double", "default", "hello", b"//double"),
    ],
)
def test_function_targets_route_to_the_function(
    target: bytes, namespace: str, name: str, function_target: bytes
) -> None:
    assert route_function(target) == FunctionRoute(
        namespace=namespace, name=name, target=function_target
    )


@pytest.mark.parametrize(
    "target",
    [
        b"/",
        b"/function",
        b"/function/",
        b"/function/?x=1",
        b"/functions/hello",
        b"/function/.team-a",
        b"/function/hello./x",
        b"/healthz",
        b"/api/v1/namespaces",
        b"*",
    ],
)
def test_other_targets_are_not_function_calls(target: bytes) -> None:
    assert route_function(target) is None


def test_display_name_is_namespace_slash_name() -> None:
    route = route_function(b"/function/hello.team-a")
    assert route is not None
    assert route.display_name == "team-a/hello"


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/function/hello?x=1", b"/function/hello?x=1"),
        (b"http://gw.example:8080/function/hello?x=1", b"/function/hello?x=1"),
        (b"https://gw.example/function/hello", b"/function/hello"),
        (b"http://gw.example", b"/"),
        (b"http://gw.example?x=1", b"/?x=1"),
        (b"*", b"*"),
    ],
)
def test_origin_form_strips_scheme_and_authority(target: bytes, expected: bytes) -> None:
    assert origin_form(target) == expected


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/healthz", True),
        (b"/healthz?verbose=1", True),
        (b"/healthzz", False),
        (b"/function/healthz", False),
    ],
)
def test_health_check_target(target: bytes, expected: bool) -> None:
    assert is_health_check(target) is expected
