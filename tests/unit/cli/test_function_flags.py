from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.cli.function_flags import (
    FunctionFlags,
    apply_merge_patch,
    build_function,
    build_update_patch,
    check_flags,
    normalize_timeout,
    parse_pairs,
)
from funcmesh.cli.sources import FunctionSource
from funcmesh.errors import Invalid
from funcmesh.model.function import parse_function

SOURCE = FunctionSource(
    content='def foo(event, context):\n    return "hello world"\n',
    content_type="text",
    checksum="sha256:" + "d2" * 32,
)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a=1"], (("a", "1"),)),
        (["a=1,b=2", "c=3"], (("a", "1"), ("b", "2"), ("c", "3"))),
        (["a:1"], (("a", "1"),)),
        (["URL=http://x:80/p"], (("URL", "http://x:80/p"),)),
        (["k:v=w"], (("k", "v=w"),)),
        (["bare"], (("bare", ""),)),
        (["a=1", "a=2"], (("a", "2"),)),
        (["a=,"], (("a", ""),)),
        ([""], ()),
    ],
)
def test_pairs_split_at_the_first_equals_or_colon(
    values: list[str], expected: tuple[tuple[str, str], ...]
) -> None:
    assert parse_pairs(values, flag="--env") == expected


def test_pair_without_a_name_is_an_error() -> None:
    with pytest.raises(Invalid, match='--label "=x": the name before "=" is missing'):
        parse_pairs(["=x"], flag="--label")


def test_deployed_object_has_the_kubeless_shape() -> None:
    flags = FunctionFlags(runtime="python3.11", handler="helloget.foo", source=SOURCE)
    obj = build_function(name="get-python", namespace="default", flags=flags)
    assert obj["apiVersion"] == "kubeless.io/v1beta1"
    assert obj["kind"] == "Function"
    assert obj["metadata"] == {
        "name": "get-python",
        "namespace": "default",
        "labels": {"created-by": "kubeless", "function": "get-python"},
    }
    spec = obj["spec"]
    assert {k: spec[k] for k in ("runtime", "handler", "timeout", "deps")} == {
        "runtime": "python3.11",
        "handler": "helloget.foo",
        "timeout": "180",
        "deps": "",
    }
    assert spec["function"] == SOURCE.content
    assert spec["function-content-type"] == "text"
    assert spec["checksum"] == SOURCE.checksum
    assert spec["service"] == {
        "ports": [
            {"name": "http-function-port", "port": 8080, "protocol": "TCP", "targetPort": 8080}
        ],
        "selector": {"created-by": "kubeless", "function": "get-python"},
        "type": "ClusterIP",
    }
    assert spec["deployment"]["spec"]["template"]["spec"]["containers"] == [
        {"name": "", "resources": {}}
    ]
    assert parse_function(obj).handler == "foo"


def test_env_labels_memory_cpu_and_port_land_where_kubeless_puts_them() -> None:
    flags = FunctionFlags(
        runtime="python3.11",
        handler="hello.handler",
        source=SOURCE,
        env=(("A", "1"), ("B", "two")),
        labels=(("team", "x"),),
        memory="128Mi",
        cpu="250m",
        port=9090,
        timeout="30",
    )
    obj = build_function(name="hello", namespace="dev", flags=flags)
    container = obj["spec"]["deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "two"}]
    quantities = {"memory": "128Mi", "cpu": "250m"}
    assert container["resources"] == {"limits": quantities, "requests": quantities}
    assert obj["metadata"]["labels"]["team"] == "x"
    assert obj["spec"]["service"]["selector"]["team"] == "x"
    assert obj["spec"]["service"]["ports"][0]["port"] == 9090
    assert obj["spec"]["service"]["ports"][0]["targetPort"] == 9090
    spec = parse_function(obj)
    assert (spec.timeout_s, spec.memory_limit_bytes) == (30.0, 128 << 20)


def current_function() -> dict[str, Any]:
    flags = FunctionFlags(
        runtime="python3.11",
        handler="hello.handler",
        source=SOURCE,
        env=(("OLD", "1"),),
        labels=(("team", "x"),),
        memory="64Mi",
        port=9090,
        timeout="45",
    )
    obj = build_function(name="hello", namespace="default", flags=flags)
    obj["metadata"] |= {"resourceVersion": "17", "generation": 3, "uid": "u-1"}
    return obj


def test_update_patch_names_only_what_was_given() -> None:
    patch = build_update_patch(current_function(), FunctionFlags(timeout="30"))
    assert patch == {"metadata": {"resourceVersion": "17"}, "spec": {"timeout": "30"}}


def test_update_without_port_or_timeout_keeps_them() -> None:
    current = current_function()
    patch = build_update_patch(current, FunctionFlags(handler="hello.other"))
    result = apply_merge_patch(current, patch)
    assert result["spec"]["timeout"] == "45"
    assert result["spec"]["service"]["ports"][0]["port"] == 9090
    assert result["spec"]["handler"] == "hello.other"


def test_update_env_replaces_the_list_and_keeps_memory() -> None:
    current = current_function()
    patch = build_update_patch(current, FunctionFlags(env=(("NEW", "2"),)))
    container = apply_merge_patch(current, patch)["spec"]["deployment"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["env"] == [{"name": "NEW", "value": "2"}]
    assert container["resources"]["limits"] == {"memory": "64Mi"}


def test_update_labels_replace_the_old_ones_but_keep_the_function_label() -> None:
    current = current_function()
    patch = build_update_patch(current, FunctionFlags(labels=(("tier", "web"),)))
    assert patch["metadata"]["labels"] == {
        "team": None,
        "created-by": "kubeless",
        "function": "hello",
        "tier": "web",
    }
    result = apply_merge_patch(current, patch)
    expected = {"created-by": "kubeless", "function": "hello", "tier": "web"}
    assert result["metadata"]["labels"] == expected
    assert result["spec"]["service"]["selector"] == expected


def test_update_port_changes_port_and_target_port_only() -> None:
    current = current_function()
    before = copy.deepcopy(current)
    result = apply_merge_patch(current, build_update_patch(current, FunctionFlags(port=7070)))
    assert result["spec"]["service"]["ports"] == [
        {"name": "http-function-port", "protocol": "TCP", "port": 7070, "targetPort": 7070}
    ]
    assert result["spec"]["service"]["selector"] == before["spec"]["service"]["selector"]
    assert current == before  # the read object is not modified


def test_update_with_new_code_sends_the_three_code_fields() -> None:
    source = FunctionSource(
        content="aGk=", content_type="base64+zip", checksum="sha256:" + "0" * 64
    )
    patch = build_update_patch(current_function(), FunctionFlags(source=source))
    assert patch["spec"] == {
        "function": "aGk=",
        "function-content-type": "base64+zip",
        "checksum": "sha256:" + "0" * 64,
    }


def test_update_with_no_flags_is_refused() -> None:
    with pytest.raises(Invalid, match="nothing to update"):
        build_update_patch(current_function(), FunctionFlags())


@pytest.mark.parametrize(
    ("name", "flags", "words"),
    [
        ("Hello", FunctionFlags(), 'function name "Hello" is not a valid name'),
        (
            "hello",
            FunctionFlags(handler="hello"),
            '--handler "hello" must be module_name.handler_name',
        ),
        ("hello", FunctionFlags(handler="a.b.c"), '--handler "a.b.c" must be'),
        ("hello", FunctionFlags(runtime="python"), '--runtime "python" is not a runtime id'),
        ("hello", FunctionFlags(memory="lots"), '--memory: quantity "lots" is not valid'),
        ("hello", FunctionFlags(cpu="x1"), '--cpu: quantity "x1" is not valid'),
        ("hello", FunctionFlags(port=0), "--port 0 is not a valid port number"),
        ("hello", FunctionFlags(env=(("1 A", "x"),)), '--env "1 A" is not a valid'),
        ("hello", FunctionFlags(labels=(("team", "a b"),)), '--label label value "a b"'),
    ],
)
def test_bad_flags_are_refused_before_any_request(
    name: str, flags: FunctionFlags, words: str
) -> None:
    with pytest.raises(Invalid) as caught:
        check_flags(name, flags)
    assert str(caught.value).startswith(words)


def test_every_bad_flag_is_listed() -> None:
    with pytest.raises(Invalid) as caught:
        check_flags("hello", FunctionFlags(handler="x", port=70000))
    assert [cause.message[:9] for cause in caught.value.causes] == ["--handler", "--port 70"]


@pytest.mark.parametrize(
    ("text", "expected"), [("180", "180"), ("30s", "30"), ("1.5m", "90"), ("0.5", "0.5")]
)
def test_timeout_is_stored_in_seconds(text: str, expected: str) -> None:
    assert normalize_timeout(text) == expected


@pytest.mark.parametrize("text", ["0", "soon", "-5"])
def test_bad_timeout_is_refused(text: str) -> None:
    with pytest.raises(Invalid, match="--timeout"):
        normalize_timeout(text)
