"""Following the daemon's pods: their list, then their changes, listed again after a failure.

``PodSource`` is what the runtime's pod directory offers (``funcmesh.runtime.pod_sources``);
``follow_pods`` is the loop its readers run in a task of their own (the Endpoints controller,
the mesh's table of pod addresses): ``on_start`` when a watch has just been opened (the reader
lists the pods then, or marks what it must list), ``on_event`` for each change, and after a
watch that ended or failed, a pause and a fresh start. No change falls between a list and its
watch: the watch subscribes at its first ``__anext__``, before the loop first suspends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

logger = logging.getLogger(__name__)

RETRY_PAUSE_S = 1.0  # after a watch of pods failed, before starting again


class PodSource(Protocol):
    """Pods as ``v1`` Pod dicts: all of them now, and their changes from now on."""

    def list_pods(
        self, namespace: str | None, *, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]: ...

    def watch_pods(self, namespace: str | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(ADDED|MODIFIED|DELETED, pod)`` after the first ``__anext__``, until closed."""
        ...


async def follow_pods(
    pods: PodSource,
    *,
    on_start: Callable[[], None],
    on_event: Callable[[str, dict[str, Any]], None],
    what: str,
    pause_s: float = RETRY_PAUSE_S,
) -> None:
    """Follow every namespace's pods until cancelled; ``what`` names the reader in the log."""
    while True:
        events = pods.watch_pods(None)
        try:
            on_start()
            async for kind, pod in events:
                on_event(kind, pod)
            logger.warning("the watch of pods for %s ended; listing them again", what)
        except Exception:  # the task's boundary: keep following pods
            logger.exception("following pods for %s failed", what)
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        await asyncio.sleep(pause_s)
