"""Objects in one SQLite file (WAL), one transaction per change, driven from one thread.

The store assigns ``uid``, ``creationTimestamp``, ``generation`` and ``resourceVersion`` (one
counter for every object, as in Kubernetes), refuses stale updates with Conflict, keeps the last
changes for watch resumption and publishes each committed change to the in-memory feed. It
knows nothing about what objects mean; validation happens before objects reach it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from funcmesh.errors import AlreadyExists, Conflict, FuncmeshError, NotFound
from funcmesh.model.kinds import NAMESPACE, ResourceType
from funcmesh.model.objects import RawObject, metadata_of, name_of, namespace_of, rfc3339
from funcmesh.model.selectors import Selector
from funcmesh.store.feed import Change, Feed

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    rv INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (resource, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    rv INTEGER PRIMARY KEY, resource TEXT NOT NULL, namespace TEXT NOT NULL,
    type TEXT NOT NULL, body TEXT NOT NULL
);
"""
DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public")


class Gone(FuncmeshError):
    """A watch asked for changes older than the store keeps; re-list and watch again."""


class Store:
    """Async facade over a SQLite file; every statement runs on the store's own thread."""

    def __init__(self, path: Path, *, keep_changes: int = 10_000) -> None:
        self._path = path
        self._keep_changes = keep_changes
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self._rv = 0
        self.feed = Feed()

    @classmethod
    async def open(cls, path: Path, **kwargs: Any) -> Store:
        store = cls(path, **kwargs)
        await store._run(store._open)
        for name in DEFAULT_NAMESPACES:
            if not await store.exists(NAMESPACE, "", name):
                await store.create(NAMESPACE, {"metadata": {"name": name}})
        return store

    async def close(self) -> None:
        self.feed.close_all()
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._thread.shutdown(wait=True)

    @property
    def resource_version(self) -> int:
        return self._rv

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    async def run_sql(self, call: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``call(connection)`` on the store's thread, for the tables other modules own
        (``store.calls``); they manage their own transactions and never reach the change feed."""
        return await self._run(lambda: call(self._conn))

    async def _write(self, call: Callable[..., Change], *args: Any) -> RawObject:
        """Run a write and publish its change even if the caller is cancelled meanwhile:
        once the thread commits, watchers must hear of it."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._thread, call, *args)
        future.add_done_callback(self._publish_committed)
        change = await asyncio.shield(future)
        return copy.deepcopy(change.object)

    def _publish_committed(self, future: asyncio.Future[Change]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.feed.publish(future.result())

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute(
            "SELECT max(coalesce((SELECT max(rv) FROM changes), 0),"
            " coalesce((SELECT max(rv) FROM objects), 0))"
        ).fetchone()
        self._rv = int(row[0])
        self._db = db

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise FuncmeshError("the store is closed")
        return self._db

    # reads

    async def get(self, rt: ResourceType, namespace: str, name: str) -> RawObject:
        body = await self._run(self._select_one, rt.key, _ns(rt, namespace), name)
        if body is None:
            raise NotFound(_not_found(rt, name))
        return body

    async def exists(self, rt: ResourceType, namespace: str, name: str) -> bool:
        return await self._run(self._select_one, rt.key, _ns(rt, namespace), name) is not None

    def _select_one(self, resource: str, namespace: str, name: str) -> RawObject | None:
        row = self._conn.execute(
            "SELECT body FROM objects WHERE resource=? AND namespace=? AND name=?",
            (resource, namespace, name),
        ).fetchone()
        return None if row is None else _loads(row[0])

    async def list_objects(
        self, rt: ResourceType, namespace: str | None = None, selector: Selector | None = None
    ) -> tuple[list[RawObject], int]:
        """Objects (of one namespace, or all) in name order, and the resourceVersion of the list."""
        rows, rv = await self._run(self._select_many, rt.key, namespace if rt.namespaced else None)
        objects = [_loads(body) for body in rows]
        if selector is not None and selector.requirements:
            objects = [o for o in objects if selector.matches(metadata_of(o).get("labels") or {})]
        return objects, rv

    def _select_many(self, resource: str, namespace: str | None) -> tuple[list[str], int]:
        if namespace is None:
            query = "SELECT body FROM objects WHERE resource=? ORDER BY namespace, name"
            rows = self._conn.execute(query, (resource,)).fetchall()
        else:
            query = "SELECT body FROM objects WHERE resource=? AND namespace=? ORDER BY name"
            rows = self._conn.execute(query, (resource, namespace)).fetchall()
        return [row[0] for row in rows], self._rv

    # writes

    async def create(self, rt: ResourceType, obj: RawObject) -> RawObject:
        """Store a new object; fills in the server-owned metadata."""
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        if rt.namespaced:
            meta["namespace"] = meta.get("namespace") or "default"
        else:
            meta.pop("namespace", None)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=rfc3339(), generation=1)
        meta.pop("resourceVersion", None)
        return await self._write(self._write_create, rt, new)

    def _write_create(self, rt: ResourceType, obj: RawObject) -> Change:
        namespace = namespace_of(obj)
        if rt.namespaced and self._select_one(NAMESPACE.key, "", namespace) is None:
            raise NotFound(f'namespaces "{namespace}" not found')
        if self._select_one(rt.key, namespace, name_of(obj)) is not None:
            raise AlreadyExists(f'{rt.plural}.{rt.group or "core"} "{name_of(obj)}" already exists')
        return self._commit(rt, "ADDED", obj)

    async def update(
        self, rt: ResourceType, obj: RawObject, *, status_only: bool = False
    ) -> RawObject:
        """Replace an object. With ``metadata.resourceVersion`` set, only if it is still current.

        A spec update keeps the stored status; a status update (``status_only``) changes nothing
        else. ``generation`` grows when the spec changes.
        """
        return await self._write(self._write_update, rt, copy.deepcopy(obj), status_only)

    def _write_update(self, rt: ResourceType, obj: RawObject, status_only: bool) -> Change:
        meta = obj.setdefault("metadata", {})
        namespace, name = _ns(rt, str(meta.get("namespace") or "default")), name_of(obj)
        current = self._select_one(rt.key, namespace, name)
        if current is None:
            raise NotFound(_not_found(rt, name))
        current_meta = metadata_of(current)
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv not in (None, "") and str(wanted_rv) != current_meta["resourceVersion"]:
            raise Conflict(
                f'Operation cannot be fulfilled on {rt.plural}.{rt.group or "core"} "{name}": '
                "the object has been modified; please apply your changes to the latest "
                "version and try again"
            )
        if status_only:
            updated = copy.deepcopy(current)
            updated["status"] = obj.get("status", {})
        else:
            updated = obj
            updated["apiVersion"], updated["kind"] = rt.api_version, rt.kind
            for key in ("uid", "creationTimestamp", "generation"):
                meta[key] = current_meta.get(key)
            if rt.namespaced:
                meta["namespace"] = namespace
            if "status" in current:
                updated["status"] = current["status"]
            if obj.get("spec") != current.get("spec"):
                meta["generation"] = int(current_meta.get("generation") or 1) + 1
        return self._commit(rt, "MODIFIED", updated)

    async def delete(
        self, rt: ResourceType, namespace: str, name: str, *, resource_version: str | None = None
    ) -> RawObject:
        return await self._write(self._write_delete, rt, _ns(rt, namespace), name, resource_version)

    def _write_delete(
        self, rt: ResourceType, namespace: str, name: str, resource_version: str | None
    ) -> Change:
        current = self._select_one(rt.key, namespace, name)
        if current is None:
            raise NotFound(_not_found(rt, name))
        if resource_version and resource_version != metadata_of(current)["resourceVersion"]:
            raise Conflict(
                f'{rt.plural} "{name}" has changed since resourceVersion {resource_version}'
            )
        return self._commit(rt, "DELETED", current)

    def _commit(self, rt: ResourceType, change_type: str, obj: RawObject) -> Change:
        rv = self._rv + 1
        obj["metadata"]["resourceVersion"] = str(rv)
        body = json.dumps(obj, separators=(",", ":"))
        namespace, name = namespace_of(obj), name_of(obj)
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            if change_type == "DELETED":
                db.execute(
                    "DELETE FROM objects WHERE resource=? AND namespace=? AND name=?",
                    (rt.key, namespace, name),
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                    (rt.key, namespace, name, rv, body),
                )
            db.execute(
                "INSERT INTO changes VALUES (?, ?, ?, ?, ?)",
                (rv, rt.key, namespace, change_type, body),
            )
            if rv % 1000 == 0:
                db.execute("DELETE FROM changes WHERE rv <= ?", (rv - self._keep_changes,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._rv = rv
        return Change(type=change_type, resource=rt.key, object=obj, resource_version=rv)

    # watch

    async def watch(
        self, rt: ResourceType, namespace: str | None, since: int
    ) -> AsyncIterator[Change]:
        """Changes after resourceVersion ``since``: first the kept backlog, then live ones.

        Raises Gone when ``since`` is older than the kept changes. Ends when the store closes
        or the watcher fell too far behind.
        """
        subscription = self.feed.subscribe(rt.key, namespace if rt.namespaced else None)
        try:
            backlog = await self._run(self._changes_since, rt.key, namespace, since)
            last = since
            for old in backlog:
                last = old.resource_version
                yield old
            while (live := await subscription.next()) is not None:
                if live.resource_version > last:
                    last = live.resource_version
                    yield live
        finally:
            subscription.close()

    def _changes_since(self, resource: str, namespace: str | None, since: int) -> list[Change]:
        if since >= self._rv:
            return []
        oldest = self._conn.execute("SELECT min(rv) FROM changes").fetchone()[0]
        if oldest is None or since < oldest - 1:
            raise Gone(f"too old resource version: {since} ({oldest or self._rv})")
        rows = self._conn.execute(
            "SELECT rv, type, body FROM changes WHERE resource=? AND rv>? ORDER BY rv",
            (resource, since),
        ).fetchall()
        changes = [
            Change(type=kind, resource=resource, object=_loads(body), resource_version=rv)
            for rv, kind, body in rows
        ]
        if namespace is not None:
            changes = [c for c in changes if namespace_of(c.object) == namespace]
        return changes


def _ns(rt: ResourceType, namespace: str) -> str:
    return (namespace or "default") if rt.namespaced else ""


def _not_found(rt: ResourceType, name: str) -> str:
    return (
        f'{rt.plural}.{rt.group or "core"} "{name}" not found'
        if rt.group
        else f'{rt.plural} "{name}" not found'
    )


def _loads(body: str) -> RawObject:
    value: RawObject = json.loads(body)
    return value
