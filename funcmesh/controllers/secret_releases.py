"""When a Function's Secret files may go: once no instance of their revision runs any more.

A revision with Secret volumes has its files placed under its template hash
(``funcmesh.runtime.secret_files``). ``SecretFileReleases`` remembers the revision each
function serves; when a new one is deployed, the old files are removed after the old instances
have exited, and all of them when the function is deleted.

Must not: place files or read Secrets (the function controller does), or stop instances.
"""

from __future__ import annotations

import asyncio
import logging

from funcmesh.runtime.instances import Revision
from funcmesh.runtime.pool import FunctionPool
from funcmesh.runtime.secret_files import SecretFiles

logger = logging.getLogger(__name__)


class SecretFileReleases:
    """Removes the Secret files of revisions no instance serves any more."""

    def __init__(self, secret_files: SecretFiles) -> None:
        self._secret_files = secret_files
        self._serving: dict[tuple[str, str], Revision] = {}  # the deployed one, if it has files
        self._releases: dict[tuple[str, str], set[asyncio.Task[None]]] = {}

    def tasks(self) -> list[asyncio.Task[None]]:
        """The releases still waiting (for ``close`` to cancel)."""
        return [task for tasks in self._releases.values() for task in tasks]

    def deploy(self, pool: FunctionPool, revision: Revision) -> None:
        """Serve ``revision``; the Secret files of the one it replaces go once its instances
        have stopped."""
        key = (revision.namespace, revision.name)
        old = self._serving.pop(key, None)
        if revision.secrets_dir is not None:
            self._serving[key] = revision
        pool.deploy(revision)
        if old is None:
            return
        exits = [
            instance.exited
            for instance in pool.instances
            if instance.revision.template_hash == old.template_hash
            and old.template_hash != revision.template_hash
        ]
        task = asyncio.create_task(self._release(key, old.template_hash, exits))
        tasks = self._releases.setdefault(key, set())
        tasks.add(task)
        task.add_done_callback(lambda done: self._forget_release(key, done))

    async def forget(self, key: tuple[str, str]) -> None:
        """The function was deleted and its instances have stopped: remove its Secret files."""
        # the instances are gone: what waited for them is about to finish
        await asyncio.gather(*self._releases.get(key, ()), return_exceptions=True)
        if self._serving.pop(key, None) is not None:
            await asyncio.to_thread(self._secret_files.release, key)

    def _forget_release(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        tasks = self._releases.get(key)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._releases[key]

    async def _release(
        self, key: tuple[str, str], template_hash: str, exits: list[asyncio.Event]
    ) -> None:
        try:
            await asyncio.gather(*(exited.wait() for exited in exits))
            await asyncio.to_thread(self._secret_files.release, key, template_hash)
        except Exception:
            logger.exception("removing the Secret files of %s/%s failed", *key)
