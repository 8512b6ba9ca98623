"""The ``v1`` Pod of a workload replica, as the API, ``get pods`` and the endpoints controller
read it.

The container carries the template's fields and the process's complete environment in ``env``
(what funcmesh set, the service links and the user's variables), so ``funcmesh exec`` can run a
command the way the pod's process runs; ``workingDir`` is where it runs, and ``dnsConfig``
(present when the pod has its own resolv.conf) what that resolv.conf says. The status has the
fields Kubernetes clients read: phase, podIP(s), conditions (Ready, ContainersReady), and a
container status with ``ready``, ``restartCount``, ``state`` and ``lastState``. Pure: no I/O.
"""

from __future__ import annotations

import copy
import socket
from typing import TYPE_CHECKING, Any

from funcmesh.model.deployments import TEMPLATE_HASH_LABEL
from funcmesh.model.objects import RawObject, rfc3339

if TYPE_CHECKING:
    from funcmesh.runtime.replicas import Replica

NODE_NAME = socket.gethostname()


def workload_pod(replica: Replica) -> RawObject:
    template = replica.template
    metadata: dict[str, Any] = {
        "name": replica.name,
        "generateName": f"{replica.deployment}-{template.hash}-",
        "namespace": replica.namespace,
        "uid": replica.uid,
        "creationTimestamp": rfc3339(replica.created_at),
        "labels": {**template.labels, TEMPLATE_HASH_LABEL: template.hash},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": replica.deployment,
                "uid": replica.owner_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if replica.deleted_at is not None:
        metadata["deletionTimestamp"] = rfc3339(replica.deleted_at)
        metadata["deletionGracePeriodSeconds"] = template.termination_grace_s
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": _spec(replica),
        "status": _status(replica),
    }


def _spec(replica: Replica) -> dict[str, Any]:
    template = replica.template
    container = copy.deepcopy(dict(template.container_object))
    if replica.env:
        container["env"] = [{"name": name, "value": value} for name, value in replica.env.items()]
    container["workingDir"] = replica.cwd
    spec: dict[str, Any] = {
        "containers": [container],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": template.termination_grace_s,
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": True,
        "nodeName": NODE_NAME,
        "serviceAccountName": template.service_account,
    }
    if template.hostname:
        spec["hostname"] = template.hostname
    if template.subdomain:
        spec["subdomain"] = template.subdomain
    if replica.etc is not None:  # the resolv.conf its processes see: also what exec gives
        spec["dnsConfig"] = copy.deepcopy(dict(replica.etc.dns_config))
    return spec


def _status(replica: Replica) -> dict[str, Any]:
    ready = replica.ready and not replica.terminating
    container = replica.template.container
    container_status: dict[str, Any] = {
        "name": container.name,
        "image": container.image or "",
        "imageID": "",
        "ready": ready,
        "started": "running" in replica.state,
        "restartCount": replica.restart_count,
        "state": copy.deepcopy(replica.state),
        "lastState": copy.deepcopy(replica.last_state),
    }
    if replica.process is not None:
        container_status["containerID"] = f"funcmesh://{replica.process.command_pid}"
    started = replica.started_at is not None
    now = rfc3339(replica.created_at)
    ready_at = rfc3339(replica.ready_changed_at)
    return {
        "phase": "Running" if started else "Pending",
        "podIP": replica.ip,
        "podIPs": [{"ip": replica.ip}],
        "hostIP": "127.0.0.1",
        "startTime": now,
        "conditions": [
            _condition("PodScheduled", True, now),
            _condition("Initialized", True, now),
            _condition("ContainersReady", ready, ready_at),
            _condition("Ready", ready, ready_at),
        ],
        "containerStatuses": [container_status],
    }


def _condition(kind: str, ok: bool, since: str) -> dict[str, Any]:
    condition = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": since}
    if not ok and kind in ("Ready", "ContainersReady"):
        condition["reason"] = "ContainersNotReady"
    return condition
