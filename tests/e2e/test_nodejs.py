"""Node.js functions as a user deploys and calls them: through a real ``funcmesh up``, the CLI and
the gateway, with the machine's node and npm (offline: a local package as the dependency)."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Daemon, alive, descendants, start_daemon, work_dir_for

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="needs node and npm"
)

HELLO = """\
module.exports = {
  foo: (event, context) => {
    console.log('hello was called');
    return 'hello world from ' + context['function-name'];
  },
};
"""
ECHO = "module.exports = { handler: (event) => event.data };\n"
TEAPOT = """\
module.exports = {
  handler: (event) => {
    event.extensions.response.status(418).set('X-Kl', 'yes');
    return 'short and stout';
  },
};
"""
STREAM = """\
module.exports = {
  handler: (event) => new Promise((resolve) => {
    const res = event.extensions.response;
    res.setHeader('Content-Type', 'text/event-stream');
    res.write('data: 1\\n\\n');
    setTimeout(() => { res.end('data: 2\\n\\n'); resolve(); }, 500);
  }),
};
"""
PROMISE = """\
module.exports = {
  handler: async (event) => {
    await new Promise((resolve) => setTimeout(resolve, 10));
    return { awaited: true, data: event.data };
  },
};
"""
THROWS = "module.exports = { handler: () => { throw new Error('boom'); } };\n"
SLOW = """\
module.exports = {
  handler: async (event) => {
    if (event.data === 'hang') await new Promise((resolve) => setTimeout(resolve, 30000));
    return process.env.POD_NAME;
  },
};
"""
COUNTER = "let count = 0;\nmodule.exports = { handler: () => ({ count: ++count }) };\n"
USES_DEP = "module.exports = { handler: () => require('localdep') };\n"


@pytest.fixture(scope="module")
def runtime(daemon: Daemon) -> str:
    """The machine's Node.js runtime id, as the daemon offers it (nodejs20 here)."""
    config = daemon.run("get-server-config").stdout.splitlines()[1]
    [node] = [r for r in config.split(": ", 1)[1].split(", ") if r.startswith("nodejs")]
    return node


def deploy(
    daemon: Daemon, directory: Path, name: str, code: str, *flags: str, runtime: str
) -> None:
    path = directory / f"{name}.js"
    path.write_text(code)
    result = daemon.run(
        "function", "deploy", name, "--runtime", runtime, "--handler", f"{name}.handler",
        "--from-file", str(path), *flags,
    )  # fmt: skip
    assert result.stdout.splitlines()[-1] == f"Function {name} is ready", result.stdout


def post(daemon: Daemon, name: str, data: str = "", **headers: str) -> httpx.Response:
    url = f"{daemon.gateway_url}/function/{name}"
    return httpx.post(url, content=data, headers=headers, timeout=30)


def pods_of(daemon: Daemon, function: str) -> list[str]:
    names = daemon.run("get", "pods", "-l", f"function={function}", "-o", "name").stdout
    return [line.removeprefix("pod/") for line in names.splitlines()]


def wait_until(check: object, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def test_deploy_call_list_and_logs(daemon: Daemon, tmp_path: Path, runtime: str) -> None:
    source = tmp_path / "hello.js"
    source.write_text(HELLO)

    deployed = daemon.run(
        "function", "deploy", "hello-node", "--runtime", runtime, "--handler", "hello.foo",
        "--from-file", str(source),
    )  # fmt: skip

    assert deployed.stdout.splitlines()[-1] == "Function hello-node is ready"
    assert daemon.run("function", "call", "hello-node").stdout == "hello world from hello-node\n"
    rows = [row.split() for row in daemon.run("function", "ls").stdout.splitlines()[1:]]
    assert ["hello-node", "default", "hello.foo", runtime, "Ready"] in rows
    wait_until(
        lambda: "hello was called" in daemon.run("function", "logs", "hello-node").stdout,
        "the function's console output is in its log",
    )


def test_json_with_a_charset_is_parsed_and_echoed(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "echo", ECHO, runtime=runtime)

    answer = post(
        daemon, "echo", '{"it-s": "alive"}', **{"Content-Type": "application/json; charset=utf-8"}
    )

    assert answer.text == '{"it-s":"alive"}'  # parsed, then written back by res.json
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert answer.headers["access-control-allow-origin"] == "*"
    by_cli = daemon.run("function", "call", "echo", "--data", "[1, 2]").stdout
    assert json.loads(by_cli) == [1, 2]
    assert post(daemon, "echo", "plain words").text == "plain words"


def test_status_and_headers_set_on_the_response(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "teapot", TEAPOT, runtime=runtime)

    answer = post(daemon, "teapot")

    assert (answer.status_code, answer.text, answer.headers["x-kl"]) == (
        418,
        "short and stout",
        "yes",
    )


def test_an_event_stream_arrives_as_it_is_written(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "stream", STREAM, runtime=runtime)

    url = f"{daemon.gateway_url}/function/stream"
    with httpx.Client(timeout=30) as client, client.stream("GET", url) as answer:
        assert answer.headers["content-type"] == "text/event-stream"
        chunks = answer.iter_raw()
        assert next(chunks) == b"data: 1\n\n"  # alone: the second comes half a second later
        assert b"".join(chunks) == b"data: 2\n\n"


def test_a_promise_is_awaited(daemon: Daemon, tmp_path: Path, runtime: str) -> None:
    deploy(daemon, tmp_path, "promise", PROMISE, runtime=runtime)

    assert post(daemon, "promise", "x").json() == {"awaited": True, "data": "x"}


def test_a_thrown_error_answers_500_and_is_logged(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "thrower", THROWS, runtime=runtime)

    answer = post(daemon, "thrower")

    assert (answer.status_code, answer.text) == (500, "Error: boom")
    wait_until(
        lambda: "Function failed to execute: Error: boom"
        in daemon.run("function", "logs", "thrower").stdout,
        "the stack is in the function's log",
    )


def test_the_timeout_covers_async_work_and_replaces_the_instance(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "slow", SLOW, "--timeout", "1", runtime=runtime)
    [first_pod] = pods_of(daemon, "slow")

    hung = post(daemon, "slow", "hang")

    assert hung.status_code == 504
    assert json.loads(hung.text)["error"] == (
        "Request timeout exceeded: function default/slow did not answer within 1s"
    )
    wait_until(lambda: first_pod not in pods_of(daemon, "slow"), "the hung instance is gone")
    again = post(daemon, "slow")
    assert again.status_code == 200
    assert again.text != first_pod
    assert again.text in pods_of(daemon, "slow")


def test_module_state_persists_within_an_instance(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "counter", COUNTER, runtime=runtime)

    counts = [post(daemon, "counter").json()["count"] for _ in range(3)]

    assert counts == [counts[0], counts[0] + 1, counts[0] + 2]


@pytest.fixture
def local_package(daemon: Daemon) -> Iterator[Path]:
    """A package.json naming a local package directory: npm needs no registry."""
    directory = Path(tempfile.mkdtemp(prefix="npm-", dir=work_dir_for(daemon.home)))
    package = directory / "localdep"
    package.mkdir()
    (package / "package.json").write_text('{"name": "localdep", "version": "1.0.0"}')
    (package / "index.js").write_text("module.exports = 'hello from localdep';\n")
    manifest = directory / "package.json"
    manifest.write_text(json.dumps({"dependencies": {"localdep": f"file:{package}"}}))
    yield manifest
    shutil.rmtree(directory, ignore_errors=True)


def test_package_json_dependencies_install_once_for_every_function(
    daemon: Daemon, tmp_path: Path, runtime: str, local_package: Path
) -> None:
    deps_root = work_dir_for(daemon.home) / "deps"
    before = {p.name for p in deps_root.iterdir() if p.is_dir()}

    deploy(daemon, tmp_path, "withdep", USES_DEP, "--dependencies", str(local_package),
           runtime=runtime)  # fmt: skip
    deploy(daemon, tmp_path, "withdep2", USES_DEP, "--dependencies", str(local_package),
           runtime=runtime)  # fmt: skip

    assert post(daemon, "withdep").text == "hello from localdep"
    assert post(daemon, "withdep2").text == "hello from localdep"
    built = {p.name for p in deps_root.iterdir() if p.is_dir()} - before
    assert len(built) == 1, "the second function installed its dependencies again"
    [key] = built
    assert (deps_root / key / "node_modules" / "localdep" / "index.js").is_file()


def test_a_malformed_package_json_fails_the_build_saying_why(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    manifest = tmp_path / "package.json"
    manifest.write_text('{"dependencies": {"localdep": "1.0.0",}}')
    source = tmp_path / "badjson.js"
    source.write_text(ECHO)

    result = daemon.run(
        "function", "deploy", "badjson", "--runtime", runtime, "--handler", "badjson.handler",
        "--from-file", str(source), "--dependencies", str(manifest), check=False,
    )  # fmt: skip

    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: function badjson failed: BuildFailed: package.json is not valid JSON: "
    )


def test_a_kubeless_runtime_id_runs_on_this_node_with_a_warning(
    daemon: Daemon, tmp_path: Path, runtime: str
) -> None:
    deploy(daemon, tmp_path, "old-node", HELLO.replace("foo", "handler"), runtime="nodejs14")

    status = json.loads(daemon.run("get", "function", "old-node", "-o", "json").stdout)["status"]

    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    substituted = conditions["RuntimeSubstituted"]
    assert substituted["reason"] == "RuntimeNotAvailable"
    assert substituted["message"] == f"runtime nodejs14 is not available here; using {runtime}"
    assert status["runtime"] == runtime
    assert post(daemon, "old-node").text == "hello world from old-node"


def test_sigkill_of_the_daemon_leaves_no_node_process(tmp_path: Path) -> None:
    own = start_daemon(tmp_path / "home", log_path=tmp_path / "daemon.log")
    try:
        config = own.run("get-server-config").stdout.splitlines()[1]
        [runtime] = [r for r in config.split(": ", 1)[1].split(", ") if r.startswith("nodejs")]
        deploy(own, tmp_path, "orphan", COUNTER, runtime=runtime)
        wait_until(lambda: len(descendants(own.process.pid)) >= 3, "an instance and its spares")
        processes = descendants(own.process.pid)
    finally:
        own.stop(signal.SIGKILL)
    wait_until(lambda: not alive(processes), "every Node.js process is gone", timeout_s=5)
