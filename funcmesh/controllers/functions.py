"""The function controller: from a stored Function to a serving revision.

For each new generation: validate, resolve the runtime, prepare the code (cached by content
digest), build the dependencies (cached by runtime and requirements), hand the revision to the
function's pool and check that one instance loads the handler; the outcome goes into
``status`` (conditions) and an Event. A failed build keeps the previous revision serving. Work
for one function is serialised; a newer generation that arrives meanwhile is done next.
"""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import copy
import hashlib
import logging
import sys
from pathlib import Path

from funcmesh.controllers.events import EventRecorder
from funcmesh.errors import Invalid, NotFound
from funcmesh.model.conditions import find_condition, remove_condition, set_condition
from funcmesh.model.function import FunctionSpec, parse_function
from funcmesh.model.kinds import FUNCTION
from funcmesh.model.objects import RawObject, metadata_of, name_of, namespace_of
from funcmesh.runtime.builds import BuildFailed, DependencyBuilder
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog
from funcmesh.runtime.content import content_digest, prepare_code, read_bundled_deps
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.pools import Pools
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)


class FunctionController:
    """Watches Functions and keeps their pools serving the latest good revision."""

    def __init__(
        self,
        *,
        store: Store,
        catalog: RuntimeCatalog,
        builder: DependencyBuilder,
        pools: Pools,
        logbook: LogBook,
        code_root: Path,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._builder = builder
        self._pools = pools
        self._logbook = logbook
        self._code_root = code_root
        self._events = EventRecorder(store)
        self._latest: dict[tuple[str, str], RawObject | None] = {}
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        # The generation last worked on per function: a status write (or a failed build) must
        # not start the same work again; a restart of the daemon tries everything once more.
        self._attempted: dict[tuple[str, str], int] = {}
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take over every stored Function, then follow changes."""
        functions, resource_version = await self._store.list_objects(FUNCTION)
        for obj in functions:
            self._offer(obj)
        self._watcher = asyncio.create_task(self._watch(resource_version), name="functions-watch")

    async def _watch(self, since: int) -> None:
        async for change in self._store.watch(FUNCTION, None, since):
            self._offer(None if change.type == "DELETED" else change.object, change.object)

    async def close(self) -> None:
        tasks = [t for t in (self._watcher, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _offer(self, obj: RawObject | None, deleted: RawObject | None = None) -> None:
        source = obj if obj is not None else deleted
        assert source is not None
        key = (namespace_of(source), name_of(source))
        self._latest[key] = obj
        if key not in self._workers:
            task = asyncio.create_task(self._work(key), name=f"function-{key[0]}-{key[1]}")
            self._workers[key] = task

    async def _work(self, key: tuple[str, str]) -> None:
        try:
            while key in self._latest:
                obj = self._latest.pop(key)
                if obj is None:
                    self._attempted.pop(key, None)
                    await self._pools.remove(*key)
                elif self._needs_work(key, obj):
                    await self._reconcile_guarded(obj)
        finally:
            self._workers.pop(key, None)

    def _needs_work(self, key: tuple[str, str], obj: RawObject) -> bool:
        generation = int(metadata_of(obj).get("generation") or 1)
        if self._attempted.get(key) == generation:
            return False
        self._attempted[key] = generation
        return True

    async def _reconcile_guarded(self, obj: RawObject) -> None:
        """Reconcile; an unexpected error still ends in a status the user can read."""
        try:
            await self._reconcile(obj)
        except Exception as exc:
            logger.exception("reconciling function %s/%s failed", namespace_of(obj), name_of(obj))
            status = copy.deepcopy(obj.get("status") or {})
            status["observedGeneration"] = int(metadata_of(obj).get("generation") or 1)
            message = f"deploying failed: {type(exc).__name__}: {exc}"
            await self._finish(obj, status, ok=False, reason="DeployFailed", message=message)

    async def _reconcile(self, obj: RawObject) -> None:
        status = copy.deepcopy(obj.get("status") or {})
        generation = int(metadata_of(obj).get("generation") or 1)
        status["observedGeneration"] = generation
        pool = self._pools.pool(namespace_of(obj), name_of(obj))
        settled = _settled(obj, generation)
        try:
            spec = parse_function(obj)
            resolution = self._catalog.resolve(spec.runtime)
        except Invalid as exc:
            await self._finish(obj, status, ok=False, reason="Invalid", message=str(exc))
            pool.fail(str(exc))
            return
        _note_runtime(status, resolution.warning)
        try:
            revision = await self._build(obj, spec, resolution.runtime, status)
        except (Invalid, BuildFailed) as exc:
            reason = "BuildFailed" if isinstance(exc, BuildFailed) else "Invalid"
            message = str(exc)  # a BuildFailed carries pip's output tail already
            await self._finish(obj, status, ok=False, reason=reason, message=message)
            pool.fail(f"{reason}: {message}")
            return
        status["runtime"] = revision.runtime.id
        self._pools.deploy(revision)
        if settled:  # a restart: the same generation loaded before, no need to check again
            return
        error = await pool.warm()
        if error is not None:
            await self._finish(obj, status, ok=False, reason="LoadFailed", message=error)
        else:
            await self._finish(obj, status, ok=True, reason="Ready", message="")

    async def _build(
        self, obj: RawObject, spec: FunctionSpec, runtime: Runtime, status: dict[str, object]
    ) -> Revision:
        digest = content_digest(
            content=spec.content,
            content_type=spec.content_type,
            checksum=spec.checksum,
            module=spec.module,
            suffix=runtime.suffix,
        )
        code_dir = await asyncio.to_thread(
            prepare_code,
            content=spec.content,
            content_type=spec.content_type,
            checksum=spec.checksum,
            module=spec.module,
            suffix=runtime.suffix,
            dest=self._code_root / digest,
            fetch_url=None,
        )
        await _precompile(code_dir, runtime)
        deps = spec.deps
        if "+deps" in spec.content_type:
            deps = await asyncio.to_thread(read_bundled_deps, code_dir, runtime.deps_file)
        if self._builder.cached(runtime, deps) is None:
            set_condition(
                status, "Ready", ok=False, reason="Building", message="installing dependencies"
            )
            await self._write_status(obj, status)
        env = await self._builder.ensure(
            runtime,
            deps,
            progress=lambda line: self._logbook.build_line(spec.namespace, spec.name, line),
        )
        template = hashlib.sha256(
            repr(
                (digest, env.key, runtime.id, spec.env, spec.timeout_s, spec.memory_limit)
            ).encode()
        ).hexdigest()
        return Revision(
            namespace=spec.namespace,
            name=spec.name,
            uid=str(metadata_of(obj).get("uid") or ""),
            generation=spec.generation,
            runtime=runtime,
            code_dir=code_dir,
            sys_paths=env.sys_paths,
            module=spec.module,
            handler=spec.handler,
            env=spec.env,
            timeout_s=spec.timeout_s,
            memory_limit=spec.memory_limit,
            memory_limit_bytes=spec.memory_limit_bytes,
            labels=dict(spec.labels),
            scaling=spec.scaling,
            template_hash=template[:10],
        )

    async def _finish(
        self, obj: RawObject, status: dict[str, object], *, ok: bool, reason: str, message: str
    ) -> None:
        set_condition(status, "Ready", ok=ok, reason=reason, message=message)
        await self._write_status(obj, status)
        text = message or f"function {name_of(obj)} is ready"
        await self._events.record(obj, warning=not ok, reason=reason, message=text)

    async def _write_status(self, obj: RawObject, status: dict[str, object]) -> None:
        update = {"metadata": {**metadata_of(obj), "resourceVersion": None}, "status": status}
        with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to report on
            await self._store.update(FUNCTION, update, status_only=True)


async def _precompile(code_dir: Path, runtime: Runtime) -> None:
    """Byte-compile the code for the runtime's interpreter, once per code and runtime.

    Workers may run as nobody and could not write ``__pycache__`` themselves: without this,
    every cold start would compile the handler again. The daemon compiles in a thread when its
    Python is the runtime's, else the runtime's interpreter does it. A syntax error is left
    for the load check to report.
    """
    marker = code_dir / f".compiled-{runtime.id}"
    if runtime.language != "python" or marker.exists():
        return
    if tuple(runtime.version[:2]) == sys.version_info[:2]:
        await asyncio.to_thread(compileall.compile_dir, str(code_dir), quiet=2)
    else:
        await _run_quietly(str(runtime.executable), "-m", "compileall", "-q", str(code_dir))
    marker.touch()


async def _run_quietly(*argv: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await process.wait()
    finally:
        if process.returncode is None:  # cancelled: the daemon is stopping
            process.kill()
            await process.wait()


def _settled(obj: RawObject, generation: int) -> bool:
    status = obj.get("status") or {}
    ready = find_condition(status, "Ready")
    return (
        status.get("observedGeneration") == generation
        and ready is not None
        and ready.get("status") == "True"
    )


def _note_runtime(status: dict[str, object], warning: str | None) -> None:
    if warning:
        set_condition(
            status, "RuntimeSubstituted", ok=True, reason="RuntimeNotAvailable", message=warning
        )
    else:
        remove_condition(status, "RuntimeSubstituted")
