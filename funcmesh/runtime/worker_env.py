"""The process environment of a function's worker, as Kubeless's runtimes see it.

Two parts. The namespace's Kubernetes service variables (``HELLO_SERVICE_HOST``...) come first:
one mapping shared by every instance of the namespace, which a starter hands to its processes
once per change rather than with every cold start (with a few hundred Services it is thousands
of variables). The instance's own variables come after and win over them: the user's env (as in
Kubernetes), then the cluster DNS settings the worker shims resolve names with, and Kubeless's
own variables last. Pure: no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from funcmesh.model.pod_dns import search_domains
from funcmesh.runtime.instances import Instance
from funcmesh.runtime.workers import NO_VARIABLES


def linked_services(
    instance: Instance, services: Callable[[str], Mapping[str, str]] | None
) -> Mapping[str, str]:
    """The service variables ``instance`` gets: its namespace's, unless its pod template says
    ``enableServiceLinks: false``. The mapping is shared, never to be changed."""
    revision = instance.revision
    if services is None or not revision.service_links:
        return NO_VARIABLES
    return services(revision.namespace)


def worker_environment(instance: Instance, *, dns_server: str | None = None) -> dict[str, str]:
    """The instance's own variables, which win over the service variables: the user's env,
    then the DNS settings, Kubeless's variables last."""
    revision = instance.revision
    env = dict(revision.env)
    if dns_server:
        env.update(
            FUNCMESH_DNS_SERVER=dns_server,
            FUNCMESH_DNS_SEARCH=" ".join(search_domains(revision.namespace)),
        )
    env.update(
        PATH=os.defpath + ":/usr/local/bin",
        LANG="C.UTF-8",
        HOME="/tmp",
        PYTHONUNBUFFERED="1",
        HOSTNAME=instance.pod,
        POD_NAME=instance.pod,
        POD_NAMESPACE=revision.namespace,
        POD_IP=instance.ip,
        FUNC_HANDLER=revision.handler,
        MOD_NAME=revision.module,
        FUNC_TIMEOUT=f"{revision.timeout_s:g}",
        FUNC_RUNTIME=revision.runtime.id,
        FUNC_MEMORY_LIMIT=revision.memory_limit or "0",
        FUNC_PORT=str(instance.port),
        KUBELESS_INSTALL_VOLUME=str(revision.code_dir),
    )
    return env
