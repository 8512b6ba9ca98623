from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from funcmesh.cli.waiting import FunctionWaiter, progress_of
from funcmesh.client.api import ApiClient
from funcmesh.errors import FuncmeshError

SUBSTITUTED = {
    "type": "RuntimeSubstituted",
    "status": "True",
    "reason": "RuntimeNotAvailable",
    "message": "runtime python3.7 is not available here; using python3.11",
}


def function(
    observed: int,
    reason: str | None,
    *,
    ok: bool = False,
    message: str = "",
    rv: str = "1",
    extra: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    conditions = list(extra)
    if reason is not None:
        conditions.append(
            {
                "type": "Ready",
                "status": "True" if ok else "False",
                "reason": reason,
                "message": message,
            }
        )
    return {
        "metadata": {
            "name": "hello",
            "namespace": "default",
            "generation": 2,
            "resourceVersion": rv,
        },
        "status": {"observedGeneration": observed, "conditions": conditions},
    }


@pytest.mark.parametrize(
    ("obj", "state", "reason"),
    [
        (function(1, "Ready", ok=True), "pending", "Deploying"),
        (function(2, None), "pending", "Deploying"),
        (function(2, "Building"), "pending", "Building"),
        (function(2, "Ready", ok=True), "ready", "Ready"),
        (function(2, "BuildFailed", message="pip failed"), "failed", "BuildFailed"),
        (function(2, "LoadFailed"), "failed", "LoadFailed"),
        (function(2, "Invalid"), "failed", "Invalid"),
        (function(2, "SecretMountRefused"), "failed", "SecretMountRefused"),
        (function(2, "SecretMissing"), "pending", "SecretMissing"),
    ],
)
def test_progress_of_a_generation(obj: dict[str, Any], state: str, reason: str) -> None:
    progress = progress_of(obj, generation=2)
    assert (progress.state, progress.reason) == (state, reason)


def test_substitution_warning_only_for_the_awaited_generation() -> None:
    assert (
        progress_of(function(1, "Ready", ok=True, extra=(SUBSTITUTED,)), generation=2).warning
        is None
    )
    warning = progress_of(function(2, "Building", extra=(SUBSTITUTED,)), generation=2).warning
    assert warning == SUBSTITUTED["message"]


class RecordingView:
    interactive = False

    def __init__(self) -> None:
        self.shown: list[str] = []
        self.warnings: list[str] = []

    def show(self, text: str) -> None:
        self.shown.append(text)

    def warn(self, text: str) -> None:
        self.warnings.append(text)


class FakeApi:
    """Answers GET with the next state, and watch with the given events (or an error)."""

    def __init__(
        self, gets: list[dict[str, Any]], watch_events: list[dict[str, Any]] | None
    ) -> None:
        self.gets: Iterator[dict[str, Any]] = iter(gets)
        self.watch_events = watch_events
        self.watches = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch") == "true":
            self.watches += 1
            assert request.url.params["fieldSelector"] == "metadata.name=hello"
            if self.watch_events is None:
                status = {
                    "kind": "Status",
                    "code": 405,
                    "reason": "MethodNotAllowed",
                    "message": "no watch",
                }
                return httpx.Response(405, json=status)
            lines = [json.dumps(event) for event in self.watch_events]
            self.watch_events = []
            return httpx.Response(200, content="\n".join(lines).encode())
        return httpx.Response(200, json=next(self.gets))


def waiter(api: FakeApi, view: RecordingView) -> FunctionWaiter:
    client = ApiClient(server="https://127.0.0.1:6443", transport=httpx.MockTransport(api))
    return FunctionWaiter(
        client, namespace="default", name="hello", generation=2, view=view, poll_interval_s=0.01
    )


def test_waits_through_watch_events_until_ready_and_warns_once() -> None:
    api = FakeApi(
        gets=[function(1, "Ready", ok=True)],
        watch_events=[
            {"type": "MODIFIED", "object": function(2, "Building", extra=(SUBSTITUTED,), rv="2")},
            {"type": "MODIFIED", "object": {"metadata": {"name": "other"}}},
            {
                "type": "MODIFIED",
                "object": function(2, "Ready", ok=True, extra=(SUBSTITUTED,), rv="3"),
            },
        ],
    )
    view = RecordingView()
    ready = waiter(api, view).wait(timeout_s=5)
    assert ready["metadata"]["resourceVersion"] == "3"
    assert view.warnings == [SUBSTITUTED["message"]]
    assert view.shown == [
        "Waiting for function hello: Deploying",
        "Waiting for function hello: Building",
    ]


def test_build_failure_ends_the_wait_with_the_reason_and_message() -> None:
    api = FakeApi(
        gets=[function(1, None)],
        watch_events=[
            {
                "type": "MODIFIED",
                "object": function(2, "BuildFailed", message="pip: no such package six9"),
            }
        ],
    )
    with pytest.raises(FuncmeshError) as caught:
        waiter(api, RecordingView()).wait(timeout_s=5)
    assert str(caught.value) == "function hello failed: BuildFailed: pip: no such package six9"


def test_falls_back_to_polling_when_watch_fails() -> None:
    api = FakeApi(
        gets=[function(1, None), function(2, "Building"), function(2, "Ready", ok=True, rv="9")],
        watch_events=None,
    )
    ready = waiter(api, RecordingView()).wait(timeout_s=5)
    assert ready["metadata"]["resourceVersion"] == "9"
    assert api.watches == 1


def test_relists_when_a_watch_window_ends() -> None:
    api = FakeApi(gets=[function(1, None), function(2, "Ready", ok=True, rv="5")], watch_events=[])
    assert waiter(api, RecordingView()).wait(timeout_s=5)["metadata"]["resourceVersion"] == "5"


def test_deleted_while_waiting() -> None:
    api = FakeApi(
        gets=[function(1, None)], watch_events=[{"type": "DELETED", "object": function(1, None)}]
    )
    with pytest.raises(FuncmeshError, match="function hello was deleted while waiting for it"):
        waiter(api, RecordingView()).wait(timeout_s=5)


def test_gives_up_after_the_timeout_and_says_it_keeps_deploying() -> None:
    api = FakeApi(gets=[function(2, "Building")], watch_events=[])
    with pytest.raises(
        FuncmeshError, match=r"not ready after 0 s \(Building\); it keeps deploying"
    ):
        waiter(api, RecordingView()).wait(timeout_s=0)
