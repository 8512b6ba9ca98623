"""Which runtimes this machine can run, and which one a Function's ``runtime`` id gets.

Discovery runs once at start-up (blocking, off the event loop): the daemon's own Python, every
``python3.8`` ... ``python3.14`` on ``PATH`` (pyenv shims resolved to the real binary, since a shim
costs about 50 ms per process start) and ``node``. Resolution maps Kubeless ids such as
``python3.7`` or ``nodejs8`` to the nearest runtime that exists here, with a warning.
This module must not start workers or build dependencies; it only finds interpreters.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from funcmesh.errors import Cause, Invalid

logger = logging.getLogger(__name__)

Language = Literal["python", "nodejs"]

PYTHON_MINORS = range(8, 15)  # python3.8 ... python3.14
PROBE_TIMEOUT_S = 10.0
_LANGUAGE_ORDER: dict[str, int] = {"python": 0, "nodejs": 1}
# Kubeless (pkg/langruntime): language ``^[a-zA-Z_-]+``, version ``[0-9.]+$``.
_RUNTIME_ID = re.compile(r"(?P<language>[a-zA-Z_-]+)(?P<version>[0-9.]+)")
_PYTHON_PROBE = "import sys; print(sys.version_info[:2])"
_PYTHON_PROBE_OUTPUT = re.compile(r"\((\d+), (\d+)\)")
_NODE_VERSION_OUTPUT = re.compile(r"v(\d+)\.\d+\.\d+")


@dataclass(frozen=True, slots=True, kw_only=True)
class Runtime:
    """One language runtime on this machine, e.g. ``python3.11`` at its real binary."""

    id: str
    language: Language
    version: tuple[int, ...]
    executable: Path
    deps_file: str
    suffix: str

    @classmethod
    def python(cls, *, version: tuple[int, int], executable: Path) -> Runtime:
        return cls(
            id=f"python{version[0]}.{version[1]}",
            language="python",
            version=version,
            executable=executable,
            deps_file="requirements.txt",
            suffix=".py",
        )

    @classmethod
    def nodejs(cls, *, major: int, executable: Path) -> Runtime:
        return cls(
            id=f"nodejs{major}",
            language="nodejs",
            version=(major,),
            executable=executable,
            deps_file="package.json",
            suffix=".js",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """The runtime a Function gets, and why it is not the one it asked for (if so)."""

    runtime: Runtime
    warning: str | None = None


class RuntimeCatalog:
    """The runtimes found on this machine, sorted: Python first, then Node, oldest first."""

    def __init__(self, runtimes: Iterable[Runtime]) -> None:
        by_id: dict[str, Runtime] = {}
        for runtime in runtimes:
            by_id.setdefault(runtime.id, runtime)
        self._by_id = by_id
        self._runtimes = tuple(sorted(by_id.values(), key=_sort_key))

    @classmethod
    def from_runtimes(cls, runtimes: Iterable[Runtime]) -> RuntimeCatalog:
        """A catalog of the given runtimes; the first one wins when two share an id."""
        return cls(runtimes)

    @classmethod
    def discover(cls, *, path_env: str) -> RuntimeCatalog:
        """Find the interpreters on this machine (blocking: runs each one once)."""
        own = _own_python()
        runtimes = [own, *_pythons_on_path(path_env, skip_ids={own.id})]
        node = _node_on_path(path_env)
        if node is not None:
            runtimes.append(node)
        catalog = cls(runtimes)
        logger.info("runtimes found: %s", ", ".join(catalog.ids) or "none")
        return catalog

    @property
    def runtimes(self) -> tuple[Runtime, ...]:
        return self._runtimes

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(runtime.id for runtime in self._runtimes)

    def resolve(self, runtime_id: str) -> Resolution:
        """The runtime for a Function's ``spec.runtime``, or Invalid saying what is supported."""
        exact = self._by_id.get(runtime_id)
        if exact is not None:
            return Resolution(runtime=exact)
        match = _RUNTIME_ID.fullmatch(runtime_id)
        version = _parse_version(match["version"]) if match else None
        if match is None or version is None:
            raise self._unsupported(runtime_id)
        language = match["language"]
        if language == "python" and version[0] == 2:
            raise _invalid(
                f"{runtime_id} is not supported: Python 2 reached end of life; use python3.x"
                f" (supported runtimes are: {self._supported_text()})"
            )
        candidates = [r for r in self._runtimes if r.language == language]
        if not candidates or (language == "python" and version[0] != 3):
            raise self._unsupported(runtime_id)
        chosen = _nearest(candidates, version)
        return Resolution(
            runtime=chosen,
            warning=f"runtime {runtime_id} is not available here; using {chosen.id}",
        )

    def _unsupported(self, runtime_id: str) -> Invalid:
        return _invalid(
            f"Invalid runtime: {runtime_id}. Supported runtimes are: {self._supported_text()}"
        )

    def _supported_text(self) -> str:
        return ", ".join(self.ids) or "none (no Python 3.8+ or Node.js found on this machine)"


def _invalid(message: str) -> Invalid:
    return Invalid(message, [Cause(field="spec.runtime", message=message)])


def _sort_key(runtime: Runtime) -> tuple[int, tuple[int, ...]]:
    return (_LANGUAGE_ORDER.get(runtime.language, len(_LANGUAGE_ORDER)), runtime.version)


def _parse_version(text: str) -> tuple[int, ...] | None:
    parts = text.split(".")
    if not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def _nearest(candidates: list[Runtime], wanted: tuple[int, ...]) -> Runtime:
    """Same version (on the parts both name: newest wins), else closest newer, else closest older.

    ``candidates`` is sorted oldest first and not empty.
    """

    def prefix(runtime: Runtime) -> tuple[int, ...]:
        return runtime.version[: len(wanted)]

    def wanted_prefix(runtime: Runtime) -> tuple[int, ...]:
        return wanted[: len(runtime.version)]

    same = [r for r in candidates if prefix(r) == wanted_prefix(r)]
    if same:
        return same[-1]
    newer = [r for r in candidates if prefix(r) > wanted_prefix(r)]
    return newer[0] if newer else candidates[-1]


def _own_python() -> Runtime:
    """The interpreter running the daemon, as its real binary (never a venv link or a shim)."""
    executable = Path(sys.executable)
    for candidate in (getattr(sys, "_base_executable", ""), sys.executable):
        real = Path(os.path.realpath(candidate)) if candidate else None
        if real is not None and _is_executable(real) and not _is_shim(real):
            executable = real
            break
    major, minor = sys.version_info[:2]
    return Runtime.python(version=(major, minor), executable=executable)


def _pythons_on_path(path_env: str, *, skip_ids: set[str]) -> Iterator[Runtime]:
    for minor in PYTHON_MINORS:
        name = f"python3.{minor}"
        if name in skip_ids:
            continue
        executable = _find_on_path(name, path_env)
        if executable is None:
            continue
        version = _probe_python_version(executable)
        if version is not None and version >= (3, 8):
            yield Runtime.python(version=version, executable=executable)


def _node_on_path(path_env: str) -> Runtime | None:
    executable = _find_on_path("node", path_env)
    if executable is None:
        return None
    output = _run_probe([str(executable), "--version"])
    match = _NODE_VERSION_OUTPUT.fullmatch(output or "")
    if match is None:
        logger.warning("ignoring %s: `--version` printed %r", executable, output)
        return None
    return Runtime.nodejs(major=int(match[1]), executable=executable)


def _find_on_path(name: str, path_env: str) -> Path | None:
    """The first real binary called ``name`` on ``path_env``; shims are resolved or skipped."""
    for directory in filter(None, path_env.split(os.pathsep)):
        candidate = Path(directory) / name
        if not _is_executable(candidate):
            continue
        if not _is_shim(candidate):
            return Path(os.path.realpath(candidate))
        real = _resolve_shim(candidate)
        if real is not None:
            return real
    return None


def _resolve_shim(shim: Path) -> Path | None:
    """The newest binary a pyenv (``versions/*/bin``) or asdf shim could run, if any."""
    root = shim.parent.parent
    patterns = (f"versions/*/bin/{shim.name}", f"installs/python/*/bin/{shim.name}")
    found = [path for pattern in patterns for path in root.glob(pattern) if _is_executable(path)]
    found.sort(key=lambda path: _natural_key(path.parent.parent.name))
    for path in reversed(found):
        real = Path(os.path.realpath(path))
        if not _is_shim(real):
            return real
    return None


def _natural_key(name: str) -> tuple[int, ...]:
    return tuple(int(number) for number in re.findall(r"\d+", name))


def _probe_python_version(executable: Path) -> tuple[int, int] | None:
    # -I -S: skip site and the environment, which only slow the probe down.
    output = _run_probe([str(executable), "-I", "-S", "-c", _PYTHON_PROBE])
    match = _PYTHON_PROBE_OUTPUT.fullmatch(output or "")
    if match is None:
        logger.warning("ignoring %s: version probe printed %r", executable, output)
        return None
    return int(match[1]), int(match[2])


def _run_probe(argv: list[str]) -> str | None:
    try:
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("could not run %s: %s", argv[0], exc)
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _is_shim(path: Path) -> bool:
    return path.parent.name == "shims"
