"""Which pods of a Deployment to start and which to stop next: scaling and rolling updates.

``plan`` is pure: given the live pods (not terminating), whether each runs the current template
and is ready, it says how many new pods to start and which to stop, like the Deployment and
ReplicaSet controllers together. RollingUpdate keeps at most ``replicas + maxSurge`` pods and at
least ``replicas - maxUnavailable`` ready ones, so a new template that never gets ready leaves
the old pods serving; Recreate stops every old pod and starts new ones only when the old ones
are gone. Scaling down stops pods that are not ready first, then the newest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from funcmesh.model.deployments import Strategy


@dataclass(frozen=True, slots=True, kw_only=True)
class PodState:
    name: str
    current: bool  # runs the current template
    ready: bool
    created: float  # any increasing number: newer pods have bigger ones


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    start: int = 0
    stop: tuple[str, ...] = ()


def plan(
    pods: Sequence[PodState], *, replicas: int, strategy: Strategy, old_terminating: int = 0
) -> Plan:
    """What to do now; ``old_terminating`` counts pods of older templates still stopping."""
    new = [pod for pod in pods if pod.current]
    old = [pod for pod in pods if not pod.current]
    excess_new = _stop_order(new)[: max(0, len(new) - replicas)]
    new = [pod for pod in new if pod not in excess_new]
    if strategy.type == "Recreate":
        stop_old = _stop_order(old)
        waiting_for_old = bool(old) or old_terminating > 0
        start = 0 if waiting_for_old else replicas - len(new)
        return Plan(start=max(0, start), stop=_names(excess_new + stop_old))
    stop_old = _old_to_stop(new, old, replicas=replicas, strategy=strategy)
    live = len(new) + len(old) - len(stop_old)
    room = replicas + strategy.surge(replicas) - live
    start = max(0, min(replicas - len(new), room))
    return Plan(start=start, stop=_names(excess_new + stop_old))


def _old_to_stop(
    new: list[PodState], old: list[PodState], *, replicas: int, strategy: Strategy
) -> list[PodState]:
    """Old pods that are not ready always go; ready ones while enough pods stay ready."""
    ready = sum(1 for pod in new + old if pod.ready)
    spare = ready - (replicas - strategy.unavailable(replicas))
    chosen = []
    for pod in _stop_order(old):
        if not pod.ready:
            chosen.append(pod)
        elif spare > 0:
            chosen.append(pod)
            spare -= 1
    return chosen


def _stop_order(pods: list[PodState]) -> list[PodState]:
    """Pods that are not ready first, then the newest first."""
    return sorted(pods, key=lambda pod: (pod.ready, -pod.created))


def _names(pods: list[PodState]) -> tuple[str, ...]:
    return tuple(pod.name for pod in pods)
