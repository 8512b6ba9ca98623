"""The process environment of a function's worker, as Kubeless's runtimes see it.

The namespace's Kubernetes service variables come first (``HELLO_SERVICE_HOST``...), then the
user's env (which wins over them, as in Kubernetes), then the cluster DNS settings the worker
shims resolve names with, and Kubeless's own variables last. Pure: no I/O.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from funcmesh.model.pod_dns import search_domains
from funcmesh.runtime.instances import Instance


def worker_environment(
    instance: Instance,
    *,
    dns_server: str | None = None,
    services: Callable[[str], Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """The process environment of a worker: the namespace's service variables, then the
    user's env (which wins over them, as in Kubernetes), Kubeless's variables last."""
    revision = instance.revision
    links = services is not None and revision.service_links
    env = dict(services(revision.namespace)) if links and services is not None else {}
    env.update(revision.env)
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
