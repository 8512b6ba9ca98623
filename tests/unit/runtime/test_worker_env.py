"""The environment a function's worker starts with."""

from __future__ import annotations

import sys
from pathlib import Path

from funcmesh.model.function import Scaling
from funcmesh.runtime.catalog import Runtime
from funcmesh.runtime.instances import Instance, Revision
from funcmesh.runtime.worker_env import linked_services, worker_environment


def instance(
    namespace: str = "team", env: tuple[tuple[str, str], ...] = (), *, service_links: bool = True
) -> Instance:
    runtime = Runtime.python(version=sys.version_info[:2], executable=Path(sys.executable))
    revision = Revision(
        namespace=namespace,
        name="hello",
        uid="uid-1",
        generation=1,
        runtime=runtime,
        code_dir=Path("/code"),
        sys_paths=(),
        module="hello",
        handler="handler",
        env=env,
        timeout_s=5.0,
        memory_limit=None,
        memory_limit_bytes=None,
        labels={},
        scaling=Scaling(),
        template_hash="abcdef0123",
        service_links=service_links,
    )
    return Instance(pod="hello-1", ip="127.128.0.9", port=8080, revision=revision, uid="u")


def test_the_namespaces_service_variables_are_shared_not_copied() -> None:
    """Every instance of a namespace gets the same mapping, which a zygote is sent once."""
    team = {"WEB_SERVICE_HOST": "127.96.0.5"}
    services = {"team": team, "other": {"DB_SERVICE_HOST": "127.96.0.6"}}
    assert linked_services(instance(), services.__getitem__) is team
    assert linked_services(instance("other"), services.__getitem__) == {
        "DB_SERVICE_HOST": "127.96.0.6"
    }
    assert linked_services(instance(), None) == {}


def test_own_variables_hold_the_users_env_dns_and_kubeless() -> None:
    env = worker_environment(instance(env=(("MODE", "mine"),)), dns_server="127.0.0.1:5353")
    assert env["MODE"] == "mine"
    assert "WEB_SERVICE_HOST" not in env  # those come from linked_services
    assert env["FUNCMESH_DNS_SERVER"] == "127.0.0.1:5353"
    assert env["FUNCMESH_DNS_SEARCH"] == "team.svc.cluster.local svc.cluster.local cluster.local"
    assert (env["POD_NAME"], env["POD_IP"], env["FUNC_PORT"]) == ("hello-1", "127.128.0.9", "8080")


def test_kubeless_variables_cannot_be_overridden_and_dns_is_optional() -> None:
    env = worker_environment(instance(env=(("POD_IP", "1.2.3.4"), ("FUNC_HANDLER", "x"))))
    assert (env["POD_IP"], env["FUNC_HANDLER"]) == ("127.128.0.9", "handler")
    assert "FUNCMESH_DNS_SERVER" not in env


def test_enable_service_links_false_leaves_them_out() -> None:
    """Kubernetes' pod knob: with many Services the variables cost every cold start."""
    disabled = instance(service_links=False)
    links = linked_services(disabled, lambda namespace: {"WEB_SERVICE_HOST": "127.96.0.5"})
    assert links == {}
    env = worker_environment(disabled, dns_server="127.0.0.1:5353")
    assert "WEB_SERVICE_HOST" not in env
    assert env["FUNCMESH_DNS_SERVER"] == "127.0.0.1:5353"  # names still resolve
