from __future__ import annotations

import copy
from typing import Any

import pytest

from funcmesh.errors import Invalid
from funcmesh.model.containers import (
    Exec,
    HttpGet,
    TcpSocket,
    command_line,
    environment_of,
    expand_references,
)
from funcmesh.model.deployments import (
    HASH_ALPHABET,
    admit_deployment,
    parse_deployment,
    template_hash,
)


def deployment(**changes: Any) -> dict[str, Any]:
    """A small valid Deployment; ``changes`` maps a /-separated path to a value (None: del)."""
    obj: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {
                            "name": "web",
                            "image": "python:3.11",
                            "command": ["python3", "-m", "http.server", "$(PORT)"],
                            "ports": [{"name": "http", "containerPort": 9000}],
                        }
                    ]
                },
            },
        },
    }
    for path, value in changes.items():
        *parents, last = path.split("/")
        target = obj
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is None:
            del target[last]
        else:
            target[last] = value
    return obj


CONTAINER = "spec/template/spec/containers/0"


def causes_of(obj: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(Invalid) as caught:
        admit_deployment(obj, None)
    assert str(caught.value).startswith('Deployment.apps "web" is invalid: ')
    return {cause.field: cause.message for cause in caught.value.causes}


def test_admission_fills_in_kubernetes_defaults() -> None:
    admitted = admit_deployment(deployment(), None)
    spec = admitted["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
    }
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Always"
    assert pod_spec["terminationGracePeriodSeconds"] == 30
    assert pod_spec["containers"][0]["ports"][0]["protocol"] == "TCP"


def test_admission_leaves_its_input_alone() -> None:
    obj = deployment()
    before = copy.deepcopy(obj)
    admit_deployment(obj, None)
    assert obj == before


def test_typed_view() -> None:
    spec = parse_deployment(admit_deployment(deployment(**{"spec/replicas": 3}), None))
    assert (spec.namespace, spec.name, spec.replicas) == ("default", "web", 3)
    assert spec.selector.matches({"app": "web", "other": "x"})
    container = spec.template.container
    assert container.command == ("python3", "-m", "http.server", "$(PORT)")
    assert container.first_port == 9000
    assert container.image == "python:3.11"
    assert spec.template.termination_grace_s == 30
    assert spec.strategy.surge(3) == 1  # 25% rounds up
    assert spec.strategy.unavailable(3) == 0  # and down


def test_probes_get_kubernetes_timings_and_named_ports_resolve() -> None:
    obj = deployment(
        **{
            f"{CONTAINER}/readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
            f"{CONTAINER}/livenessProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 2},
        }
    )
    admitted = admit_deployment(obj, None)
    readiness = admitted["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert readiness["periodSeconds"] == 10
    assert readiness["failureThreshold"] == 3
    assert readiness["httpGet"]["scheme"] == "HTTP"
    container = parse_deployment(admitted).template.container
    assert container.readiness is not None
    assert container.readiness.action == HttpGet(port=9000, path="/ready")
    assert container.liveness is not None
    assert container.liveness.action == TcpSocket(port=9000)
    assert container.liveness.period_s == 2


def test_exec_probe() -> None:
    obj = deployment(**{f"{CONTAINER}/readinessProbe": {"exec": {"command": ["test", "-f", "x"]}}})
    probe = parse_deployment(admit_deployment(obj, None)).template.container.readiness
    assert probe is not None
    assert probe.action == Exec(command=("test", "-f", "x"))


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"spec/selector": None}, "spec.selector", "Required value"),
        (
            {"spec/selector": {"matchLabels": {"app": "other"}}},
            "spec.template.metadata.labels",
            "`selector` does not match template `labels`",
        ),
        ({"spec/selector": {}}, "spec.selector", "empty selector"),
        ({"spec/replicas": -1}, "spec.replicas", "greater than or equal to 0"),
        ({"spec/replicas": "2"}, "spec.replicas", "greater than or equal to 0"),
        (
            {f"{CONTAINER}/command": None},
            "spec.template.spec.containers[0].command",
            "funcmesh runs a process, not an image",
        ),
        (
            {f"{CONTAINER}/env": [{"name": "A", "valueFrom": {"secretKeyRef": {}}}]},
            "spec.template.spec.containers[0].env[0].valueFrom",
            "valueFrom is not supported yet",
        ),
        (
            {f"{CONTAINER}/env": [{"name": "1A", "value": "x"}]},
            "spec.template.spec.containers[0].env[0].name",
            "not a valid environment variable name",
        ),
        (
            {f"{CONTAINER}/ports": [{"containerPort": 70000}]},
            "spec.template.spec.containers[0].ports[0].containerPort",
            "between 1 and 65535",
        ),
        (
            {f"{CONTAINER}/ports": [{"containerPort": 80, "name": "HTTP_port"}]},
            "spec.template.spec.containers[0].ports[0].name",
            "no more than 15 characters",
        ),
        (
            {f"{CONTAINER}/readinessProbe": {"httpGet": {"port": "metrics"}}},
            "spec.template.spec.containers[0].readinessProbe.httpGet.port",
            'the container declares no port of that name (named ports: "http")',
        ),
        (
            {f"{CONTAINER}/readinessProbe": {"httpGet": {"port": 80}, "tcpSocket": {"port": 80}}},
            "spec.template.spec.containers[0].readinessProbe",
            "exactly one handler",
        ),
        (
            {f"{CONTAINER}/livenessProbe": {"tcpSocket": {"port": 80}, "successThreshold": 2}},
            "spec.template.spec.containers[0].livenessProbe.successThreshold",
            "must be 1",
        ),
        (
            {f"{CONTAINER}/readinessProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 0}},
            "spec.template.spec.containers[0].readinessProbe.periodSeconds",
            "at least 1",
        ),
        (
            {f"{CONTAINER}/workingDir": "relative/dir"},
            "spec.template.spec.containers[0].workingDir",
            "absolute path",
        ),
        (
            {"spec/template/spec/restartPolicy": "Never"},
            "spec.template.spec.restartPolicy",
            'supported values: "Always"',
        ),
        (
            {"spec/strategy": {"type": "Canary"}},
            "spec.strategy.type",
            'Unsupported value: "Canary"',
        ),
        (
            {"spec/strategy": {"rollingUpdate": {"maxSurge": 0, "maxUnavailable": 0}}},
            "spec.strategy.rollingUpdate.maxUnavailable",
            "may not be 0 when `maxSurge` is 0",
        ),
        ({"spec/template/spec/hostname": "Not_A_Label"}, "spec.template.spec.hostname", "DNS-1123"),
    ],
)
def test_bad_deployments_are_refused_naming_the_field(
    changes: dict[str, Any], field: str, words: str
) -> None:
    causes = causes_of(deployment(**changes))
    assert field in causes, causes
    assert words in causes[field]


def test_more_than_one_container_is_a_clear_error() -> None:
    obj = deployment()
    containers = obj["spec"]["template"]["spec"]["containers"]
    containers.append({**containers[0], "name": "sidecar"})
    causes = causes_of(obj)
    message = causes["spec.template.spec.containers"]
    assert message.startswith("Too many: 2: funcmesh runs exactly one container per pod")


def test_every_problem_is_reported_at_once() -> None:
    obj = deployment(**{"spec/replicas": -1, f"{CONTAINER}/command": None})
    assert {"spec.replicas", "spec.template.spec.containers[0].command"} <= set(causes_of(obj))


def test_the_selector_cannot_change() -> None:
    old = admit_deployment(deployment(), None)
    changed = deployment(
        **{
            "spec/selector": {"matchLabels": {"app": "web", "tier": "x"}},
            "spec/template/metadata/labels": {"app": "web", "tier": "x"},
        }
    )
    with pytest.raises(Invalid, match="spec.selector: Invalid value: .*field is immutable"):
        admit_deployment(changed, old)
    scaled = admit_deployment(deployment(**{"spec/replicas": 4}), old)  # other changes pass
    assert scaled["spec"]["replicas"] == 4


def test_template_hash_is_stable_and_follows_the_template() -> None:
    first = parse_deployment(admit_deployment(deployment(), None)).template.hash
    again = parse_deployment(admit_deployment(deployment(**{"spec/replicas": 5}), None))
    changed = parse_deployment(
        admit_deployment(deployment(**{f"{CONTAINER}/args": ["--bind", "x"]}), None)
    )
    assert len(first) == 10
    assert set(first) <= set(HASH_ALPHABET)
    assert again.template.hash == first  # scaling does not make a new template
    assert changed.template.hash != first
    assert template_hash({"b": 1, "a": 2}) == template_hash({"a": 2, "b": 1})


@pytest.mark.parametrize(
    ("text", "expanded"),
    [
        ("$(PORT)", "8080"),
        ("--bind=$(HOST):$(PORT)", "--bind=127.128.0.5:8080"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(PORT)", "$(PORT)"),
        ("cost: $5", "cost: $5"),
        ("$(PORT", "$(PORT"),
    ],
)
def test_references_expand_like_the_kubelet(text: str, expanded: str) -> None:
    env = {"PORT": "8080", "HOST": "127.128.0.5"}
    assert expand_references(text, env.get) == expanded


def test_env_values_refer_to_earlier_variables() -> None:
    obj = deployment(
        **{
            f"{CONTAINER}/env": [
                {"name": "URL", "value": "http://$(HOST):$(PORT)/"},
                {"name": "BACK", "value": "$(URL)x"},
                {"name": "PORT", "value": "9999"},
            ]
        }
    )
    container = parse_deployment(admit_deployment(obj, None)).template.container
    env = environment_of(container, {"HOST": "1.2.3.4", "PORT": "80"})
    assert env["URL"] == "http://1.2.3.4:80/"
    assert env["BACK"] == "http://1.2.3.4:80/x"
    assert env["PORT"] == "9999"  # the user's own value wins
    assert command_line(container, env)[-1] == "9999"
