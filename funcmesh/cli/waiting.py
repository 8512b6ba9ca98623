"""Waiting for a deployed function to be ready, with a spinner and the dependency build's log.

After ``deploy``/``update`` the CLI watches the Function until ``status.observedGeneration``
reaches the generation it wrote and the Ready condition is final (Ready, or BuildFailed,
LoadFailed, Invalid). It re-lists when a watch window ends and polls when watch does not work.
While the reason is Building, an interactive terminal shows the latest line of the build log
(followed in a background thread). This module must not change the Function.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import click

from funcmesh.client.status import ResourceExpired
from funcmesh.errors import FuncmeshError, Unavailable
from funcmesh.model.conditions import find_condition
from funcmesh.model.kinds import FUNCTION
from funcmesh.model.objects import RawObject, metadata_of, name_of

if TYPE_CHECKING:
    from rich.status import Status

    from funcmesh.client.api import ApiClient
    from funcmesh.client.responses import WatchEvent

logger = logging.getLogger(__name__)

# Reasons that do not clear by themselves (SecretMissing does, once the Secret is created).
FAILED_REASONS = frozenset(
    {"BuildFailed", "LoadFailed", "Invalid", "SecretMountRefused", "SecretInvalid"}
)
WATCH_EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})
WATCH_WINDOW_S = 30.0
POLL_INTERVAL_S = 0.5
SPINNER_COLUMNS = 3  # the spinner and the space after it
_LOG_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT[\d:.]+Z\s")


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """Where a function stands with respect to one generation."""

    state: Literal["pending", "ready", "failed"]
    reason: str
    message: str = ""
    warning: str | None = None


def progress_of(obj: Mapping[str, Any], *, generation: int) -> Progress:
    status = obj.get("status") or {}
    observed = status.get("observedGeneration")
    if not isinstance(observed, int) or observed < generation:
        return Progress(state="pending", reason="Deploying")
    substituted = find_condition(status, "RuntimeSubstituted")
    warning = None
    if substituted and substituted.get("status") == "True":
        warning = str(substituted.get("message") or substituted.get("reason") or "")
    ready = find_condition(status, "Ready")
    if ready is None:
        return Progress(state="pending", reason="Deploying", warning=warning)
    reason = str(ready.get("reason") or "")
    message = str(ready.get("message") or "").strip()
    if ready.get("status") == "True":
        return Progress(state="ready", reason=reason or "Ready", message=message, warning=warning)
    state: Literal["pending", "failed"] = "failed" if reason in FAILED_REASONS else "pending"
    return Progress(state=state, reason=reason or "NotReady", message=message, warning=warning)


class ProgressView(Protocol):
    """Where waiting shows what it is waiting for."""

    @property
    def interactive(self) -> bool: ...

    def show(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...


class FunctionWaiter:
    """Waits for one generation of one function; ``wait`` returns the ready object."""

    def __init__(
        self,
        client: ApiClient,
        *,
        namespace: str,
        name: str,
        generation: int,
        view: ProgressView,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self._client = client
        self._poll_interval_s = poll_interval_s
        self._namespace = namespace
        self._name = name
        self._generation = generation
        self._view = view
        self._warned = False
        self._reason = "Deploying"
        self._build_line = ""
        self._stop = threading.Event()
        self._log_thread: threading.Thread | None = None

    def wait(self, *, timeout_s: float) -> RawObject:
        deadline = time.monotonic() + timeout_s
        use_watch = True
        try:
            while True:
                obj = self._client.get(FUNCTION, self._namespace, self._name)
                if self._observe(obj):
                    return obj
                if time.monotonic() >= deadline:
                    raise self._timed_out(timeout_s)
                if use_watch:
                    try:
                        ready = self._watch(obj, deadline=deadline)
                    except _WatchUnusable as exc:
                        logger.debug("watch does not work (%s); polling instead", exc)
                        use_watch = False
                        continue
                    if ready is not None:
                        return ready
                else:
                    self._stop.wait(
                        min(self._poll_interval_s, max(0.0, deadline - time.monotonic()))
                    )
        finally:
            self._stop.set()

    def _watch(self, obj: RawObject, *, deadline: float) -> RawObject | None:
        started = time.monotonic()
        for event in self._events(obj, timeout_s=max(1.0, min(WATCH_WINDOW_S, deadline - started))):
            if event.type == "BOOKMARK" or name_of(event.object) != self._name:
                continue
            if event.type == "DELETED":
                raise FuncmeshError(f"function {self._name} was deleted while waiting for it")
            if self._observe(event.object):
                return event.object
            if time.monotonic() >= deadline:
                return None
        if time.monotonic() - started < self._poll_interval_s:
            self._stop.wait(self._poll_interval_s)  # a watch that ends at once must not spin
        return None

    def _events(self, obj: RawObject, *, timeout_s: float) -> Iterator[WatchEvent]:
        """The watch's events; ends when the window ends, the version expired or the API went
        away (the next get tells); raises _WatchUnusable when watching does not work at all."""
        try:
            for event in self._client.watch(
                FUNCTION,
                self._namespace,
                resource_version=str(metadata_of(obj).get("resourceVersion") or ""),
                field_selector=f"metadata.name={self._name}",
                timeout_s=timeout_s,
            ):
                if event.type not in WATCH_EVENT_TYPES:
                    raise _WatchUnusable(f"unexpected watch event type {event.type!r}")
                yield event
        except (ResourceExpired, Unavailable) as exc:
            logger.debug("watch ended: %s", exc)
        except FuncmeshError as exc:
            raise _WatchUnusable(str(exc)) from exc

    def _observe(self, obj: RawObject) -> bool:
        """True when ready; raises when the function failed; else updates the view."""
        progress = progress_of(obj, generation=self._generation)
        if progress.warning and not self._warned:
            self._warned = True
            self._view.warn(progress.warning)
        if progress.state == "ready":
            return True
        if progress.state == "failed":
            detail = f": {progress.message}" if progress.message else ""
            raise FuncmeshError(f"function {self._name} failed: {progress.reason}{detail}")
        self._reason = progress.reason
        if progress.reason == "Building" and self._view.interactive:
            self._follow_build_log()
        self._refresh()
        return False

    def _refresh(self) -> None:
        if self._reason == "Building" and self._build_line:
            self._view.show(f"Building function {self._name}: {self._build_line}")
        else:
            self._view.show(f"Waiting for function {self._name}: {self._reason}")

    def _follow_build_log(self) -> None:
        if self._log_thread is not None:
            return
        self._log_thread = threading.Thread(
            target=self._read_build_log, name=f"build-log-{self._name}", daemon=True
        )
        self._log_thread.start()

    def _read_build_log(self) -> None:
        try:
            lines = self._client.function_log(
                self._namespace, self._name, follow=True, tail_lines=1, build=True
            )
            for line in lines:
                if self._stop.is_set():
                    return
                if text := _LOG_TIMESTAMP.sub("", line).strip():
                    self._build_line = text
                    self._refresh()
        # A thread boundary: the log only decorates the spinner, so waiting goes on without it.
        except Exception:  # noqa: BLE001
            logger.debug("following the build log failed", exc_info=True)

    def _timed_out(self, timeout_s: float) -> FuncmeshError:
        return FuncmeshError(
            f"function {self._name} is not ready after {timeout_s:g} s ({self._reason}); "
            f"it keeps deploying: see funcmesh function ls {self._name}"
        )


class _WatchUnusable(Exception):
    """Watching fails for another reason than an ended window: poll instead."""


class _QuietView:
    """For pipes and CI logs: no spinner, warnings as lines on stderr."""

    interactive = False

    def show(self, text: str) -> None:
        pass

    def warn(self, text: str) -> None:
        click.echo(f"warning: {text}", err=True)


class _SpinnerView:
    """A rich spinner on stderr whose text follows the progress."""

    interactive = True

    def __init__(self, status: Status) -> None:
        self._status = status

    def show(self, text: str) -> None:
        from rich.text import Text

        room = max(10, self._status.console.width - SPINNER_COLUMNS)
        line = text if len(text) <= room else text[: room - 1] + "…"
        self._status.update(Text(line))

    def warn(self, text: str) -> None:
        from rich.text import Text

        self._status.console.print(Text(f"warning: {text}"))


@contextmanager
def progress_view() -> Iterator[ProgressView]:
    """A spinner when stderr is a terminal, else the quiet view."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield _QuietView()
        return
    with console.status("Deploying") as status:
        yield _SpinnerView(status)
