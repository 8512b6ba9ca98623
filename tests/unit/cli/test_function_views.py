from __future__ import annotations

import json
from typing import Any

from funcmesh.cli.function_flags import FunctionFlags, build_function
from funcmesh.cli.function_views import dependencies_text, describe_text, function_table
from funcmesh.cli.sources import FunctionSource

SOURCE = FunctionSource(content="x = 1\n", content_type="text", checksum="")


def deployed(name: str, **flags: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"runtime": "python3.11", "handler": "hello.handler"}
    obj = build_function(
        name=name, namespace="default", flags=FunctionFlags(source=SOURCE, **(defaults | flags))
    )
    obj["metadata"]["generation"] = 1
    obj["status"] = {
        "observedGeneration": 1,
        "instances": 1,
        "readyInstances": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}],
    }
    return obj


def test_list_shows_kubeless_columns() -> None:
    text = function_table([deployed("hello", deps="six\n# pinned\nrequests\n")], wide=False)
    assert text.splitlines() == [
        "NAME    NAMESPACE   HANDLER         RUNTIME      DEPENDENCIES   STATUS",
        "hello   default     hello.handler   python3.11   six            Ready",
        "                                                 requests",
    ]


def test_wide_headers_line_up_with_their_cells() -> None:
    obj = deployed("hello", memory="128Mi", env=(("A", "1"),), labels=(("team", "x"),))
    header, first, *rest = function_table([obj], wide=True).splitlines()
    for column, value in (("MEMORY", "128Mi"), ("ENV", "A=1"), ("LABEL", "created-by=kubeless")):
        assert first.index(value) == header.index(column)
    assert [line.strip() for line in rest] == ["function=hello", "team=x"]


def test_status_column_shows_build_failures() -> None:
    obj = deployed("hello")
    obj["status"]["conditions"] = [
        {
            "type": "Ready",
            "status": "False",
            "reason": "BuildFailed",
            "message": "pip: no six\nmore",
        }
    ]
    assert function_table([obj], wide=False).splitlines()[1].endswith("BuildFailed: pip: no six")


def test_node_dependencies_are_listed_by_package() -> None:
    package = json.dumps({"dependencies": {"lodash": "^4.17.21", "left-pad": "1.3.0"}})
    spec = {"runtime": "nodejs20", "deps": package}
    assert dependencies_text(spec) == "lodash: ^4.17.21\nleft-pad: 1.3.0"


def test_describe_has_the_kubeless_fields_and_conditions() -> None:
    obj = deployed("hello", memory="128Mi", env=(("foo", "bar"),), deps="six\nrequests\n")
    obj["status"]["runtime"] = "python3.12"
    obj["spec"]["runtime"] = "python3.7"
    lines = describe_text(obj, instances=1).splitlines()
    assert lines[:11] == [
        "Name:          hello",
        "Namespace:     default",
        "Handler:       hello.handler",
        "Runtime:       python3.7 (running as python3.12)",
        'Label:         {"created-by":"kubeless","function":"hello"}',
        'Envvar:        [{"name":"foo","value":"bar"}]',
        "Memory:        128Mi",
        "Dependencies:  six",
        "               requests",
        "Timeout:       180",
        "Status:        Ready",
    ]
    assert lines[11] == "Instances:     1"
    assert lines[12:] == [
        "Conditions:",
        "  TYPE    STATUS   REASON   MESSAGE",
        "  Ready   True     Ready",
    ]
