"""Dependency builds with the real pip, offline: requirements come from a wheel built here."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import zipfile
from pathlib import Path

import pytest

from funcmesh.runtime.builds import MARKER, BuildFailed, DependencyBuilder
from funcmesh.runtime.catalog import Runtime

PACKAGE_SOURCE = b"VALUE = 42\n\ndef fail():\n    raise ValueError('raised inside the package')\n"


def build_wheel(directory: Path, *, name: str = "fmtestpkg", version: str = "1.0") -> Path:
    """A pure-Python wheel, written by hand: no build backend or network needed."""
    dist_info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    files = {
        f"{name}/__init__.py": PACKAGE_SOURCE,
        f"{dist_info}/METADATA": metadata.encode(),
        f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: funcmesh-tests\n"
        b"Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [f"{path},sha256={urlsafe_digest(data)},{len(data)}" for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,", ""]).encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


def python_at(executable: Path) -> Runtime:
    return Runtime.python(version=(sys.version_info[0], sys.version_info[1]), executable=executable)


# The test interpreter (a venv, so it has pip) stands for the runtime's interpreter.
RUNTIME = python_at(Path(sys.executable))


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    directory = tmp_path / "wheels"
    directory.mkdir()
    build_wheel(directory)
    return directory


@pytest.fixture
def builder(tmp_path: Path, wheelhouse: Path) -> DependencyBuilder:
    pip_args = ("--no-index", "--find-links", str(wheelhouse))
    return DependencyBuilder(root=tmp_path / "deps", pip_args=pip_args)


async def run_python(runtime: Runtime, code: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        str(runtime.executable), "-I", "-c", code, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def entries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def test_build_is_importable_from_its_sys_paths(
    tmp_path: Path, builder: DependencyBuilder
) -> None:
    lines: list[str] = []

    env = await builder.ensure(RUNTIME, "fmtestpkg==1.0\n", progress=lines.append)

    code = "import sys; sys.path[:0] = sys.argv[1:]; import fmtestpkg; print(fmtestpkg.VALUE); "
    code += "fmtestpkg.fail()"
    returncode, stdout, stderr = await run_python(RUNTIME, code, *env.sys_paths)
    assert (returncode, stdout) == (1, "42\n")
    # Tracebacks name the files where they are now, not where pip put them.
    assert f'File "{env.path}/site-packages/fmtestpkg/__init__.py", line 4' in stderr
    assert any("Successfully installed fmtestpkg-1.0" in line for line in lines)
    assert "Successfully installed fmtestpkg-1.0" in builder.log_path(env.key).read_text()
    assert entries(tmp_path / "deps") == sorted([env.key, f"{env.key}.log"])
    assert (env.path / MARKER).is_file()


async def test_equal_deps_share_one_build_also_after_a_restart(
    tmp_path: Path, wheelhouse: Path
) -> None:
    runs = tmp_path / "pip-runs"
    counting = script(tmp_path / "python", f'echo run >> {runs}\nexec {sys.executable} "$@"')
    runtime = python_at(counting)
    pip_args = ("--no-index", "--find-links", str(wheelhouse))
    builder = DependencyBuilder(root=tmp_path / "deps", pip_args=pip_args)
    heard: dict[str, list[str]] = {"first": [], "second": []}

    same_deps = "# the same deps\r\n  fmtestpkg==1.0  \r\n"
    first, second = await asyncio.gather(
        builder.ensure(runtime, "fmtestpkg==1.0", progress=heard["first"].append),
        builder.ensure(runtime, same_deps, progress=heard["second"].append),
    )
    third = await builder.ensure(runtime, "fmtestpkg==1.0")
    restarted = DependencyBuilder(root=tmp_path / "deps", pip_args=pip_args)
    after_restart = await restarted.ensure(runtime, "fmtestpkg==1.0")

    assert first == second == third == after_restart
    assert runs.read_text() == "run\n"
    for lines in heard.values():
        assert any("Successfully installed fmtestpkg-1.0" in line for line in lines)


async def test_failed_build_says_why_and_leaves_nothing_cached(
    tmp_path: Path, builder: DependencyBuilder
) -> None:
    deps = "nonexistent-package-xyz==1.0"

    with pytest.raises(BuildFailed) as caught:
        await builder.ensure(RUNTIME, deps)

    failure = caught.value
    runtime_id = RUNTIME.id
    assert str(failure).startswith(f"pip install for {runtime_id} failed (exit code 1)")
    assert "No matching distribution found for nonexistent-package-xyz==1.0" in failure.output_tail
    assert failure.output_tail in str(failure)
    assert len(failure.output_tail.splitlines()) <= 20
    key = builder.key_for(RUNTIME, deps)
    assert builder.cached(RUNTIME, deps) is None
    assert entries(tmp_path / "deps") == [f"{key}.log"]


async def test_empty_deps_need_no_build(tmp_path: Path, builder: DependencyBuilder) -> None:
    env = await builder.ensure(RUNTIME, "  \n# nothing but a comment\n")

    assert env.sys_paths == ()
    assert env == builder.cached(RUNTIME, "")
    assert not (tmp_path / "deps").exists()


async def test_debris_of_a_crashed_build_is_replaced(
    tmp_path: Path, builder: DependencyBuilder
) -> None:
    key = builder.key_for(RUNTIME, "fmtestpkg==1.0")
    half_staged = tmp_path / "deps" / f".tmp-{key}-crashed"
    unmarked = tmp_path / "deps" / key / "site-packages"
    for directory in (half_staged, unmarked):
        directory.mkdir(parents=True)
        (directory / "junk.py").write_text("half written")
    assert builder.cached(RUNTIME, "fmtestpkg==1.0") is None

    def failing_listener(line: str) -> None:
        raise RuntimeError("a listener that breaks must not break the build")

    env = await builder.ensure(RUNTIME, "fmtestpkg==1.0", progress=failing_listener)

    assert entries(tmp_path / "deps") == sorted([key, f"{key}.log"])
    assert not (env.path / "site-packages" / "junk.py").exists()
    assert (env.path / "site-packages" / "fmtestpkg" / "__init__.py").is_file()


async def wait_until_gone(pid: int, *, timeout_s: float) -> None:
    """Return once process ``pid`` (not our child) has exited; TimeoutError if it does not."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    exited = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, exited.set)  # a pidfd turns readable when its process exits
    try:
        await asyncio.wait_for(exited.wait(), timeout_s)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def test_cancelling_a_build_kills_pip_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    hanging = script(tmp_path / "python", f"sleep 60 &\necho $! > {pid_file}\necho started\nwait")
    builder = DependencyBuilder(root=tmp_path / "deps")
    started = asyncio.Event()

    def on_line(line: str) -> None:
        if line == "started":
            started.set()

    caller = asyncio.create_task(builder.ensure(python_at(hanging), "six", progress=on_line))
    await asyncio.wait_for(started.wait(), timeout=5)
    await builder.aclose()

    with pytest.raises(asyncio.CancelledError):
        await caller
    await wait_until_gone(int(pid_file.read_text()), timeout_s=3)
    assert [name for name in entries(tmp_path / "deps") if name.startswith(".tmp-")] == []


async def test_a_build_that_hangs_times_out(tmp_path: Path) -> None:
    hanging = script(tmp_path / "python", "echo resolving six\nexec sleep 60")
    builder = DependencyBuilder(root=tmp_path / "deps", build_timeout_s=0.3)

    with pytest.raises(BuildFailed, match="did not finish within 0.3 s") as caught:
        await builder.ensure(python_at(hanging), "six")

    assert caught.value.output_tail == "resolving six"
    assert builder.cached(python_at(hanging), "six") is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("echo '/usr/bin/python3: No module named pip'\nexit 1", "has no pip; install it with `"),
        (None, "could not start"),
    ],
)
async def test_an_interpreter_that_cannot_build_is_named(
    tmp_path: Path, body: str | None, message: str
) -> None:
    executable = tmp_path / "python"
    if body is not None:
        script(executable, body)
    builder = DependencyBuilder(root=tmp_path / "deps")

    with pytest.raises(BuildFailed, match=message) as caught:
        await builder.ensure(python_at(executable), "six")

    assert str(executable) in str(caught.value)


async def test_build_log_is_capped(tmp_path: Path) -> None:
    chatty = script(
        tmp_path / "python", "i=0\nwhile [ $i -lt 200 ]; do echo line $i; i=$((i+1)); done"
    )
    builder = DependencyBuilder(root=tmp_path / "deps", max_output_bytes=100)

    env = await builder.ensure(python_at(chatty), "six")

    log = builder.log_path(env.key).read_text()
    assert log.startswith("line 0\nline 1\n")
    assert log.endswith("[funcmesh: output truncated, the log is full]\n")
    assert len(log) < 200
