"""HTTPTrigger routes: which function a request's Host and path reach, kept in memory.

``RouteTable`` answers ``match(host, path)`` with one dict look-up by host (lower case, port
stripped; routes without a host apply to every host) and a scan of that host's few routes,
longest path prefix first; a prefix matches whole path segments (``/api`` matches ``/api`` and
``/api/x``, not ``/apix``). An empty table answers at once, so the gateway pays nothing while no
trigger exists. ``HttpRouteFeed`` keeps the table equal to the stored HTTPTriggers and the
Secrets they name (basic auth; TLS key pairs by host for ``tls.Certificates``, rebuilt when a
Secret changes) by watching the store. It never answers requests and never logs a Secret's
value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from funcmesh.discovery.htpasswd import Htpasswd, parse_htpasswd
from funcmesh.discovery.tls import Certificates, tls_key_pairs
from funcmesh.errors import Invalid
from funcmesh.model.http_triggers import (
    ANY_HOST,
    HttpTriggerSpec,
    normalise_host,
    parse_http_trigger,
)
from funcmesh.model.kinds import HTTP_TRIGGER, SECRET, ResourceType
from funcmesh.model.objects import RawObject, name_of, namespace_of
from funcmesh.model.secrets import secret_value
from funcmesh.store.feed import Change
from funcmesh.store.sqlite import Store

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
AUTH_KEY = "auth"
RETRY_PAUSE_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpRoute:
    """Where one HTTPTrigger sends matching requests, and what it demands of them."""

    namespace: str
    trigger: str
    function: str
    host: str
    path: str
    cors_enable: bool
    realm: str
    auth: Htpasswd | None = None
    auth_problem: str = ""  # a basic-auth Secret that is missing or unusable: refuse all

    def matches_path(self, path: str) -> bool:
        prefix = self.path
        if prefix == "/" or path == prefix:
            return True
        if not path.startswith(prefix):
            return False
        return prefix.endswith("/") or path[len(prefix)] == "/"


class RouteTable:
    """The current HTTPTrigger routes, replaced as a whole when triggers or Secrets change."""

    def __init__(self) -> None:
        self._by_host: dict[str, tuple[HttpRoute, ...]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_host)

    def replace(self, routes: Iterable[HttpRoute]) -> None:
        by_host: dict[str, list[HttpRoute]] = {}
        for route in routes:
            by_host.setdefault(route.host, []).append(route)
        self._by_host = {
            host: tuple(sorted(found, key=lambda r: (-len(r.path), r.namespace, r.trigger)))
            for host, found in by_host.items()
        }

    def match(self, host: str, path: str) -> HttpRoute | None:
        """The route of the longest prefix of ``path`` for ``host`` (a Host header value), then
        among the routes for any host; None when none matches."""
        by_host = self._by_host
        if not by_host:
            return None
        for candidates in (by_host.get(normalise_host(host)), by_host.get(ANY_HOST)):
            for route in candidates or ():
                if route.matches_path(path):
                    return route
        return None


def build_route(trigger: HttpTriggerSpec, secrets: Mapping[Key, RawObject]) -> HttpRoute:
    """The route of one trigger, with its htpasswd users read from its Secret."""
    auth: Htpasswd | None = None
    problem = ""
    if trigger.basic_auth_secret:
        auth, problem = _read_auth(
            trigger, secrets.get((trigger.namespace, trigger.basic_auth_secret))
        )
    return HttpRoute(
        namespace=trigger.namespace,
        trigger=trigger.name,
        function=trigger.function_name,
        host=trigger.host,
        path=trigger.path,
        cors_enable=trigger.cors_enable,
        realm=f"{trigger.namespace}/{trigger.name}",
        auth=auth,
        auth_problem=problem,
    )


def _read_auth(trigger: HttpTriggerSpec, secret: RawObject | None) -> tuple[Htpasswd | None, str]:
    where = f'Secret "{trigger.basic_auth_secret}" in namespace "{trigger.namespace}"'
    if secret is None:
        return None, f"the basic-auth {where} does not exist"
    data = secret_value(secret, AUTH_KEY)
    if data is None:
        return None, f'the basic-auth {where} has no key "{AUTH_KEY}"'
    try:
        return parse_htpasswd(
            data.decode("utf-8", "replace"), source=f'key "{AUTH_KEY}" of {where}'
        ), ""
    except Invalid as exc:
        return None, str(exc)


class HttpRouteFeed:
    """Keeps a RouteTable equal to the stored HTTPTriggers and their Secrets."""

    def __init__(
        self, store: Store, table: RouteTable, certificates: Certificates | None = None
    ) -> None:
        self._store = store
        self.table = table
        self.certificates = certificates
        self._tls_lock = asyncio.Lock()
        self._triggers: dict[Key, HttpTriggerSpec] = {}
        self._secrets: dict[Key, RawObject] = {}
        self._watchers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Load the stored triggers and Secrets, then follow their changes."""
        triggers_rv = await self._load_triggers()
        secrets_rv = await self._load_secrets()
        self._rebuild()
        await self._refresh_tls()
        self._watchers = [
            asyncio.create_task(
                self._follow(HTTP_TRIGGER, triggers_rv, self._load_triggers),
                name="routes-watch-httptriggers",
            ),
            asyncio.create_task(
                self._follow(SECRET, secrets_rv, self._load_secrets),
                name="routes-watch-secrets",
            ),
        ]

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers = []

    async def _follow(
        self, rt: ResourceType, since: int, reload: Callable[[], Awaitable[int]]
    ) -> None:
        """Apply each change of ``rt``. A watch that ends early fell behind, and a failure is
        retried after a pause: either way, list everything again and go on from there."""
        stale = False
        while True:
            try:
                if stale:
                    since = await reload()
                    self._rebuild()
                    await self._refresh_tls()
                async for change in self._store.watch(rt, None, since):
                    since = change.resource_version
                    self._apply(change)
                    self._rebuild()
                    await self._refresh_tls()
                logger.warning("the watch of %s ended early; listing them again", rt.plural)
            except Exception:  # the task's boundary: keep the routes following the store
                logger.exception("following %s for the HTTP routes failed", rt.plural)
                await asyncio.sleep(RETRY_PAUSE_S)
            stale = True

    def _apply(self, change: Change) -> None:
        obj = change.object
        key = (namespace_of(obj), name_of(obj))
        if change.resource == SECRET.key:
            if change.type == "DELETED":
                self._secrets.pop(key, None)
            else:
                self._secrets[key] = obj
        elif change.type == "DELETED":
            self._triggers.pop(key, None)
        elif (trigger := _parsed(obj)) is not None:
            self._triggers[key] = trigger

    async def _load_triggers(self) -> int:
        objects, resource_version = await self._store.list_objects(HTTP_TRIGGER)
        parsed = ((_key(obj), _parsed(obj)) for obj in objects)
        self._triggers = {key: trigger for key, trigger in parsed if trigger is not None}
        return resource_version

    async def _load_secrets(self) -> int:
        objects, resource_version = await self._store.list_objects(SECRET)
        self._secrets = {_key(obj): obj for obj in objects}
        return resource_version

    def _rebuild(self) -> None:
        self.table.replace(build_route(t, self._secrets) for t in self._triggers.values())

    async def _refresh_tls(self) -> None:
        """Give each host the TLS key pair its trigger's Secret holds now (OpenSSL loads keys
        from files, so in a worker thread)."""
        if self.certificates is None:
            return
        pairs = tls_key_pairs(self._triggers.values(), self._secrets)
        async with self._tls_lock:
            await asyncio.to_thread(self.certificates.replace, pairs)


def _key(obj: RawObject) -> Key:
    return namespace_of(obj), name_of(obj)


def _parsed(obj: RawObject) -> HttpTriggerSpec | None:
    try:
        return parse_http_trigger(obj)
    except Invalid as exc:  # admitted objects parse; an older schema may not
        logger.warning("HTTPTrigger %s/%s is ignored: %s", namespace_of(obj), name_of(obj), exc)
        return None
