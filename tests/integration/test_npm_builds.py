"""package.json dependencies built with the real npm, offline: the dependency is a local package
directory (``file:/abs/path``), which npm copies in (``--install-links``) without a registry."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from funcmesh.runtime.builds import MARKER, BuildFailed, DependencyBuilder
from funcmesh.runtime.catalog import Runtime

NODE = shutil.which("node")
NPM = shutil.which("npm")
pytestmark = pytest.mark.skipif(NODE is None or NPM is None, reason="needs node and npm")


def node_runtime(executable: str | None = NODE) -> Runtime:
    assert executable is not None
    return Runtime.nodejs(major=20, executable=Path(os.path.realpath(executable)))


def local_package(directory: Path, *, name: str = "localdep", greeting: str = "hi") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "package.json").write_text(
        json.dumps({"name": name, "version": "1.0.0", "main": "index.js"})
    )
    (directory / "index.js").write_text(f"module.exports = {json.dumps(greeting)};\n")
    return directory


def package_json(**dependencies: Path | str) -> str:
    return json.dumps({"dependencies": {k: f"file:{v}" for k, v in dependencies.items()}})


async def node_require(node_paths: tuple[str, ...], name: str) -> str:
    assert NODE is not None
    process = await asyncio.create_subprocess_exec(
        NODE, "-e", f"process.stdout.write(require({json.dumps(name)}))",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/",
        env={"NODE_PATH": os.pathsep.join(node_paths), "PATH": os.defpath},
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@pytest.fixture
def builder(tmp_path: Path) -> DependencyBuilder:
    return DependencyBuilder(root=tmp_path / "deps")


async def test_dependencies_install_into_a_node_modules_on_node_path(
    tmp_path: Path, builder: DependencyBuilder
) -> None:
    source = local_package(tmp_path / "src" / "localdep", greeting="hello from localdep")
    lines: list[str] = []

    env = await builder.ensure(node_runtime(), package_json(localdep=source), progress=lines.append)

    (node_modules,) = env.sys_paths
    assert Path(node_modules) == env.path / "node_modules"
    assert (env.path / MARKER).is_file()
    shutil.rmtree(tmp_path / "src")  # the build is a copy: it stands without the source
    assert await node_require(env.sys_paths, "localdep") == "hello from localdep"
    assert any("added 1 package" in line for line in lines)


async def test_equal_package_json_shares_one_build(
    tmp_path: Path, builder: DependencyBuilder
) -> None:
    source = local_package(tmp_path / "localdep")
    written = json.dumps({"name": "fn", "dependencies": {"localdep": f"file:{source}"}}, indent=4)
    reordered = json.dumps(
        {"dependencies": {"localdep": f"file:{source}"}, "name": "fn"}, separators=(",", ":")
    )
    first = await builder.ensure(node_runtime(), written)

    again = DependencyBuilder(root=tmp_path / "deps")  # a restarted daemon
    assert again.cached(node_runtime(), reordered) == first  # key order and spacing do not count
    assert again.cached(node_runtime(), package_json(localdep=source)) is None  # other content


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"dependencies": {"a": "1.0.0",}}', "package.json is not valid JSON: Expecting"),
        ('["localdep"]', "package.json must be a JSON object"),
        ('{"dependencies": ["localdep"]}', '"dependencies" must map package names to version'),
        ('{"dependencies": {"localdep": 1}}', '"dependencies" must map package names to version'),
    ],
)
async def test_malformed_package_json_fails_with_a_clear_message(
    builder: DependencyBuilder, text: str, message: str
) -> None:
    with pytest.raises(BuildFailed, match=message):
        await builder.ensure(node_runtime(), text)

    assert builder.cached(node_runtime(), text) is None


@pytest.mark.parametrize("text", ["", '{"name": "fn", "version": "1.0.0"}', '{"dependencies": {}}'])
async def test_package_json_without_dependencies_needs_no_build(
    builder: DependencyBuilder, text: str
) -> None:
    env = await builder.ensure(node_runtime(), text)

    assert env.sys_paths == ()
    assert not env.path.exists()


async def test_npm_failure_keeps_npm_output(tmp_path: Path, builder: DependencyBuilder) -> None:
    missing = tmp_path / "no-such-package"

    with pytest.raises(BuildFailed) as caught:
        await builder.ensure(node_runtime(), package_json(localdep=missing))

    message = str(caught.value)
    assert message.startswith("npm install for nodejs20 failed (exit code")
    assert "no-such-package" in message  # npm's own words about what is missing
    assert not list((tmp_path / "deps").glob(".tmp-*"))  # no staging debris left


async def test_missing_npm_is_named(tmp_path: Path) -> None:
    lonely = tmp_path / "bin" / "node"  # a node with no npm beside it, and no npm on PATH
    lonely.parent.mkdir()
    lonely.symlink_to(os.path.realpath(NODE or "node"))
    builder = DependencyBuilder(root=tmp_path / "deps", environ={"PATH": str(tmp_path / "bin")})
    runtime = Runtime.nodejs(major=20, executable=lonely)

    with pytest.raises(BuildFailed, match=f"npm was not found beside {lonely} or on PATH"):
        await builder.ensure(runtime, package_json(localdep=tmp_path))
