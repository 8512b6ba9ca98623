"""Dependency environments, built once per (runtime, dependency file) and shared.

``pip install --target`` puts a Function's ``requirements.txt`` into ``<root>/<key>/site-packages``,
which a worker puts on its ``sys.path``; ``npm install --omit=dev --prefix`` puts a
``package.json``'s dependencies into ``<root>/<key>/node_modules``, which a Node.js worker gets on
its ``NODE_PATH``. The key hashes the runtime and the normalised deps (requirement lines, or the
package.json as canonical JSON), so a second Function or a scale-out with the same deps never
installs again, and concurrent requests for one key share one build. A build happens in a
staging directory; its completion marker is written last and the directory is then renamed
into place, so a build appears whole or not at all, and a crash leaves only staging debris,
removed by the next build of that key.
The installer runs as an asyncio subprocess in its own process group, so cancelling a build
(daemon shutdown) kills it and whatever it started. One daemon owns ``root``.
This module must not start workers or touch function code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from funcmesh.errors import FuncmeshError
from funcmesh.runtime.build_output import BuildOutput, Progress
from funcmesh.runtime.catalog import Runtime

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_BYTES = 4 << 20
DEFAULT_BUILD_TIMEOUT_S = 900.0
MARKER = ".complete"
SITE_PACKAGES = "site-packages"
NODE_MODULES = "node_modules"
NPM_DEPENDENCY_FIELDS = ("dependencies", "optionalDependencies", "peerDependencies")
_KEY_FORMAT = b"funcmesh-deps-v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class DepsEnv:
    """A finished dependency environment; ``path`` exists only when ``sys_paths`` is not empty."""

    key: str
    path: Path
    sys_paths: tuple[str, ...]


class BuildFailed(FuncmeshError):
    """A dependency build failed; the message says what failed, with the tail of the
    installer's output."""

    def __init__(self, message: str, *, output_tail: str = "") -> None:
        if output_tail:
            message = f"{message}; the last lines of its output:\n{output_tail}"
        super().__init__(message)
        self.output_tail = output_tail


def normalise_deps(deps: str) -> str:
    """The deps text with line endings, blank lines, comments and edge spaces removed."""
    lines = (line.strip() for line in deps.splitlines())
    return "\n".join(line for line in lines if line and not line.startswith("#"))


def normalise_package_json(deps: str) -> str:
    """A package.json as canonical JSON, so key order and spacing do not matter; the text as
    given when it is not JSON (its build then says why)."""
    try:
        return json.dumps(json.loads(deps), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return deps.strip()


def check_package_json(deps: str) -> None:
    """Raise BuildFailed saying what is wrong with a package.json that npm could not use."""
    try:
        package = json.loads(deps)
    except ValueError as exc:
        raise BuildFailed(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(package, dict):
        raise BuildFailed(
            'package.json must be a JSON object, like {"dependencies": {"lodash": "^4.17.21"}}'
        )
    for name in NPM_DEPENDENCY_FIELDS:
        value = package.get(name)
        if value is not None and not (
            isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
        ):
            raise BuildFailed(
                f'package.json: "{name}" must map package names to version strings, '
                'like {"lodash": "^4.17.21"}'
            )


def _normalise(runtime: Runtime, deps: str) -> str:
    if runtime.language == "nodejs":
        return normalise_package_json(deps)
    return normalise_deps(deps)


def _installs_nothing(runtime: Runtime, deps: str) -> bool:
    if runtime.language != "nodejs":
        return not normalise_deps(deps)
    if not deps.strip():
        return True
    try:
        package = json.loads(deps)
    except ValueError:
        return False  # the build reports it
    return isinstance(package, dict) and not any(package.get(f) for f in NPM_DEPENDENCY_FIELDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Build:
    """One build in flight: the task every caller awaits, and who wants to hear its output."""

    task: asyncio.Task[DepsEnv]
    listeners: list[Progress]


class DependencyBuilder:
    """Builds and caches dependency environments under ``root``."""

    def __init__(
        self,
        *,
        root: Path,
        pip_args: Sequence[str] = (),
        npm_args: Sequence[str] = (),
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        build_timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._root = root
        self._pip_args = tuple(pip_args)
        self._npm_args = tuple(npm_args)
        self._max_output_bytes = max_output_bytes
        self._build_timeout_s = build_timeout_s
        self._environ = environ
        self._builds: dict[str, _Build] = {}

    def key_for(self, runtime: Runtime, deps: str) -> str:
        """sha256 hex of the runtime (id, binary, version) and the normalised deps."""
        digest = hashlib.sha256(_KEY_FORMAT)
        version = ".".join(map(str, runtime.version))
        for value in (runtime.id, str(runtime.executable), version, _normalise(runtime, deps)):
            data = value.encode()
            digest.update(len(data).to_bytes(8, "big"))
            digest.update(data)
        return digest.hexdigest()

    def log_path(self, key: str) -> Path:
        """Where the output of the latest build of ``key`` is kept."""
        return self._root / f"{key}.log"

    def cached(self, runtime: Runtime, deps: str) -> DepsEnv | None:
        """The finished environment for these deps, if there is one (costs one stat)."""
        key = self.key_for(runtime, deps)
        if _installs_nothing(runtime, deps):
            return DepsEnv(key=key, path=self._root / key, sys_paths=())
        return self._env(key, runtime) if (self._root / key / MARKER).is_file() else None

    async def ensure(
        self, runtime: Runtime, deps: str, *, progress: Progress | None = None
    ) -> DepsEnv:
        """The environment for these deps, built now if needed (BuildFailed if that fails)."""
        env = self.cached(runtime, deps)
        if env is not None:
            return env
        key = self.key_for(runtime, deps)
        build = self._builds.get(key) or self._start(key, runtime, _normalise(runtime, deps))
        if progress is not None:
            build.listeners.append(progress)
        try:
            # shield: a caller that gives up does not cancel the build the others wait for.
            return await asyncio.shield(build.task)
        finally:
            if progress is not None:
                with contextlib.suppress(ValueError):  # a failing listener is dropped already
                    build.listeners.remove(progress)

    async def aclose(self) -> None:
        """Cancel every build in flight, killing pip, and wait until they are cleaned up."""
        tasks = [build.task for build in self._builds.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, key: str, runtime: Runtime, deps: str) -> _Build:
        listeners: list[Progress] = []
        task = asyncio.create_task(
            self._build(key, runtime, deps, listeners), name=f"deps-{key[:12]}"
        )
        build = _Build(task=task, listeners=listeners)
        self._builds[key] = build
        task.add_done_callback(lambda _: self._builds.pop(key, None))
        return build

    def _env(self, key: str, runtime: Runtime) -> DepsEnv:
        path = self._root / key
        return DepsEnv(key=key, path=path, sys_paths=(str(path / _installed_dir(runtime)),))

    async def _build(
        self, key: str, runtime: Runtime, deps: str, listeners: list[Progress]
    ) -> DepsEnv:
        if runtime.language == "nodejs":
            check_package_json(deps)
        started_s = time.monotonic()
        logger.info("building dependencies %s for %s", key[:12], runtime.id)
        staging = await asyncio.to_thread(self._stage, key, deps, runtime.deps_file)
        log = self.log_path(key).open("wb")  # one quick open(2), like the stat in cached()
        output = BuildOutput(log=log, listeners=listeners, max_bytes=self._max_output_bytes)
        try:
            await self._install(runtime, staging, output)
            await asyncio.to_thread(_commit, staging, self._root / key, runtime=runtime, deps=deps)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            raise
        finally:
            log.close()  # flushed after every write: closing does not wait on the disk
        logger.info("built dependencies %s in %.1f s", key[:12], time.monotonic() - started_s)
        return self._env(key, runtime)

    def _stage(self, key: str, deps: str, deps_file: str) -> Path:
        """A fresh staging dir holding the deps file.

        Debris of crashed builds of this key goes first: no other build of it is in flight.
        """
        self._root.mkdir(parents=True, exist_ok=True)
        for debris in [*self._root.glob(f".tmp-{key}-*"), self._root / key]:
            if debris.exists():
                logger.info("removing %s, left by an interrupted build", debris)
                shutil.rmtree(debris, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self._root))
        (staging / "tmp").mkdir()
        (staging / deps_file).write_text(deps + "\n", encoding="utf-8")
        return staging

    async def _install(self, runtime: Runtime, staging: Path, output: BuildOutput) -> None:
        env = {**(os.environ if self._environ is None else self._environ)}
        env["TMPDIR"] = str(staging / "tmp")  # the installer's debris stays ours
        if runtime.language == "nodejs":
            argv = _npm_argv(runtime, staging, self._npm_args, env)
            what = f"npm install for {runtime.id}"
        else:
            argv = _pip_argv(runtime, staging, self._pip_args)
            env["PIP_NO_INPUT"] = "1"
            what = f"pip install for {runtime.id}"
        returncode = await self._run_installer(
            argv, env, cwd=staging, runtime=runtime, what=what, output=output
        )
        if returncode == 0:
            return
        if runtime.language == "nodejs":
            raise BuildFailed(f"{what} failed (exit code {returncode})", output_tail=output.tail())
        raise _pip_failure(runtime, returncode, output.tail())

    async def _run_installer(
        self,
        argv: list[str],
        env: Mapping[str, str],
        *,
        cwd: Path,
        runtime: Runtime,
        what: str,
        output: BuildOutput,
    ) -> int:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,  # its own process group, killed as one
            )
        except OSError as exc:
            message = f"could not start {argv[0]} for {runtime.id}: {exc.strerror or exc}"
            raise BuildFailed(message) from exc
        try:
            async with asyncio.timeout(self._build_timeout_s):
                await output.pump(process)
                return await process.wait()
        except TimeoutError as exc:
            await _kill_group(process)
            message = f"{what} did not finish within {self._build_timeout_s:g} s"
            raise BuildFailed(message, output_tail=output.tail()) from exc
        except BaseException:
            await _kill_group(process)
            raise


def _pip_argv(runtime: Runtime, staging: Path, pip_args: Sequence[str]) -> list[str]:
    # -I: PYTHONPATH and the user's site-packages must not leak into the build.
    return [
        str(runtime.executable), "-I", "-m", "pip", "install",
        "--target", str(staging / SITE_PACKAGES), "--no-input",
        "--disable-pip-version-check", "--progress-bar", "off",
        *pip_args, "-r", str(staging / runtime.deps_file),
    ]  # fmt: skip


def _npm_argv(
    runtime: Runtime, staging: Path, npm_args: Sequence[str], env: dict[str, str]
) -> list[str]:
    """npm for the runtime's node (the one beside it, else the first on PATH); ``env`` gets
    that node first on PATH, for npm's ``#!/usr/bin/env node``, and npm's nagging switched off."""
    node_dir = str(runtime.executable.parent)
    path = os.pathsep.join(filter(None, [node_dir, env.get("PATH", os.defpath)]))
    beside = runtime.executable.parent / "npm"
    npm = str(beside) if os.access(beside, os.X_OK) else shutil.which("npm", path=path)
    if npm is None:
        raise BuildFailed(
            f"npm was not found beside {runtime.executable} or on PATH: install npm to use "
            "package.json dependencies"
        )
    env |= {
        "PATH": path,
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    # --install-links: local (file:) packages are copied in, so the build stands on its own.
    return [
        npm, "install", "--omit=dev", "--no-audit", "--no-fund", "--install-links",
        "--prefix", str(staging), *npm_args,
    ]  # fmt: skip


def _pip_failure(runtime: Runtime, returncode: int, tail: str) -> BuildFailed:
    what = f"pip install for {runtime.id} failed"
    if "No module named pip" in tail:
        program = runtime.executable
        hint = f"{program} has no pip; install it with `{program} -m ensurepip`"
        return BuildFailed(f"{what}: {hint}", output_tail=tail)
    return BuildFailed(f"{what} (exit code {returncode})", output_tail=tail)


def _commit(staging: Path, final: Path, *, runtime: Runtime, deps: str) -> None:
    """Move the finished build into place; the marker inside makes it count."""
    shutil.rmtree(staging / "tmp", ignore_errors=True)
    (staging / _installed_dir(runtime)).mkdir(exist_ok=True)  # deps that install nothing
    record = {"runtime": runtime.id, "executable": str(runtime.executable), "deps": deps}
    (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    staging.chmod(0o755)  # mkdtemp made it private; workers running as nobody must read it
    staging.rename(final)


async def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def _installed_dir(runtime: Runtime) -> str:
    return NODE_MODULES if runtime.language == "nodejs" else SITE_PACKAGES
