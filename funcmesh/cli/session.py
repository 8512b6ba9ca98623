"""What a command needs to reach the API: the kubeconfig, the namespace and one ApiClient.

Built lazily from the global flags and the environment the first time a command asks, and closed
when the command ends. Heavy imports (httpx, YAML) happen here, inside the methods, so commands
that never talk to the API start fast. This module must not print.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import click

from funcmesh.cli.options import GlobalFlags, global_flags

if TYPE_CHECKING:
    from funcmesh.client.api import ApiClient
    from funcmesh.client.kubeconfig import Kubeconfig
    from funcmesh.model.kinds import ResourceType
    from funcmesh.model.objects import RawObject

_SESSION_KEY = "funcmesh.session"
DEFAULT_NAMESPACE = "default"
UPDATE_ATTEMPTS = 3


class Session:
    """The API connection of one command run."""

    def __init__(self, flags: GlobalFlags, env: Mapping[str, str]) -> None:
        self._flags = flags
        self._env = env
        self._kubeconfig: Kubeconfig | None = None
        self._client: ApiClient | None = None

    @property
    def env(self) -> Mapping[str, str]:
        return self._env

    def kubeconfig(self) -> Kubeconfig:
        if self._kubeconfig is None:
            from funcmesh.client.kubeconfig import load_kubeconfig

            self._kubeconfig = load_kubeconfig(
                self._env, explicit=self._flags.kubeconfig, context=self._flags.context
            )
        return self._kubeconfig

    @property
    def namespace(self) -> str:
        """``-n``, else the context's namespace, else ``default`` (also without a kubeconfig)."""
        if self._flags.namespace:
            return self._flags.namespace
        from funcmesh.client.kubeconfig import KubeconfigMissing

        try:
            return self.kubeconfig().namespace or DEFAULT_NAMESPACE
        except KubeconfigMissing:
            return DEFAULT_NAMESPACE

    def client(self) -> ApiClient:
        if self._client is None:
            from funcmesh.client.api import ApiClient

            self._client = ApiClient.from_kubeconfig(self.kubeconfig(), server=self._flags.server)
        return self._client

    def update(
        self,
        rt: ResourceType,
        name: str,
        change: Callable[[RawObject], RawObject],
        *,
        dry_run: bool,
    ) -> RawObject:
        """Read an object, change it, and replace it; when someone else wrote meanwhile
        (Conflict), apply the change to the new version, a few times. With ``dry_run`` the
        changed object is only returned."""
        from funcmesh.errors import Conflict

        client = self.client()
        for attempt in range(1, UPDATE_ATTEMPTS + 1):
            updated = change(client.get(rt, self.namespace, name))
            if dry_run:
                return updated
            try:
                return client.replace(rt, updated)
            except Conflict:
                if attempt == UPDATE_ATTEMPTS:
                    raise
        raise AssertionError("unreachable")

    def delete_each(
        self, ctx: click.Context, rt: ResourceType, names: Sequence[str], *, noun: str
    ) -> None:
        """Delete the named objects, printing Kubeless's line for each (``NOUN NAME deleted from
        namespace NS successfully!``); an error for one name does not stop the others."""
        from funcmesh.cli.output import for_each_name

        client = self.client()

        def delete_one(name: str) -> str:
            client.delete(rt, self.namespace, name)
            return f"{noun} {name} deleted from namespace {self.namespace} successfully!"

        for_each_name(ctx, names, delete_one)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def session_of(ctx: click.Context) -> Session:
    """The session of this command run, created on first use and closed with the root context."""
    root = ctx.find_root()
    session = root.meta.get(_SESSION_KEY)
    if not isinstance(session, Session):
        # The entry point is where the environment is read; everything below takes a mapping.
        session = root.meta[_SESSION_KEY] = Session(global_flags(ctx), os.environ)
        root.call_on_close(session.close)
    return session
