"""The seams through which the API server reaches the running system.

The runtime implements these Protocols (admission, pods, logs, stats, server configuration);
the API server only calls them, and tests pass fakes. This module must not import aiohttp or
anything above the model layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from funcmesh.model.kinds import ResourceType
from funcmesh.model.objects import RawObject


class Admission(Protocol):
    """Validates and defaults an object before it is stored."""

    def admit(self, rt: ResourceType, obj: RawObject, old: RawObject | None) -> RawObject:
        """The object to store (defaults filled in), or raise Invalid.

        ``old`` is the stored object on update and patch, None on create.
        """
        ...


class PodSource(Protocol):
    """The view of running instances (functions' and Deployments') as ``v1`` Pods; deleting
    one stops it."""

    def list_pods(self, namespace: str | None) -> list[RawObject]:
        """Pods of one namespace, or of all namespaces for None."""
        ...

    def get_pod(self, namespace: str, name: str) -> RawObject:
        """One pod; raises NotFound."""
        ...

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, RawObject]]:
        """``(ADDED|MODIFIED|DELETED, pod)`` for changes after the call, until closed."""
        ...

    async def delete_pod(self, namespace: str, name: str) -> RawObject:
        """Stop a pod (a Deployment's is replaced by a new one); the pod as deleted. Raises
        NotFound."""
        ...


class LogSource(Protocol):
    """Output lines of functions, their dependency builds and single instances.

    The API server creates the follow iterator and starts waiting on it before it reads the
    tail, so an implementation whose iterator subscribes on its first ``__anext__`` loses no line.
    """

    def read_function_log(
        self, namespace: str, name: str, *, tail_lines: int | None, build: bool
    ) -> list[str]: ...

    def follow_function_log(
        self, namespace: str, name: str, *, build: bool
    ) -> AsyncIterator[str]: ...

    def read_pod_log(self, namespace: str, pod: str, *, tail_lines: int | None) -> list[str]:
        """Lines of one instance; raises NotFound."""
        ...

    def follow_pod_log(self, namespace: str, pod: str) -> AsyncIterator[str]:
        """Live lines of one instance; raises NotFound."""
        ...


class StatsSource(Protocol):
    """Call statistics of one function."""

    def function_stats(self, namespace: str, name: str) -> Mapping[str, Any]:
        """``calls``, ``failures``, ``p50_ms``, ``p99_ms``, ``instances``, ``coldStarts``."""
        ...


class ServerConfigSource(Protocol):
    """What ``funcmesh get-server-config`` shows: runtimes of this machine and the version."""

    def server_config(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiProviders:
    """Everything the API server needs from the rest of the daemon besides the store."""

    admission: Admission
    pods: PodSource
    logs: LogSource
    stats: StatsSource
    config: ServerConfigSource
