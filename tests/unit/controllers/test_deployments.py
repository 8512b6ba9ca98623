from __future__ import annotations

from typing import Any

from funcmesh.controllers.deployments import deployment_status
from funcmesh.discovery.service_env import ServiceEnvironments, service_environment
from funcmesh.discovery.services import EndpointsView, ServicePortView, ServiceTable, ServiceView
from funcmesh.model.conditions import find_condition
from funcmesh.model.deployments import admit_deployment, parse_deployment
from funcmesh.runtime.workloads import ReplicaCounts


def service(
    name: str, ip: str | None, *ports: tuple[str, int], namespace: str = "default"
) -> ServiceView:
    return ServiceView(
        namespace=namespace,
        name=name,
        type="ClusterIP",
        cluster_ip=ip,
        ports=tuple(
            ServicePortView(name=port_name, protocol="TCP", port=port, target_port=port)
            for port_name, port in ports
        ),
        selector=(("app", name),),
    )


def test_service_links_are_the_kubelets_variables() -> None:
    table = ServiceTable()
    table.put_service(service("redis-primary", "127.96.0.11", ("", 6379)))
    table.put_service(service("web", "127.96.0.12", ("http", 80), ("metrics", 9090)))
    table.put_service(service("headless", None, ("", 80)))
    table.put_service(service("elsewhere", "127.96.0.13", ("", 80), namespace="other"))
    env = service_environment(table, "default")
    assert env["REDIS_PRIMARY_SERVICE_HOST"] == "127.96.0.11"
    assert env["REDIS_PRIMARY_SERVICE_PORT"] == "6379"
    assert env["REDIS_PRIMARY_PORT"] == "tcp://127.96.0.11:6379"
    assert env["REDIS_PRIMARY_PORT_6379_TCP"] == "tcp://127.96.0.11:6379"
    assert env["REDIS_PRIMARY_PORT_6379_TCP_PROTO"] == "tcp"
    assert env["REDIS_PRIMARY_PORT_6379_TCP_PORT"] == "6379"
    assert env["REDIS_PRIMARY_PORT_6379_TCP_ADDR"] == "127.96.0.11"
    assert env["WEB_SERVICE_PORT"] == "80"  # the first port
    assert env["WEB_SERVICE_PORT_HTTP"] == "80"
    assert env["WEB_SERVICE_PORT_METRICS"] == "9090"
    assert env["WEB_PORT_9090_TCP_ADDR"] == "127.96.0.12"
    assert not any(key.startswith(("HEADLESS_", "ELSEWHERE_")) for key in env)
    assert service_environment(None, "default") == {}


def test_a_namespaces_links_are_kept_until_one_of_its_services_changes() -> None:
    table = ServiceTable()
    table.put_service(service("web", "127.96.0.12", ("http", 80)))
    environments = ServiceEnvironments(table)
    first = environments("default")
    assert environments("default") is first  # computed once
    table.put_service(service("elsewhere", "127.96.0.13", ("", 80), namespace="other"))
    assert environments("default") is first  # another namespace changed
    table.put_endpoints(EndpointsView(namespace="default", name="web", subsets=()))
    assert environments("default") is first  # Endpoints change at every cold start
    table.put_service(service("db", "127.96.0.14", ("", 5432)))
    assert environments("default")["DB_SERVICE_HOST"] == "127.96.0.14"
    table.remove_service("default", "web")
    assert "WEB_SERVICE_HOST" not in environments("default")
    environments.close()


def status_for(
    counts: ReplicaCounts, *, replicas: int = 2, overdue: bool = False
) -> dict[str, Any]:
    obj = admit_deployment(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "generation": 3},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "command": ["sleep", "1000"]}]},
                },
            },
        },
        None,
    )
    spec = parse_deployment(obj)
    return deployment_status(obj, spec, counts, overdue=overdue)


def counts(replicas: int, updated: int, ready: int, available: int) -> ReplicaCounts:
    return ReplicaCounts(
        replicas=replicas, updated=updated, ready=ready, available=available, template_hash="x"
    )


def test_status_of_a_rolled_out_deployment() -> None:
    status = status_for(counts(2, 2, 2, 2))
    assert status["observedGeneration"] == 3
    assert (status["replicas"], status["updatedReplicas"], status["readyReplicas"]) == (2, 2, 2)
    assert (status["availableReplicas"], status["unavailableReplicas"]) == (2, 0)
    available = find_condition(status, "Available")
    assert available is not None
    assert (available["status"], available["reason"]) == ("True", "MinimumReplicasAvailable")
    progressing = find_condition(status, "Progressing")
    assert progressing is not None
    assert progressing["reason"] == "NewReplicaSetAvailable"


def test_status_while_pods_are_not_ready() -> None:
    status = status_for(counts(2, 2, 0, 0))
    assert status["unavailableReplicas"] == 2
    available = find_condition(status, "Available")
    assert available is not None
    assert (available["status"], available["reason"]) == ("False", "MinimumReplicasUnavailable")
    progressing = find_condition(status, "Progressing")
    assert progressing is not None
    assert (progressing["status"], progressing["reason"]) == ("True", "ReplicaSetUpdated")


def test_a_rollout_past_its_deadline() -> None:
    status = status_for(counts(3, 1, 2, 2), replicas=2, overdue=True)
    progressing = find_condition(status, "Progressing")
    assert progressing is not None
    assert (progressing["status"], progressing["reason"]) == ("False", "ProgressDeadlineExceeded")
