"""NATS triggers as a user runs them: a real nats-server, ``funcmesh up --nats-url`` (through
``FUNCMESH_NATS_URL``), real functions, and the ``trigger nats`` commands."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from funcmesh.cli.trigger_nats import publish_message
from tests.e2e.conftest import Daemon, start_daemon
from tests.natsserver import NatsServer, free_port, nats_server_binary

RUNTIME = f"python{sys.version_info.major}.{sys.version_info.minor}"
DEADLINE_S = 10.0
RECORDER = """import json

def handler(event, context):
    data = event["data"]
    if isinstance(data, bytes):
        data = data.decode()
    fields = ("event-id", "event-time", "event-type", "event-namespace")
    record = {name: event[name] for name in fields}
    record["data"] = data
    print("EVENT " + json.dumps(record))
    return "ok"
"""
GO_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})? \+0000 UTC$")


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(nats_server_binary(), log_path=tmp_path_factory.mktemp("nats") / "log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer) -> Iterator[Daemon]:
    home = tmp_path_factory.mktemp("funcmesh-home")
    running = start_daemon(
        home / "home",
        log_path=home / "daemon.log",
        extra_env={"FUNCMESH_NATS_URL": nats_server.url},
    )
    try:
        yield running
    finally:
        code = running.stop()
        assert code == 0, f"funcmesh up exited {code} on SIGTERM:\n{running.log_tail()}"


def deploy(daemon: Daemon, tmp_path: Path, functions: dict[str, dict[str, str]]) -> None:
    """Apply recorder Functions (name -> labels) in one go; they get ready meanwhile."""
    manifests = [
        {
            "apiVersion": "kubeless.io/v1beta1",
            "kind": "Function",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "runtime": RUNTIME,
                "handler": "recorder.handler",
                "function-content-type": "text",
                "function": RECORDER,
            },
        }
        for name, labels in functions.items()
    ]
    path = tmp_path / "functions.yaml"
    path.write_text("\n---\n".join(json.dumps(manifest) for manifest in manifests))
    daemon.run("apply", "-f", str(path))


def eventually(check: Callable[[], Any], *, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return result


def events_received(daemon: Daemon, function: str) -> list[dict[str, Any]]:
    logs = daemon.run("function", "logs", function).stdout
    return [
        json.loads(line.split("EVENT ", 1)[1]) for line in logs.splitlines() if "EVENT " in line
    ]


def table(daemon: Daemon, *args: str) -> list[list[str]]:
    lines = daemon.run("trigger", "nats", "ls", *args).stdout.splitlines()
    return [re.split(r"\s{3,}", line.strip()) for line in lines]


def test_a_message_reaches_each_selected_function_with_the_nats_event(
    daemon: Daemon, nats_server: NatsServer, tmp_path: Path
) -> None:
    deploy(
        daemon,
        tmp_path,
        {
            "orders-a": {"topic": "orders"},
            "orders-b": {"topic": "orders", "team": "billing"},
            "invoices": {"topic": "invoices"},
        },
    )
    created = daemon.run(
        "trigger", "nats", "create", "orders",
        "--function-selector", "topic=orders", "--trigger-topic", "orders.created",
    )  # fmt: skip
    assert created.stdout == "NATS trigger orders created in namespace default successfully!\n"
    assert created.stderr == ""
    eventually(
        lambda: ["orders", "Subscribed", "orders-a,orders-b"]
        in [[row[0], row[4], row[5]] for row in table(daemon, "-o", "wide")[1:]],
        what="the trigger to subscribe",
    )

    published = daemon.run(
        "trigger", "nats", "publish", "--url", nats_server.url,
        "--topic", "orders.created", "--message", '{"id": 7}',
    )  # fmt: skip
    assert published.stdout == "Published [orders.created] : '{\"id\": 7}'\n"
    asyncio.run(publish_message(nats_server.url, "orders.created", b"plain words"))

    for function in ("orders-a", "orders-b"):
        json_event, text_event = eventually(
            lambda f=function: len(got := events_received(daemon, f)) == 2 and got,
            what=f"two events in {function}",
        )
        assert json_event["data"] == {"id": 7}
        assert json_event["event-type"] == "application/json"
        assert json_event["event-namespace"] == "natstriggers.kubeless.io"
        assert GO_TIME.match(json_event["event-time"]), json_event["event-time"]
        assert len(json_event["event-id"]) == 15
        assert text_event["data"] == "plain words"
        assert text_event["event-type"] == "text/plain"
    assert events_received(daemon, "invoices") == []
    eventually(  # DELIVERED RETRIED FAILED: the status is written within a second
        lambda: {row[0]: row[6:] for row in table(daemon, "-o", "wide")[1:]}["orders"]
        == ["4", "0", "0"],
        what="4 deliveries counted",
    )


def test_create_with_dryrun_then_for_real(daemon: Daemon) -> None:
    dry = daemon.run(
        "trigger", "nats", "create", "lifecycle", "--dryrun", "-o", "json",
        "--function-selector", "app=web,tier in (a,b)", "--trigger-topic", "jobs.*",
    )  # fmt: skip
    assert json.loads(dry.stdout)["spec"] == {
        "topic": "jobs.*",
        "functionSelector": {
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}],
        },
    }
    assert "lifecycle" not in daemon.run("trigger", "nats", "list").stdout

    created = daemon.run(
        "trigger", "nats", "create", "lifecycle",
        "--function-selector", "app=web,tier in (a,b)", "--trigger-topic", "jobs.*",
    )  # fmt: skip
    assert "warning: no function in namespace default matches app=web,tier in (a,b) yet" in (
        created.stderr
    )
    rows = table(daemon)
    assert rows[0] == ["NAME", "NAMESPACE", "TOPIC", "FUNCTION SELECTOR"]
    assert ["lifecycle", "default", "jobs.*", "app=web,tier in (a,b)"] in rows[1:]

    again = daemon.run(
        "trigger", "nats", "create", "lifecycle",
        "--function-selector", "app=web", "--trigger-topic", "jobs.*", check=False,
    )  # fmt: skip
    assert again.returncode == 1
    assert "already exists: change it with funcmesh trigger nats update lifecycle" in again.stderr


def test_update_then_delete(daemon: Daemon) -> None:
    daemon.run(
        "trigger", "nats", "create", "changing",
        "--function-selector", "app=web,tier in (a,b)", "--trigger-topic", "jobs.*",
    )  # fmt: skip
    updated = daemon.run("trigger", "nats", "update", "changing", "--trigger-topic", "jobs.>")
    assert updated.stdout == "NATS trigger changing updated in namespace default successfully!\n"
    daemon.run("trigger", "nats", "update", "changing", "--function-selector", "app=api")
    assert ["changing", "default", "jobs.>", "app=api"] in table(daemon)[1:]
    stored = json.loads(daemon.run("get", "natstriggers", "changing", "-o", "json").stdout)
    assert stored["spec"]["functionSelector"] == {"matchLabels": {"app": "api"}}

    deleted = daemon.run("trigger", "nats", "delete", "changing")
    assert deleted.stdout == "NATS trigger changing deleted from namespace default successfully!\n"
    assert "changing" not in daemon.run("trigger", "nats", "ls").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--function-selector", "app=web=x", "--trigger-topic", "t"],
            'label value "web=x" must be 63 characters or less',
        ),
        (
            ["--function-selector", "app=web", "--trigger-topic", "a..b"],
            'spec.topic: topic "a..b" has an empty token',
        ),
        (
            ["--function-selector", "app=web", "--trigger-topic", "a.>.b"],
            'the wildcard ">" must be the last token',
        ),
        (
            ["--function-selector", "", "--trigger-topic", "t"],
            "give matchLabels or matchExpressions",
        ),
    ],
)
def test_create_refuses_bad_input_and_creates_nothing(
    daemon: Daemon, args: list[str], message: str
) -> None:
    result = daemon.run("trigger", "nats", "create", "bad", *args, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert "bad" not in daemon.run("trigger", "nats", "ls").stdout


def test_the_api_refuses_a_bad_selector(daemon: Daemon, tmp_path: Path) -> None:
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(
        "apiVersion: kubeless.io/v1beta1\nkind: NATSTrigger\nmetadata:\n  name: bad-selector\n"
        "spec:\n  topic: t\n  functionSelector:\n    matchExpressions:\n"
        "    - {key: app, operator: Near, values: [x]}\n"
    )
    result = daemon.run("apply", "-f", str(manifest), check=False)
    assert result.returncode == 1
    assert 'NATSTrigger "bad-selector" is invalid' in result.stderr
    assert (
        'spec.functionSelector.matchExpressions[0].operator: Unsupported value: "Near"'
        in result.stderr
    )
    missing = daemon.run("get", "natstriggers", "bad-selector", check=False)
    assert missing.returncode == 1


def test_publish_and_update_say_what_went_wrong(daemon: Daemon) -> None:
    unreachable = f"nats://127.0.0.1:{free_port()}"
    down = daemon.run(
        "trigger", "nats", "publish", "--url", unreachable, "--message", "m", check=False
    )
    assert down.returncode == 1
    assert down.stderr.startswith(f"error: cannot connect to the NATS server at {unreachable}")

    absent = daemon.run("trigger", "nats", "update", "absent", "--trigger-topic", "t", check=False)
    assert absent.returncode == 1
    assert 'natstriggers.kubeless.io "absent" not found' in absent.stderr
