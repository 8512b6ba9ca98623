"""The function controller: from a stored Function to a serving revision.

For each new generation: validate, resolve the runtime, read the Secrets it names, prepare the
code (cached by content digest), build the dependencies (cached by runtime and requirements),
place the Secret files, hand the revision to the function's pool and check that one instance
loads the handler; the outcome goes into ``status`` (conditions) and an Event. A failed build (or
a missing Secret) keeps the previous revision serving. Work for one function is serialised; a
newer generation that arrives meanwhile is done next.

Secrets are watched too: when one that a function names is created, changed or deleted, the
function is reconciled again. Their values are part of the template hash, so a changed Secret
replaces the instances. A Secret's values never go into a status, an Event or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import logging
from pathlib import Path

from funcmesh.controllers.bytecode import precompile
from funcmesh.controllers.events import EventRecorder
from funcmesh.controllers.function_secrets import ResolvedSecrets, SecretProblem, resolve_secrets
from funcmesh.controllers.secret_releases import SecretFileReleases
from funcmesh.errors import Invalid, NotFound
from funcmesh.model.conditions import find_condition, remove_condition, set_condition
from funcmesh.model.function import FunctionSpec, parse_function
from funcmesh.model.kinds import FUNCTION, SECRET
from funcmesh.model.objects import RawObject, metadata_of, name_of, namespace_of
from funcmesh.runtime.builds import BuildFailed, DependencyBuilder
from funcmesh.runtime.catalog import Runtime, RuntimeCatalog
from funcmesh.runtime.content import content_digest, prepare_code, read_bundled_deps
from funcmesh.runtime.instances import Revision
from funcmesh.runtime.logs import LogBook
from funcmesh.runtime.pools import Pools
from funcmesh.runtime.secret_files import (
    SECRETS_DIR_ENV,
    SecretFiles,
    SecretMountRefused,
    SecretVolume,
)
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
        secret_files: SecretFiles,
    ) -> None:
        self._store = store
        self._catalog = catalog
        self._builder = builder
        self._pools = pools
        self._logbook = logbook
        self._code_root = code_root
        self._secret_files = secret_files
        self._events = EventRecorder(store)
        self._latest: dict[tuple[str, str], RawObject | None] = {}
        self._known: dict[tuple[str, str], RawObject] = {}  # the newest seen, for rechecks
        self._workers: dict[tuple[str, str], asyncio.Task[None]] = {}
        # The generation last worked on per function: a status write (or a failed build) must
        # not start the same work again; a restart of the daemon tries everything once more.
        self._attempted: dict[tuple[str, str], int] = {}
        # Functions to reconcile again although their generation is done: a Secret changed.
        self._recheck: set[tuple[str, str]] = set()
        self._secret_users: dict[tuple[str, str], set[tuple[str, str]]] = {}  # (ns, Secret)
        self._secrets_of: dict[tuple[str, str], frozenset[str]] = {}
        self._releases = SecretFileReleases(secret_files)
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Take over every stored Function, then follow changes (of Secrets too)."""
        functions, resource_version = await self._store.list_objects(FUNCTION)
        for obj in functions:
            self._offer(obj)
        self._watchers = [
            asyncio.create_task(self._watch(resource_version), name="functions-watch"),
            asyncio.create_task(self._watch_secrets(resource_version), name="secrets-watch"),
        ]

    async def _watch(self, since: int) -> None:
        async for change in self._store.watch(FUNCTION, None, since):
            self._offer(None if change.type == "DELETED" else change.object, change.object)

    async def _watch_secrets(self, since: int) -> None:
        """Reconcile the functions that use a Secret again when it changes in any way."""
        async for change in self._store.watch(SECRET, None, since):
            secret = (namespace_of(change.object), name_of(change.object))
            for key in sorted(self._secret_users.get(secret, ())):
                known = self._known.get(key)
                if known is not None:
                    logger.info(
                        "Secret %s/%s changed: reconciling function %s again", *secret, key[1]
                    )
                    self._recheck.add(key)
                    self._offer(known)

    async def close(self) -> None:
        tasks = [*self._watchers, *self._workers.values(), *self._releases.tasks()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _offer(self, obj: RawObject | None, deleted: RawObject | None = None) -> None:
        source = obj if obj is not None else deleted
        assert source is not None
        key = (namespace_of(source), name_of(source))
        self._latest[key] = obj
        if obj is None:
            self._known.pop(key, None)
        else:
            self._known[key] = obj
        if key not in self._workers:
            task = asyncio.create_task(self._work(key), name=f"function-{key[0]}-{key[1]}")
            self._workers[key] = task

    async def _work(self, key: tuple[str, str]) -> None:
        try:
            while key in self._latest:
                obj = self._latest.pop(key)
                if obj is None:
                    await self._remove(key)
                elif self._needs_work(key, obj):
                    await self._reconcile_guarded(obj)
        finally:
            self._workers.pop(key, None)

    async def _remove(self, key: tuple[str, str]) -> None:
        """The function was deleted: stop its instances, then remove its Secret files."""
        self._attempted.pop(key, None)
        self._recheck.discard(key)
        self._note_secret_users(key, frozenset())
        await self._pools.remove(*key)
        await self._releases.forget(key)

    def _needs_work(self, key: tuple[str, str], obj: RawObject) -> bool:
        generation = int(metadata_of(obj).get("generation") or 1)
        if self._attempted.get(key) == generation and key not in self._recheck:
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
        key = (namespace_of(obj), name_of(obj))
        pool = self._pools.pool(*key)
        recheck = key in self._recheck
        self._recheck.discard(key)
        settled = _settled(obj, generation)
        try:
            spec = parse_function(obj)
            resolution = self._catalog.resolve(spec.runtime)
        except Invalid as exc:
            self._note_secret_users(key, frozenset())
            await self._finish(obj, status, ok=False, reason="Invalid", message=str(exc))
            pool.fail(str(exc))
            return
        self._note_secret_users(key, spec.secret_names)
        _note_runtime(status, resolution.warning)
        self._note_mounts(status, spec)
        try:
            secrets = await resolve_secrets(self._store, spec)
            revision = await self._build(obj, spec, resolution.runtime, status, secrets)
        except (Invalid, BuildFailed, SecretProblem, SecretMountRefused) as exc:
            reason = _failure_reason(exc)
            message = str(exc)  # a BuildFailed carries pip's output tail already
            await self._finish(obj, status, ok=False, reason=reason, message=message)
            pool.fail(f"{reason}: {message}")
            return
        status["runtime"] = revision.runtime.id
        unchanged = pool.revision is not None and (
            pool.revision.template_hash == revision.template_hash
        )
        self._releases.deploy(pool, revision)
        if settled and (not recheck or unchanged):
            # a restart (the same generation loaded before), or a Secret change that changed
            # nothing this function uses: no need to check again
            return
        error = await pool.warm()
        if error is not None:
            await self._finish(obj, status, ok=False, reason="LoadFailed", message=error)
        else:
            await self._finish(obj, status, ok=True, reason="Ready", message="")

    def _note_secret_users(self, key: tuple[str, str], names: frozenset[str]) -> None:
        """Remember which Secrets ``key`` reads, so a change to one reconciles it again."""
        for name in self._secrets_of.pop(key, frozenset()):
            users = self._secret_users.get((key[0], name))
            if users is not None:
                users.discard(key)
                if not users:
                    del self._secret_users[key[0], name]
        if names:
            self._secrets_of[key] = names
            for name in names:
                self._secret_users.setdefault((key[0], name), set()).add(key)

    def _note_mounts(self, status: dict[str, object], spec: FunctionSpec) -> None:
        if spec.secrets and not self._secret_files.private_mounts:
            paths = ", ".join(mount.mount_path for mount in spec.secrets)
            message = (
                f"Secrets are not mounted at {paths}: funcmesh does not run as root here, so "
                f"their files are under ${SECRETS_DIR_ENV} only"
            )
            set_condition(
                status, "SecretsMounted", ok=False, reason="NoMountNamespace", message=message
            )
        else:
            remove_condition(status, "SecretsMounted")

    async def _build(
        self,
        obj: RawObject,
        spec: FunctionSpec,
        runtime: Runtime,
        status: dict[str, object],
        secrets: ResolvedSecrets,
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
        await precompile(code_dir, runtime)
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
        secret_digest = (
            self._secret_files.digest(secrets.volumes, secrets.env)
            if secrets.volumes or secrets.env
            else None
        )
        template = hashlib.sha256(
            repr(
                (
                    digest,
                    env.key,
                    runtime.id,
                    spec.env,
                    spec.timeout_s,
                    spec.memory_limit,
                    secret_digest,
                    spec.service_links,
                    # another identity is another instance (leaves the hashes of the rest be)
                    *(() if spec.service_account == "default" else (spec.service_account,)),
                )
            ).encode()
        ).hexdigest()[:10]
        worker_env, secrets_dir = spec.env, None
        volumes: tuple[SecretVolume, ...] = ()
        if secrets.volumes:
            placement = await asyncio.to_thread(
                self._secret_files.place, (spec.namespace, spec.name), template, secrets.volumes
            )
            secrets_dir, volumes = placement.directory, placement.volumes
            worker_env = (*spec.env, (SECRETS_DIR_ENV, secrets_dir))
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
            env=worker_env,
            timeout_s=spec.timeout_s,
            memory_limit=spec.memory_limit,
            memory_limit_bytes=spec.memory_limit_bytes,
            labels=dict(spec.labels),
            scaling=spec.scaling,
            template_hash=template,
            secret_env=secrets.env,
            secret_volumes=volumes,
            secrets_dir=secrets_dir,
            service_links=spec.service_links,
            service_account=spec.service_account,
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


def _settled(obj: RawObject, generation: int) -> bool:
    status = obj.get("status") or {}
    ready = find_condition(status, "Ready")
    return (
        status.get("observedGeneration") == generation
        and ready is not None
        and ready.get("status") == "True"
    )


def _failure_reason(exc: Exception) -> str:
    if isinstance(exc, SecretProblem):
        return exc.reason
    if isinstance(exc, SecretMountRefused):
        return "SecretMountRefused"
    return "BuildFailed" if isinstance(exc, BuildFailed) else "Invalid"


def _note_runtime(status: dict[str, object], warning: str | None) -> None:
    if warning:
        set_condition(
            status, "RuntimeSubstituted", ok=True, reason="RuntimeNotAvailable", message=warning
        )
    else:
        remove_condition(status, "RuntimeSubstituted")
